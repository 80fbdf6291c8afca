"""Export (twin, ONNX, parity, bundle), registry, promotion gate, promote/rollback and the
offline evaluation of the served model: real MLflow SQLite registry, real onnxruntime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch

from mtlrec.features.transform import ModelInputs
from mtlrec.models.config import model_config
from mtlrec.models.export import PerFieldEmbeddings, export_twin
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline.cli import main
from mtlrec.serving import bundle

GOOD = ["synth.rows_per_day=5000", "synth.days=4", "synth.ctr=0.3", "synth.cvr=0.3",
        "model.n_experts=2", "model.expert_hidden=[16]", "model.tower_hidden=[8]",
        "trainer.max_epochs=2", "trainer.batch_size=512", "trainer.lr=0.01"]
NAME = "synth-ranker"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The main job: synthetic logs → ingest → train → evaluate → export → champion v1."""
    work = tmp_path_factory.mktemp("work")
    assert main(["run", f"paths.work_dir={work}", *GOOD]) == 0
    return work


def _client(work: Path) -> mlflow.MlflowClient:
    uri = f"sqlite:///{work / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _aliases(work: Path) -> dict[str, str]:
    return {k: str(v) for k, v in _client(work).get_registered_model(NAME).aliases.items()}


def _run_dir(work: Path, seed: int = 2026) -> Path:
    return work / "runs" / "synth" / f"mmoe-ew-seed{seed}"


@pytest.mark.parametrize("impl", ["fused", "torchrec"])
def test_export_twin_has_per_field_tables_and_the_same_scores(impl):
    torch.manual_seed(0)
    sizes = {"a": 7, "b": 30, "c": 3}
    ranker = MultiTaskRanker(model_config(arch="ple", embedding_impl=impl, esmm=True), sizes, 4, 2).eval()
    twin = export_twin(ranker)
    tables = twin.ranker.embeddings.tables
    assert [t.num_embeddings for t in tables] == [7, 30, 3]
    assert all(isinstance(t, torch.nn.Embedding) for t in tables)
    ids = torch.stack([torch.randint(0, n, (64,)) for n in sizes.values()], dim=1)
    dense = torch.randn(64, 4)
    with torch.no_grad():
        assert torch.allclose(twin(ids, dense), torch.sigmoid(ranker(ids, dense)), atol=1e-7)
    assert not isinstance(ranker.embeddings, PerFieldEmbeddings)  # the original is untouched


@pytest.mark.slow
def test_bundle_is_self_contained_checked_and_pickle_free(work):
    folder = _run_dir(work) / "bundle"
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert names == {"model.onnx", "signature.json", "metrics.json", "parity.json", "parity.parquet",
                     "bundle.json", "features/feature_spec.json", "features/vocab.parquet",
                     "features/numeric_stats.json", "features/label_stats.json", "features/artifacts.json",
                     "reference_stats.json"}
    for p in folder.rglob("*"):  # no pickle (protocol 2+ starts with 0x80) and no torch zip
        if p.is_file():
            head = p.read_bytes()[:2]
            assert head[:1] != b"\x80" and head != b"PK", p
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["rows"] >= 10_000 and parity["max_abs_diff"] <= 1e-5
    assert parity["validation_rows"] == 5000 and set(parity["per_task"]) == {"ctr", "ctcvr"}
    graph = onnx.load(str(folder / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "Gather" in ops and "Loop" not in ops
    # the synthetic logs' multi-valued `tags` (max_len 20) take 20 id slots and a length
    assert [i.name for i in graph.input] == ["ids", "lengths", "dense"]
    assert [o.name for o in graph.output] == ["scores"]
    model = bundle.load(folder)
    assert model.tasks == ["ctr", "ctcvr"] and model.manifest["model_name"] == NAME
    # the training split's statistics travel with the model (drift and skew's reference)
    train_rows = json.loads((work / "features" / "synth" / "manifest.json").read_text())["split_rows"]["train"]
    assert model.reference is not None and model.reference.rows == train_rows
    assert set(model.reference.fields) >= {"categorical_1", "numerical_1", "tags", "ctr", "ctcvr"}
    for batch in (1, 777):  # dynamic batch axis
        inputs = ModelInputs(np.ones((batch, 16 + 20), np.int64), np.zeros((batch, 63), np.float32),
                             np.full((batch, 1), 3, np.int64))
        out = model.predict(inputs)
        assert out.shape == (batch, 2) and ((out > 0) & (out < 1)).all()
    assert model.metrics["test"]["tasks"]["ctr"]["auc"] > 0.55


def _retamper(folder: Path, name: str, data: bytes) -> None:
    """Replace a file and fix its checksum, as a mis-export (not a corruption) would look."""
    (folder / name).write_bytes(data)
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["files"][name] = bundle._sha256(data)
    (folder / "bundle.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_a_bundle_that_fails_its_checks_is_refused(work, tmp_path):
    good = _run_dir(work) / "bundle"
    corrupt = shutil.copytree(good, tmp_path / "corrupt")
    (corrupt / "parity.parquet").write_bytes(b"nonsense")
    with pytest.raises(bundle.BundleError, match="parity.parquet does not match its checksum"):
        bundle.load(corrupt)

    wrong_weights = shutil.copytree(good, tmp_path / "weights")
    model = onnx.load(str(good / "model.onnx"))
    table = next(t for t in model.graph.initializer if t.name.endswith("tables.0.weight"))
    values = onnx.numpy_helper.to_array(table) + 0.5
    table.CopyFrom(onnx.numpy_helper.from_array(values, table.name))
    _retamper(wrong_weights, "model.onnx", model.SerializeToString())
    with pytest.raises(bundle.BundleError, match="parity re-check failed"):
        bundle.load(wrong_weights)

    wrong_signature = shutil.copytree(good, tmp_path / "signature")
    sig = json.loads((good / "signature.json").read_text())
    sig["outputs"]["scores"]["tasks"] = ["ctcvr", "ctr"]
    _retamper(wrong_signature, "signature.json", json.dumps(sig).encode())
    with pytest.raises(bundle.BundleError, match="signature.json does not match"):
        bundle.load(wrong_signature)


@pytest.mark.slow
def test_gate_promote_rollback_and_served_evaluation(work, capsys):
    assert _aliases(work) == {"champion": "1"}
    gate_v1 = json.loads((_run_dir(work) / "gate" / "gate.json").read_text())
    assert gate_v1["action"] == "champion" and gate_v1["champion_before"] is None

    # a model that barely trained fails the gate: challenger, with the failed tasks named
    bad = [f"paths.work_dir={work}", *GOOD, "seed=7", "trainer.max_epochs=1", "trainer.lr=1e-6"]
    assert main(["train", *bad]) == 0 and main(["evaluate", *bad]) == 0
    # a failing parity check fails the export: float32 onnxruntime and torch differ by ~1e-8,
    # so a 1e-12 tolerance cannot be met; no bundle, nothing registered
    assert main(["export", *bad, "export.parity_tolerance=1e-12"]) == 2
    assert "export parity check failed" in capsys.readouterr().err
    assert not (_run_dir(work, 7) / "bundle").exists() and _aliases(work) == {"champion": "1"}
    assert main(["export", *bad]) == 0
    out = capsys.readouterr().out
    assert "version 2 -> challenger" in out and "gate failed: ctr: AUC" in out
    assert _aliases(work) == {"champion": "1", "challenger": "2"}
    gate = json.loads((_run_dir(work, 7) / "gate" / "gate.json").read_text())
    assert not gate["gate"]["passed"] and gate["holdout"]["rows"] == 5000
    assert gate["holdout"]["files"][0].endswith("day=2026-11-04.csv")
    for task in ("ctr", "ctcvr"):
        row = gate["gate"]["tasks"][task]
        assert not row["auc_ok"] and row["auc_diff"] < -0.002
    md = (_run_dir(work, 7) / "gate" / "gate.md").read_text()
    assert "**failed**" in md and "- ctr: AUC" in md and "short by" in md

    # a comparable model within a wide tolerance passes: champion moves, the old one is previous
    ok = [f"paths.work_dir={work}", *GOOD, "seed=8", "gate.auc_tolerance=0.5",
          "gate.logloss_tolerance=1.0"]
    assert main(["train", *ok]) == 0 and main(["export", *ok]) == 0
    assert _aliases(work) == {"champion": "3", "previous": "1", "challenger": "2"}
    # exporting the same run again registers nothing new (one version per training run)
    assert main(["export", *ok]) == 0
    assert len(_client(work).search_model_versions(f"name = '{NAME}'")) == 3

    args = [f"paths.work_dir={work}", *GOOD]
    assert main(["promote", *args]) == 0  # by hand: the challenger
    assert _aliases(work) == {"champion": "2", "previous": "3"}
    assert main(["rollback", *args]) == 0
    assert _aliases(work) == {"champion": "3", "previous": "1"}
    assert main(["rollback", *args]) == 0
    assert _aliases(work) == {"champion": "1"}
    assert main(["rollback", *args]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err

    # the served model's AUC on new raw logs: through its bundle, same numbers as its gate
    day = work / "landing" / "synth" / "day=2026-11-04.csv"
    assert main(["evaluate", *args, f"model=models:/{NAME}@champion", f"logs={day}"]) == 0
    out = capsys.readouterr().out
    assert "(version 1) on 5,000 rows" in out
    served = json.loads((work / "evaluations" / f"{NAME}_champion-v1.json").read_text())
    for task in ("ctr", "ctcvr"):
        assert served["tasks"][task]["auc"] == pytest.approx(gate["gate"]["tasks"][task]["champion_auc"],
                                                            abs=1e-12)
    assert main(["evaluate", *args, f"model=models:/{NAME}@nope", f"logs={day}"]) == 2
    assert "Registered model alias nope not found" in capsys.readouterr().err


@pytest.mark.slow
def test_served_metrics_stream_the_rows_in_chunks(work, tmp_path):
    """Scores and labels of every chunk line up: any chunk size gives the metrics of one
    chunk holding every row; a bad row is quarantined, not scored."""
    from mtlrec.features import raw
    from mtlrec.pipeline import config as config_mod
    from mtlrec.pipeline.evaluate import served_metrics

    day = work / "landing" / "synth" / "day=2026-11-04.csv"
    logs = tmp_path / "day=2026-11-04.csv"
    lines = day.read_text().splitlines()
    cells = lines[1].split(",")
    cells[0], cells[20] = "bad-row", "not-a-number"  # a new search_id, numerical_4 unparseable
    logs.write_text("\n".join([*lines, ",".join(cells)]) + "\n")
    spec = config_mod.load([f"paths.work_dir={work}", *GOOD]).data
    rows = raw.read(spec, str(logs), tmp_path / "good.parquet")
    assert (rows.rows_good, rows.quarantine.height) == (5000, 1)
    assert "numerical_4: unparseable number" in rows.quarantine["reason"][0]
    model = bundle.load(_run_dir(work) / "bundle")
    whole = served_metrics(model, rows, chunk_rows=10**6)
    for chunk in (333, 4096):
        chunked = served_metrics(model, rows, chunk_rows=chunk)
        assert chunked["rows"] == 5000 and chunked["oov_values"] == whole["oov_values"]
        for task, m in whole["tasks"].items():
            assert chunked["tasks"][task] == pytest.approx(m, rel=1e-12)

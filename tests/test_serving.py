"""The HTTP server (real uvicorn on loopback, real registry), hot reload under load, refusal
of a broken bundle, batch scoring, and serving without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import polars as pl
import pytest

from helpers import Server
from mtlrec.pipeline import config
from mtlrec.pipeline.cli import main
from mtlrec.serving import bundle
from mtlrec.serving import rows as rows_mod

SMALL = ["synth.rows_per_day=2000", "synth.days=4", "synth.ctr=0.3", "synth.cvr=0.3",
         "model.n_experts=2", "model.expert_hidden=[16]", "model.tower_hidden=[8]",
         "trainer.max_epochs=1", "trainer.batch_size=512", "trainer.lr=0.01"]
NAME = "synth-ranker"
CATS = [f"categorical_{i}" for i in range(1, 17)]
NUMS = [f"numerical_{i}" for i in range(1, 64)]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Champion v1 from the main job, and v2, registered as challenger (a gate that demands
    an impossible AUC gain), for the reload test to promote."""
    work = tmp_path_factory.mktemp("serve")
    assert main(["run", f"paths.work_dir={work}", *SMALL]) == 0
    v2 = [f"paths.work_dir={work}", *SMALL, "seed=9", "gate.auc_tolerance=-1"]
    assert main(["train", *v2]) == 0 and main(["export", *v2]) == 0
    return work


def _rows(work: Path, n: int) -> list[dict]:
    """Raw rows as a client sends them: categorical ids as strings, numbers as numbers, the
    multi-valued tags as a JSON list in even rows and `|`-joined in odd ones."""
    frame = pl.read_csv(work / "landing" / "synth" / "day=2026-11-04.csv", n_rows=n,
                        schema_overrides={c: pl.String for c in CATS})
    rows = frame.select("search_id", *CATS, *NUMS, "tags").to_dicts()
    for row in rows[::2]:
        row["tags"] = row["tags"].split("|") if row["tags"] else []
    return rows


def _frame(rows: list[dict]) -> pl.DataFrame:
    """The same rows as a table, as batch scoring reads them (tags a list in every row)."""
    def tags(value: str | list | None) -> list | None:
        return (value.split("|") if value else None) if isinstance(value, str) else value

    return pl.DataFrame([{**r, "tags": tags(r["tags"])} for r in rows])


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_serving_never_imports_torch_or_training():
    code = ("import sys, mtlrec.serving.app, mtlrec.serving.score, mtlrec.serving.source, "
            "mtlrec.serving.bundle, mtlrec.serving.rows; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'torch' or m.startswith('mtlrec.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # the `mtlrec serve` process is checked in the next test


@pytest.mark.slow
def test_predict_health_metrics_and_bad_requests(work):
    server = Server(["serve", f"paths.work_dir={work}", "serve.max_rows=50", "serve.max_body_mb=0.2",
                     "serve.poll_seconds=0"])
    try:
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "onnxruntime" in maps  # the `mtlrec serve` process
        c = httpx.Client(base_url=server.url, timeout=30)
        assert c.get("/health").json()["model_version"] == "1"
        assert c.get("/ready").json() == {"ready": True, "model_version": "1"}
        rows = _rows(work, 40)
        r = c.post("/predict", json={"rows": rows})
        assert r.status_code == 200
        body = r.json()
        assert body["model_version"] == "1" and body["tasks"] == ["ctr", "ctcvr"]
        assert len(body["scores"]) == 40 and all(0 < s["ctr"] < 1 and 0 < s["ctcvr"] < 1
                                                 for s in body["scores"])
        # the same rows through the bundle offline (Parquet path of batch scoring): same scores
        model = bundle.load(work / "runs" / "synth" / "mmoe-ew-seed2026" / "bundle")
        offline, _ = model.score(rows_mod.from_frame(_frame(rows), model.transform, 0))
        assert [s["ctr"] for s in body["scores"]] == pytest.approx(offline[:, 0].tolist(), abs=1e-7)

        unseen = [dict(row, categorical_2="never-seen-value", categorical_3=None) for row in rows[:7]]
        assert c.post("/predict", json={"rows": unseen}).status_code == 200
        metrics = c.get("/metrics").text
        assert _metric(metrics, 'mtlrec_oov_values_total{field="categorical_2"}') >= 7
        assert _metric(metrics, 'mtlrec_requests_total{endpoint="predict",status="200"}') == 2
        assert _metric(metrics, 'mtlrec_request_seconds_count{endpoint="predict"}') == 2
        assert _metric(metrics, "mtlrec_model_version ") == 1
        assert _metric(metrics, "mtlrec_rows_scored_total") == 47

        missing = [dict(row) for row in rows[:3]]
        del missing[2]["numerical_7"]
        wrong = [dict(row) for row in rows[:3]]
        wrong[1]["categorical_4"] = 2.5
        boolean = [dict(row) for row in rows[:3]]
        boolean[0]["numerical_1"] = True
        cases = [
            (missing, 422, "row 2, field 'numerical_7': missing field"),
            (wrong, 422, "row 1, field 'categorical_4': expected a string or an integer or null, "
                         "got a fractional number"),
            (boolean, 422, "row 0, field 'numerical_1': expected a number or null, got a boolean"),
            (_rows(work, 51), 413, "51 rows in one request; the limit is 50 (serve.max_rows)"),
            ([rows[0]] * 50 + [{"x": "y" * 300_000}], 413, "the limit is 209,715 (serve.max_body_mb)"),
        ]
        for payload, status, message in cases:
            r = c.post("/predict", json={"rows": payload})
            assert (r.status_code, message in r.json()["error"]) == (status, True), r.text
        r = c.post("/predict", content=b'{"rows": [1e999]')
        assert r.status_code == 400 and "invalid JSON" in r.json()["error"]
        r = c.post("/predict", content=json.dumps({"rows": [dict(rows[0], numerical_2=1e999)]})
                   .replace("Infinity", "1e999"))
        assert r.status_code == 422 and "field 'numerical_2': non-finite number inf" in r.json()["error"]
        assert c.post("/predict", json=[rows[0]]).status_code == 400
        assert _metric(c.get("/metrics").text, 'mtlrec_requests_total{endpoint="predict",status="422"}') == 4
    finally:
        server.stop()


def _v2_inputs(rows: list[dict], binary: bool) -> list:
    """The rows as a v2 client sends them: one BYTES tensor per categorical field (the tags
    joined by their separator), one FP32 tensor per numeric field."""
    import tritonclient.http as triton

    tags = ["|".join(r["tags"]) if isinstance(r["tags"], list) else r["tags"] or "" for r in rows]
    columns = [(c, np.array([r[c] for r in rows], dtype=object), "BYTES") for c in CATS]
    columns += [("tags", np.array(tags, dtype=object), "BYTES")]
    columns += [(n, np.array([r[n] for r in rows], dtype=np.float32), "FP32") for n in NUMS]
    out = []
    for name, values, datatype in columns:
        tensor = triton.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(values, binary_data=binary)
        out.append(tensor)
    return out


@pytest.mark.slow
def test_both_protocols_score_as_the_trained_pytorch_model_does_with_a_real_v2_client(work):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    from mtlrec.features.folder import FeaturesFolder
    from mtlrec.features.transform import FeatureTransform
    from mtlrec.pipeline.export import load_ranker
    from mtlrec.pipeline.run_folder import RunFolder
    from mtlrec.serving.export import reference_scores

    server = Server(["serve", f"paths.work_dir={work}", "serve.poll_seconds=0"])
    try:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        assert not client.is_model_ready("another-model") and not client.is_model_ready(NAME, "2")
        meta = client.get_model_metadata(NAME)
        assert [i["name"] for i in meta["inputs"]] == [*CATS, "tags", *NUMS] and meta["versions"] == ["1"]
        assert [o["name"] for o in meta["outputs"]] == ["ctr", "ctcvr"]
        rows = _rows(work, 40)
        want = httpx.post(server.url + "/predict", json={"rows": rows}, timeout=30).json()["scores"]
        predict = np.array([[s["ctr"], s["ctcvr"]] for s in want])
        # train/serve parity: the trained PyTorch model on the same raw rows
        run = RunFolder(work / "runs" / "synth" / "mmoe-ew-seed2026")
        features = FeaturesFolder(Path(run.trained().features))
        transform = FeatureTransform.load(features.artifacts_dir)
        torch_scores = reference_scores(load_ranker(run, features), transform,
                                        transform.to_numpy(rows_mod.from_frame(_frame(rows), transform, 0)))
        np.testing.assert_allclose(predict, torch_scores, rtol=0, atol=1e-5)
        for binary in (True, False):
            outputs = [triton.InferRequestedOutput(t, binary_data=binary) for t in ("ctr", "ctcvr")]
            result = client.infer(NAME, _v2_inputs(rows, binary), outputs=outputs, model_version="1")
            got = np.stack([result.as_numpy(task) for task in ("ctr", "ctcvr")], axis=1)
            np.testing.assert_allclose(got, torch_scores, rtol=0, atol=1e-5)  # FP32 inputs, both encodings
        bad = _v2_inputs(rows[:3], True)
        bad[16 + 1 + 6] = triton.InferInput("numerical_7", [3], "BYTES")
        bad[16 + 1 + 6].set_data_from_numpy(np.array(["1", "2", "3"], dtype=object))
        with pytest.raises(InferenceServerException, match="input 'numerical_7': a numeric field is FP32"):
            client.infer(NAME, bad)
        with pytest.raises(InferenceServerException, match="model 'another-model' is not served here"):
            client.infer("another-model", _v2_inputs(rows[:3], True))
        metrics = httpx.get(server.url + "/metrics").text
        assert _metric(metrics, 'mtlrec_requests_total{endpoint="v2_infer",status="200"}') == 2
        assert _metric(metrics, 'mtlrec_requests_total{endpoint="v2_infer",status="400"}') == 1
        assert _metric(metrics, 'mtlrec_requests_total{endpoint="v2_infer",status="404"}') == 1
    finally:
        server.stop()


def _register_broken_copy(work: Path, of: Path) -> str:
    """A new registry version whose ONNX file is damaged (its checksum no longer matches)."""
    broken = shutil.copytree(of, work / "broken-bundle")
    data = bytearray((broken / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = c.create_run(c.get_experiment_by_name("synth").experiment_id)
    c.log_artifacts(run.info.run_id, str(broken), "bundle")
    version = c.create_model_version(NAME, f"{run.info.artifact_uri}/bundle", run.info.run_id)
    c.set_registered_model_alias(NAME, "champion", version.version)
    return str(version.version)


@pytest.mark.slow
def test_hot_reload_under_load_then_refuses_a_broken_bundle(work):
    server = Server(["serve", f"paths.work_dir={work}", "serve.poll_seconds=0.2"])
    rows = _rows(work, 20)
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]
    stop = threading.Event()

    def hammer(out: list) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/predict", json={"rows": rows})
                    out.append((r.status_code, r.json().get("model_version")))
                except httpx.HTTPError as exc:
                    out.append((0, repr(exc)))

    threads = [threading.Thread(target=hammer, args=(out,)) for out in seen]
    try:
        for t in threads:
            t.start()
        while min(len(s) for s in seen) < 5:
            time.sleep(0.05)
        assert main(["promote", f"paths.work_dir={work}", "version=2"]) == 0
        deadline = time.time() + 60
        while not all(s and s[-1][1] == "2" for s in seen) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # keep the load on after the swap too
        stop.set()
        for t in threads:
            t.join()
        for s in seen:
            assert {status for status, _ in s} == {200}, [x for x in s if x[0] != 200][:3]
            versions = [v for _, v in s]
            assert versions[0] == "1" and versions[-1] == "2"
            assert versions == sorted(versions)  # 1…1 then 2…2: never back, never mixed
        c = httpx.Client(base_url=server.url, timeout=30)

        broken = _register_broken_copy(work, work / "runs" / "synth" / "mmoe-ew-seed9" / "bundle")
        deadline = time.time() + 60
        while c.get("/health").json()["last_reload_error"] is None and time.time() < deadline:
            time.sleep(0.1)
        health = c.get("/health").json()
        assert health["model_version"] == "2" and "model.onnx does not match its checksum" in \
            health["last_reload_error"]
        assert c.post("/predict", json={"rows": rows}).json()["model_version"] == "2"
        metrics = c.get("/metrics").text
        assert _metric(metrics, 'mtlrec_reloads_total{result="refused"}') == 1  # not retried
        assert _metric(metrics, 'mtlrec_reloads_total{result="ok"}') == 2
        assert _metric(metrics, "mtlrec_model_version ") == 2
        assert broken == "3"
    finally:
        stop.set()
        log = server.stop()
    assert "version 3 refused, keeping version 2" in log


@pytest.mark.slow
def test_batch_scoring_parquet_in_chunks(work, tmp_path, capsys):
    frame = pl.read_csv(work / "landing" / "synth" / "day=2026-11-03.csv")
    frame = frame.with_columns(pl.col("tags").str.split("|"))  # a list column, as Parquet logs have
    frame.write_parquet(tmp_path / "in.parquet")  # categorical ids as integers, as logs have them
    out = tmp_path / "scores" / "out.parquet"
    args = [f"paths.work_dir={work}", f"model={work / 'runs/synth/mmoe-ew-seed2026/bundle'}",
            f"input={tmp_path / 'in.parquet'}", f"output={out}", "score.chunk_rows=300"]
    assert main(["score", *args]) == 0
    scores = pl.read_parquet(out)
    assert scores.columns == ["search_id", "ctr", "ctcvr"] and scores.height == 2000
    assert scores["search_id"].to_list() == frame["search_id"].to_list()
    model = bundle.load(work / "runs" / "synth" / "mmoe-ew-seed2026" / "bundle")
    expected, _ = model.score(rows_mod.from_frame(frame, model.transform, 0))  # one chunk
    assert scores["ctcvr"].to_list() == pytest.approx(expected[:, 1].tolist(), abs=1e-7)
    printed = capsys.readouterr().out
    assert "2,000 rows scored" in printed and "rows/s (onnxruntime alone on the same rows:" in printed

    frame.with_columns(pl.col("numerical_5").cast(pl.String)).write_parquet(tmp_path / "bad.parquet")
    assert main(["score", *args[:2], f"input={tmp_path / 'bad.parquet'}", f"output={out}"]) == 2
    assert "field 'numerical_5': column type String is not numeric" in capsys.readouterr().err
    nonfinite = frame.with_columns(pl.when(pl.col("search_id") == frame["search_id"][1234])
                                   .then(float("nan")).otherwise(pl.col("numerical_9")).alias("numerical_9"))
    nonfinite.write_parquet(tmp_path / "nan.parquet")
    assert main(["score", *args[:2], f"input={tmp_path / 'nan.parquet'}", f"output={out}",
                 "score.chunk_rows=1000"]) == 2
    assert "row 1234, field 'numerical_9': non-finite number nan" in capsys.readouterr().err


@pytest.mark.slow
def test_every_worker_process_follows_the_alias_and_they_download_the_new_version_at_once(work):
    from mtlrec import files
    from mtlrec.pipeline.registry import cache_dir

    assert main(["promote", f"paths.work_dir={work}", "version=1"]) == 0
    files.remove(cache_dir(config.load([f"paths.work_dir={work}"])) / NAME / "v2")  # both must fetch it
    server = Server(["serve", f"paths.work_dir={work}", "serve.poll_seconds=0.5", "serve.workers=2"])
    try:
        c = httpx.Client(base_url=server.url, timeout=30)

        def versions() -> list[str]:
            return [line.rsplit(" ", 1)[1] for line in c.get("/metrics").text.splitlines()
                    if line.startswith("mtlrec_model_version{")]

        deadline = time.time() + 30
        while versions() != ["1.0", "1.0"] and time.time() < deadline:
            time.sleep(0.1)
        assert versions() == ["1.0", "1.0"]
        assert main(["promote", f"paths.work_dir={work}", "version=2"]) == 0
        deadline = time.time() + 60
        while versions() != ["2.0", "2.0"] and time.time() < deadline:
            time.sleep(0.1)
        assert versions() == ["2.0", "2.0"]
        metrics = c.get("/metrics").text
        assert _metric(metrics, 'mtlrec_reloads_total{result="ok"}') == 4  # 2 workers × (v1, v2)
        assert _metric(metrics, 'mtlrec_reloads_total{result="refused"}') == 0  # no collision
        rows = _rows(work, 5)
        assert {httpx.post(server.url + "/predict", json={"rows": rows}).json()["model_version"]
                for _ in range(10)} == {"2"}
    finally:
        server.stop()

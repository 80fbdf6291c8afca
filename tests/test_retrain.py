"""`mtlrec retrain` on a real landing folder: once-only ingestion, warm start, gate and
promotion, idempotence, the lock, and recovery after the process is killed mid-job."""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import polars as pl
import pytest
import torch

from mtlrec.models.config import model_config
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline.cli import main
from mtlrec.pipeline.retrain import warm_start
from mtlrec.pipeline.run_folder import RunFolder

SMALL = ["synth.rows_per_day=2000", "synth.ctr=0.3", "synth.cvr=0.3", "model.n_experts=2",
         "model.expert_hidden=[16]", "model.tower_hidden=[8]", "trainer.max_epochs=1",
         "trainer.batch_size=512", "trainer.lr=0.01", "gate.auc_tolerance=0.5",
         "gate.logloss_tolerance=1.0"]
NAME = "synth-ranker"


def _args(work: Path) -> list[str]:
    return [f"paths.work_dir={work}", *SMALL]


def _land(work: Path, days: int, *drift: str) -> None:
    """The upstream system drops day partitions into the landing folder (`drift`: synth.drift
    overrides)."""
    assert main(["synth", *_args(work), f"synth.days={days}", *drift]) == 0


def _versions(work: Path) -> list[str]:
    uri = f"sqlite:///{work / 'mlflow.db'}"
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return sorted(str(v.version) for v in c.search_model_versions(f"name = '{NAME}'"))


def _manifest(work: Path) -> dict:
    return json.loads((work / "retrain" / "synth" / "manifest.json").read_text())


def test_warm_start_copies_the_champions_weights_and_known_embedding_rows():
    cfg = model_config(arch="mmoe", n_experts=2, expert_hidden=[8], tower_hidden=[4])
    torch.manual_seed(0)
    champion = MultiTaskRanker(cfg, {"a": 5, "b": 3}, 2, 2)
    torch.manual_seed(1)
    grown = MultiTaskRanker(cfg, {"a": 8, "b": 3}, 2, 2)  # field a has 3 new values
    fresh_rows = grown.embeddings.state_tables()[0][5:].clone()
    warm_start(grown, champion)
    new, old = grown.embeddings.state_tables(), champion.embeddings.state_tables()
    assert torch.equal(new[0][:5], old[0]) and torch.equal(new[1], old[1])
    assert torch.equal(new[0][5:], fresh_rows)  # values new since the champion: fresh init
    theirs = champion.state_dict()
    for name, tensor in grown.state_dict().items():
        if not name.startswith("embeddings."):
            assert torch.equal(tensor, theirs[name]), name
    other = MultiTaskRanker(cfg.model_copy(update={"expert_hidden": [6]}), {"a": 8, "b": 3}, 2, 2)
    with pytest.raises(ValueError, match="cannot warm-start: 'backbone.experts.first.weight'"):
        warm_start(other, champion)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A landing folder that grows a day at a time, retrained after each delivery."""
    work = tmp_path_factory.mktemp("retrain")
    for days in (2, 3, 4):
        _land(work, days)  # rewrites the earlier days too (same content)
        assert main(["retrain", *_args(work)]) == 0
    return work


@pytest.mark.slow
def test_retrain_takes_days_once_warm_starts_gates_and_promotes(work, capsys):
    manifest = _manifest(work)
    assert sorted(manifest["days"]) == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    assert manifest["days"]["2026-11-04"]["rows_good"] == 2000
    assert sorted(manifest["jobs"]) == ["2026-11-03", "2026-11-04"]  # none with only 2 days
    assert manifest["jobs"]["2026-11-03"]["version"] == "1"  # the first model: champion
    assert manifest["jobs"]["2026-11-04"] == {"status": "done", "version": "2", "action": "champion",
                                              "window": ["2026-11-01", "2026-11-02", "2026-11-03",
                                                         "2026-11-04"], "blocked_by": []}
    # each new day is compared with the day before and the champion's window: no drift here
    assert manifest["days"]["2026-11-04"]["status"] == "taken"
    assert manifest["days"]["2026-11-04"]["drift"]["reasons"] == []
    assert set(manifest["days"]["2026-11-04"]["drift"]["reports"]) == {"previous", "champion"}
    job = work / "retrain" / "synth" / "jobs" / "2026-11-04"
    assert RunFolder(job / "champion").state().registered_version == "1"  # warm-started from v1
    gate = json.loads((job / "runs" / "mmoe-ew-seed2026" / "gate" / "gate.json").read_text())
    assert gate["champion_before"] == "1" and gate["holdout"]["rows"] == 2000
    assert gate["holdout"]["files"][0].endswith("store/day=2026-11-04.parquet")
    assert set(gate["gate"]["tasks"]) == {"ctr", "ctcvr"}
    # the job's vocabularies extend the champion's: ids of known values are unchanged
    old = pl.read_parquet(work / "retrain/synth/jobs/2026-11-03/features/artifacts/vocab.parquet")
    new = pl.read_parquet(job / "features" / "artifacts" / "vocab.parquet")
    kept = old.join(new, on=["field", "value"], suffix="_new")
    assert kept.height == old.height and (kept["id"] == kept["id_new"]).all()


@pytest.mark.slow
def test_retrain_with_nothing_new_changes_nothing_and_is_locked(work, capsys):
    manifest = work / "retrain" / "synth" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    assert main(["retrain", *_args(work)]) == 0
    assert "up to date: day 2026-11-04 already published as version 2" in capsys.readouterr().out
    assert manifest.stat().st_mtime_ns == before and _versions(work) == ["1", "2"]
    with open(work / "retrain" / "synth" / "retrain.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run in progress
        assert main(["retrain", *_args(work)]) == 2
        assert "another `mtlrec retrain` is running" in capsys.readouterr().err


def _kill_when(cmd: list[str], marker: Path) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run ended before {marker} appeared"


@pytest.mark.slow
def test_a_killed_retrain_is_completed_by_the_next_run(work, capsys):
    _land(work, 5)
    folder = work / "retrain" / "synth"
    cmd = [sys.executable, "-m", "mtlrec.pipeline.cli", "retrain", *_args(work)]
    _kill_when(cmd, folder / "store" / "day=2026-11-05.parquet")  # killed while taking the day in
    _kill_when(cmd, folder / "jobs" / "2026-11-05" / "runs" / "mmoe-ew-seed2026" / "checkpoint-all.pt")
    assert "2026-11-05" not in _manifest(work)["jobs"] and _versions(work) == ["1", "2"]
    assert main(["retrain", *_args(work)]) == 0  # picks the job up where it stopped
    assert "day 2026-11-05: version 3 is" in capsys.readouterr().out
    assert _versions(work) == ["1", "2", "3"]  # registered once
    assert _manifest(work)["jobs"]["2026-11-05"]["status"] == "done"
    assert _manifest(work)["days"]["2026-11-05"]["rows_good"] == 2000  # taken in once
    assert main(["retrain", *_args(work)]) == 0
    assert "up to date" in capsys.readouterr().out and _versions(work) == ["1", "2", "3"]


@pytest.mark.slow
def test_a_drifted_day_keeps_the_champion_until_a_human_accepts_it(work, capsys):
    _land(work, 6, "synth.drift={days:[2026-11-06],new_category:categorical_12}")
    champion_before = _champion(work)
    assert main(["retrain", *_args(work)]) == 0
    out = capsys.readouterr().out
    record = _manifest(work)["days"]["2026-11-06"]
    assert record["status"] == "drifted" and record["action"] == "quarantine"
    assert "drifted day 2026-11-06 (not trained on)" in out and "categorical_12: linf" in out
    assert "retrain.accept_day=2026-11-06" in out
    assert "2026-11-06" not in _manifest(work)["jobs"] and _champion(work) != "" and \
        (champion_before == "" or int(_champion(work)) >= int(champion_before))
    report = Path(record["drift"]["reports"]["previous"]["markdown"]).read_text()
    assert "categorical_12 | feature | linf" in report and "-histograms.png" in report
    kept = _champion(work)
    assert main(["retrain", *_args(work), "retrain.accept_day=2026-11-06"]) == 0
    assert "day 2026-11-06: version" in capsys.readouterr().out
    assert _manifest(work)["days"]["2026-11-06"]["status"] == "accepted"
    assert _champion(work) != kept  # trained on once accepted (the gate lets it through here)
    run = work / "retrain/synth/jobs/2026-11-06/runs/mmoe-ew-seed2026"
    assert "## Drift of the new days" in (run / "gate" / "gate.md").read_text()
    uri = f"sqlite:///{work / 'mlflow.db'}"
    metrics = mlflow.MlflowClient(tracking_uri=uri).get_run(RunFolder(run).trained().run_id).data.metrics
    assert metrics["drift.2026-11-06.previous.categorical_12"] > 1  # its share of the limit
    # blocking instead: a drifted day is trained on, but its version stays challenger
    accepted = _champion(work)
    block = [*_args(work), "retrain.drift_action=block"]
    assert main(["synth", *block, "synth.days=7", "synth.drift={days:[2026-11-07],shift_numeric:numerical_3}"]) == 0
    assert main(["retrain", *block]) == 0
    out = capsys.readouterr().out
    assert "drifted day 2026-11-07 (trained on, blocks promotion)" in out and "is challenger" in out
    gate = json.loads((work / "retrain/synth/jobs/2026-11-07/runs/mmoe-ew-seed2026/gate/gate.json").read_text())
    assert any("day 2026-11-07 drifted" in f for f in gate["gate"]["failures"])
    assert _champion(work) == accepted


def _champion(work: Path) -> str:
    uri = f"sqlite:///{work / 'mlflow.db'}"
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        return str(c.get_model_version_by_alias(NAME, "champion").version)
    except mlflow.exceptions.MlflowException:
        return ""

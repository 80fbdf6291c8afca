"""train → evaluate through the CLI, tracked in MLflow (embedded SQLite and a real server)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers import free_port
from mtlrec.pipeline.cli import main

SMALL = ["synth.rows_per_day=5000", "synth.days=4", "synth.ctr=0.3", "synth.cvr=0.3", "model.expert_hidden=[16]",
         "model.tower_hidden=[8]", "trainer.max_epochs=2", "trainer.batch_size=512", "trainer.lr=0.01"]
MMOE = ["model.n_experts=2"]  # the default model's own key; other architectures refuse it


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("work")
    assert main(["synth", *_args(work)]) == 0
    assert main(["ingest", *_args(work)]) == 0
    return work


def _args(work: Path, *extra: str) -> list[str]:
    mmoe = [] if any(e.startswith("model=") for e in extra) else MMOE
    return [f"paths.work_dir={work}", *SMALL, *mmoe, *extra]


def test_train_and_evaluate_with_mlflow_run_and_report(work):
    assert main(["train", *_args(work)]) == 0
    assert main(["evaluate", *_args(work)]) == 0
    run_dir = work / "runs" / "synth" / "mmoe-ew-seed2026"
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "trained"
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"ctr", "ctcvr"}
    assert set(metrics["group_auc"]) == {"NL", "ES", "FR", "US"}  # per-country AUC
    assert 0.55 < metrics["tasks"]["ctr"]["auc"] <= 1
    report = (run_dir / "evaluation" / "report.md").read_text()
    assert "## AUC per group" in report and "![ROC per task](roc.png)" in report
    for png in ("roc.png", "curves.png", "calibration.png"):
        assert (run_dir / "evaluation" / png).stat().st_size > 1000

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    run = client.get_run(state["run_id"])
    assert run.data.params["model.arch"] == "mmoe" and run.data.params["trainer.max_epochs"] == "2"
    assert {"git_commit", "data_fingerprint"} <= set(run.data.tags)
    assert "test_mean_auc" in run.data.metrics and "valid_mean_auc" in run.data.metrics
    history = client.get_metric_history(state["run_id"], "valid_mean_auc")
    assert [m.step for m in history] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(state["run_id"], "evaluation")}
    assert "evaluation/report.md" in artifacts and "evaluation/roc.png" in artifacts
    assert [a.path for a in client.list_artifacts(state["run_id"], "checkpoint")] == [
        "checkpoint/checkpoint-all.pt"]
    features = {a.path for a in client.list_artifacts(state["run_id"], "features")}
    assert "features/vocab.parquet" in features and "features/manifest.json" in features
    # a finished run is not silently retrained
    assert main(["train", *_args(work)]) == 2


def test_stl_baseline_gives_delta_m(work):
    assert main(["train", *_args(work, "method=stl", "model=hps")]) == 0
    assert main(["evaluate", *_args(work, "method=stl", "model=hps")]) == 0
    stl_dir = work / "runs" / "synth" / "hps-stl-seed2026"
    assert {p.name for p in stl_dir.glob("model-*.pt")} == {"model-ctr.pt", "model-ctcvr.pt"}
    assert main(["train", *_args(work, "model=ple", "model.shared_experts=1", "model.task_experts=1")]) == 0
    assert main(["evaluate", *_args(work, "model=ple", "model.shared_experts=1",
                                     "model.task_experts=1")]) == 0
    ple = json.loads((work / "runs" / "synth" / "ple-ew-seed2026" / "evaluation" / "metrics.json").read_text())
    stl = json.loads((stl_dir / "evaluation" / "metrics.json").read_text())
    expected = 100 * sum((ple["tasks"][t]["auc"] - stl["tasks"][t]["auc"]) / stl["tasks"][t]["auc"]
                         for t in ("ctr", "ctcvr")) / 2
    assert ple["delta_m_pct"] == pytest.approx(expected)


def test_conflict_diagnostics_reach_mlflow_and_the_report(work):
    args = _args(work, "method=grouped", "method.diagnostics_every=10", "method.grouped.warmup_steps=5",
                 "method.grouped.regroup_every=5", "optimizer=adatask_adam")
    assert main(["train", *args]) == 0 and main(["evaluate", *args]) == 0
    run_dir = work / "runs" / "synth" / "mmoe-grouped+adatask_adam-seed2026"
    lines = (run_dir / "diagnostics-all.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"tasks": ["ctr", "ctcvr"]} and len(lines) > 3
    record = json.loads(lines[-1])
    assert {"cosine", "magnitude", "affinity", "groups", "adatask_rau"} <= set(record)
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    cosine = client.get_metric_history(run_id, "grad_cosine.ctr.vs.ctcvr")
    assert len(cosine) == len(lines) - 1 and all(-1 <= m.value <= 1 for m in cosine)
    assert client.get_metric_history(run_id, "group_count")
    report = (run_dir / "evaluation" / "report.md").read_text()
    for png in ("diagnostics-all-conflict.png", "diagnostics-all-affinity.png",
                "diagnostics-all-adatask_rau.png"):
        assert f"]({png})" in report and (run_dir / "evaluation" / png).stat().st_size > 1000


@pytest.mark.slow
def test_killed_training_resumes_in_the_same_mlflow_run(work):
    args = _args(work, "model=hps", "trainer.max_epochs=6", "trainer.patience=10", "seed=5",
                 "trainer.batch_size=128")
    cmd = [sys.executable, "-m", "mtlrec.pipeline.cli", "train", *args]
    run_dir = work / "runs" / "synth" / "hps-ew-seed5"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint-all.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "running"
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    after = json.loads((run_dir / "run.json").read_text())
    assert after["status"] == "trained" and after["run_id"] == state["run_id"]
    history = json.loads((run_dir / "history.json").read_text())["all"]
    assert [h["epoch"] for h in history] == list(range(6))


@pytest.mark.slow
def test_tracking_against_a_real_mlflow_server(work, tmp_path, monkeypatch):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"MLFLOW_TRACKING_URI": ""},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert main(["train", *_args(work, "model=hps", "seed=11", "trainer.max_epochs=1")]) == 0
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("synth")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 1 and runs[0].data.params["seed"] == "11"
        assert "valid_mean_auc" in runs[0].data.metrics
        assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "model")} == {"model/model.pt"}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_sweep_chooses_on_validation_nests_its_runs_and_resumes(work, tmp_path):
    """Two learning rates, one of which cannot learn in two epochs: the sweep picks the
    other on validation, trains it at the final seeds and tests it; every run is nested
    under the sweep's MLflow run; run again, it retrains nothing."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "description": "two learning rates",
                                    "grid": {"trainer.lr": [1e-7, 0.01]}, "seeds": [0],
                                    "final_seeds": [0, 1]}))
    reports = tmp_path / "reports"
    args = ["sweep", str(spec), *_args(work), f"paths.reports={reports}"]
    assert main(args) == 0
    result = json.loads((reports / "sweep-tiny.json").read_text())
    valid = {g["point"]["trainer.lr"]: g["valid_score"] for g in result["grid"]}
    assert valid[0.01] > valid[1e-7] and result["best"]["point"] == {"trainer.lr": 0.01}
    assert [f["seed"] for f in result["finals"]] == [0, 1]
    assert all(0.55 < f["test"]["mean_auc"] <= 1 for f in result["finals"])
    assert "| 0.01 |" in (reports / "sweep-tiny.md").read_text()

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synth").experiment_id

    def children() -> list:
        return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")

    assert len(children()) == 3  # both points at seed 0 (the winner's is reused), the winner at seed 1
    assert main(args) == 0  # again: every run is finished with the same configuration
    again = json.loads((reports / "sweep-tiny.json").read_text())
    assert again["parent_run_id"] == result["parent_run_id"] and len(children()) == 3
    assert again["grid"] == result["grid"]

"""The main job end to end through the CLI, on a small synthetic default."""

from __future__ import annotations

import json

import mlflow
import polars as pl
import pytest

from mtlrec.pipeline.cli import main


@pytest.mark.slow
def test_run_generates_ingests_trains_and_evaluates(tmp_path, capsys):
    args = [f"paths.work_dir={tmp_path}", "synth.rows_per_day=3000", "synth.days=4",
            "model.n_experts=2", "model.expert_hidden=[16]", "trainer.max_epochs=1"]
    assert main(["run", *args]) == 0
    out = tmp_path / "features" / "synth"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows_read"] == 12_000 and manifest["status"] == "ok"
    assert manifest["split_rows"] == {"train": 6000, "valid": 3000, "test": 3000}
    days = pl.read_parquet(out / "data", hive_partitioning=True)["day"].cast(pl.String).unique().sort()
    assert days.to_list() == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    printed = capsys.readouterr().out
    assert "12,000 rows read" in printed
    report = tmp_path / "runs" / "synth" / "mmoe-ew-seed2026" / "evaluation" / "report.md"
    assert f"report: {report}" in printed and report.is_file()
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db" in printed
    # exported, parity-checked, registered and made champion; the job ends with the pointers
    assert "export: synth-ranker version 1 -> champion" in printed
    assert printed.rstrip().splitlines()[-2:] == [
        f"report: {report}",
        f"open the MLflow UI: mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db"]
    bundle = report.parent.parent / "bundle"
    assert json.loads((bundle / "parity.json").read_text())["passed"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    champion = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        "synth-ranker", "champion")
    assert champion.version == 1 and champion.source.endswith("/artifacts/bundle")
    # a second run changes nothing: same inputs, same spec → the output is reused
    before = (out / "manifest.json").stat().st_mtime_ns
    assert main(["ingest", *args]) == 0
    assert (out / "manifest.json").stat().st_mtime_ns == before


def test_bench_needs_a_known_target(capsys):
    assert main(["bench", "nonsense"]) == 2
    assert "mtlrec bench needs one of ['ingest', 'census', 'census_methods', 'methods', 'adatask'," in capsys.readouterr().err

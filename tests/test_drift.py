"""Data statistics and drift: the distances against scipy and hand-computed answers, the
statistics against a reference computed in the test, each injected drift found with its
field and kind, undrifted days left alone, and ingest's statistics pass."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
from scipy.spatial.distance import jensenshannon

from mtlrec.features import drift, raw, stats
from mtlrec.features.ingest import IngestOptions, ingest
from mtlrec.features.spec import DataSpec
from mtlrec.features.synth import SynthDrift, generate
from mtlrec.pipeline.cli import main
from mtlrec.pipeline.config import load

DAYS = ["2026-11-01", "2026-11-02"]


def _params(**drift_kw):
    p = load(["data=synth_mixed", "synth.rows_per_day=6000", "synth.ctr=0.2", "synth.cvr=0.3"]).synth
    return p.model_copy(update={"mixed_labels": True, "days": 2,
                                "drift": SynthDrift(days=[DAYS[1]], **drift_kw) if drift_kw else None})


def _spec(folder: Path) -> DataSpec:
    spec = load(["data=synth_mixed"]).data
    return spec.model_copy(update={"source": spec.source.model_copy(update={"train": str(folder / "day=*.csv")})})


def _day_stats(spec: DataSpec, folder: Path, day: str) -> stats.SliceStats:
    rows = raw.read(spec, str(folder / f"day={day}.csv"), folder / f"good-{day}.parquet")
    return rows.statistics(spec)


def test_distances_match_scipy_and_hand_computed_answers():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.random(7), rng.random(7)
        q[rng.integers(7)] = 0.0  # empty bins too
        assert drift.js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    assert drift.js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert drift.linf_distance({"a": 0.5, "b": 0.5}, {"a": 0.2, "c": 0.8}) == pytest.approx(0.8)
    # the CDF of a sketch: uniform quantiles read back linearly, an atom as a step
    uniform = [i / 100 for i in range(101)]
    assert drift.cdf(uniform, np.array([-1.0, 0.25, 0.5, 2.0])) == pytest.approx([0.0, 0.25, 0.5, 1.0])
    half_zero = [0.0] * 51 + [0.02 * i for i in range(1, 51)]  # 50 % zeros, then uniform on (0, 1]
    assert drift.cdf(half_zero, np.array([0.0, 0.5, 1.0])) == pytest.approx([0.5, 0.75, 1.0], abs=0.011)
    edges, p, q = drift.histogram(half_zero, half_zero)
    assert p == pytest.approx(q) and drift.js_distance(p, q) == 0.0 and p.sum() == pytest.approx(1.0)


def test_statistics_replay_a_reference_computed_here():
    spec = DataSpec.model_validate({
        "name": "t", "source": {"train": "x.csv"}, "day": "day",
        "categorical": [{"name": "c"}, {"name": "tags", "multi": True, "max_len": 2}],
        "numeric": [{"name": "x"}],
        "labels": [{"name": "click", "column": "click"},
                   {"name": "kind", "kind": "multiclass", "column": "kind", "classes": ["a", "b"]}],
        "drift": {"top_k": 2}})
    rng = np.random.default_rng(1)
    n = 5000
    frame = pl.DataFrame({
        "day": rng.choice(["d1", "d2"], n), "c": rng.choice(["u", "v", "w", None], n, p=[0.5, 0.3, 0.1, 0.1]),
        "tags": [None if k == 0 else [f"t{j}" for j in rng.integers(0, 4, k)] for k in rng.integers(0, 4, n)],
        "x": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)), "click": rng.integers(0, 2, n).astype(float),
        "kind": rng.integers(0, 2, n).astype(float)}).with_columns(pl.col("x").fill_nan(None))
    plan = stats.plan(frame.lazy(), spec, ["day"], n)
    collected = plan.collected(pl.collect_all(plan.queries), {"c": "string"})
    vocab = pl.DataFrame({"value": ["u", "v"], "id": [2, 3], "count": [1, 1]})
    got = collected.with_vocabularies({"c": vocab}).slice(pl.col("day") == "d1")
    d1 = frame.filter(pl.col("day") == "d1")
    assert got.rows == d1.height
    c = d1["c"].drop_nulls().to_list()
    assert got.fields["c"]["missing"] == d1["c"].null_count() and got.fields["c"]["count"] == len(c)
    assert got.fields["c"]["top"] == [["u", c.count("u")], ["v", c.count("v")]]  # k = 2
    assert got.fields["c"]["distinct"] == 3 and got.fields["c"]["oov"] == c.count("w")
    kept = [t for tags in d1["tags"].to_list() if tags for t in tags[:2]]  # the first max_len
    assert got.fields["tags"]["count"] == len(kept)
    assert got.fields["tags"]["missing"] == sum(1 for t in d1["tags"].to_list() if not t)
    assert got.fields["click"]["positives"] == int(d1["click"].sum())
    assert dict(got.fields["kind"]["top"]) == {"a": int((d1["kind"] == 0).sum()), "b": int((d1["kind"] == 1).sum())}
    x = np.sort(d1["x"].drop_nulls().to_numpy())  # every row is sampled at this size
    assert got.fields["x"]["sample"] == x.size and got.fields["x"]["missing"] == d1["x"].null_count()
    assert got.fields["x"]["quantiles"] == pytest.approx(np.quantile(x, stats.LEVELS, method="nearest"), abs=1e-3)
    # a union of slices is their merge
    both = collected.slice(True)
    assert both.rows == n and both.fields["click"]["positives"] == int(frame["click"].sum())


@pytest.mark.parametrize("kw, field, check", [
    ({"shift_numeric": "numerical_3", "shift_by": 0.3}, "numerical_3", "js"),
    ({"new_category": "categorical_12", "new_share": 0.5}, "categorical_12", "linf"),
    ({"click_rate_factor": 1.6}, "ctr", "label_rate"),
])
def test_each_injected_drift_is_found_with_its_field_and_kind(tmp_path, kw, field, check):
    generate(_params(**kw), tmp_path)
    spec = _spec(tmp_path)
    before, after = (_day_stats(spec, tmp_path, d) for d in DAYS)
    report = drift.compare(after, before, spec, names=("day 2", "day 1"))
    flagged = {(f.field, f.check) for f in report.drifted}
    assert (field, check) in flagged, report.reasons()
    # what else moved is what the drift implies (conversions follow more clicks), nothing else
    assert flagged <= {(field, check), ("ctcvr", "label_rate"), ("dwell", "missing"), ("intent", "linf")}, flagged
    assert any(r.startswith(f"{field}: {check}") for r in report.reasons())


def test_a_removed_column_is_a_schema_change(tmp_path):
    generate(_params(drop_column="numerical_7"), tmp_path)
    spec = _spec(tmp_path)
    before = raw.columns_of(spec, str(tmp_path / f"day={DAYS[0]}.csv"))
    after = raw.columns_of(spec, str(tmp_path / f"day={DAYS[1]}.csv"))
    changes = drift.schema_changes(after, before)
    assert [(f.field, f.check, f.detail) for f in changes] == [("numerical_7", "schema", "column removed")]
    assert drift.schema_changes({**before, "new": "string"}, before)[0].detail == "column added"
    assert drift.schema_changes({**before, "numerical_1": "double"}, before)[0].detail == \
        "type changed: string → double"


def test_ten_undrifted_days_raise_no_flag(tmp_path):
    p = _params().model_copy(update={"days": 11, "rows_per_day": 4000})
    generate(p, tmp_path)
    spec = _spec(tmp_path)
    days = sorted(x.name.removeprefix("day=").removesuffix(".csv") for x in tmp_path.glob("day=*.csv"))
    all_stats = [_day_stats(spec, tmp_path, d) for d in days]
    for i in range(1, len(all_stats)):
        for ref in (all_stats[i - 1], all_stats[0]):  # the day before; the first as a "window"
            report = drift.compare(all_stats[i], ref, spec, names=(days[i], "reference"))
            assert not report.drifted, report.reasons()


def test_ingest_writes_each_days_statistics_and_the_training_reference(tmp_path):
    generate(_params().model_copy(update={"days": 4}), tmp_path / "logs")
    spec = _spec(tmp_path / "logs")
    spec = spec.model_copy(update={"split": spec.split.model_copy(update={"method": "day"})})
    on = ingest(spec, tmp_path / "with", IngestOptions())
    off = ingest(spec, tmp_path / "without", IngestOptions(statistics=False))
    # the vocabularies are counted from the statistics: the same as counted directly
    vocab_on = pl.read_parquet(on.artifacts_dir / "vocab.parquet")
    assert vocab_on.equals(pl.read_parquet(off.artifacts_dir / "vocab.parquet"))
    assert not off.stats_dir.exists()
    assert sorted(p.name for p in on.stats_dir.iterdir()) == \
        [f"day=2026-11-0{d}.json" for d in range(1, 5)] + ["reference.json"]
    day = json.loads(on.slice_stats_file("day", "2026-11-04").read_text())  # the test day
    ref = json.loads(on.reference_stats_file.read_text())
    assert day["rows"] == 6000 and ref["rows"] == on.manifest["split_rows"]["train"] == 12000
    assert ref["fields"]["ctr"]["positives"] + day["fields"]["ctr"]["positives"] > 0
    # the test day's values unseen in training are out of vocabulary; none of the training's
    assert day["fields"]["categorical_1"]["oov"] > 0 and ref["fields"]["categorical_1"]["oov"] == 0


def _retrain_args(work: Path) -> list[str]:
    return [f"paths.work_dir={work}", "synth.rows_per_day=3000", "synth.ctr=0.2", "synth.cvr=0.3"]


def _days(work: Path) -> dict:
    return json.loads((work / "retrain" / "synth" / "manifest.json").read_text())["days"]


def test_late_labels_wait_and_are_judged_in_full_once_complete(tmp_path, capsys):
    """With label_delay_days=1 the newest day waits (no label checks); once a newer day has
    landed it is read again, labels included. No job runs: two days are ready at most."""
    args = [*_retrain_args(tmp_path), "retrain.label_delay_days=1"]
    assert main(["synth", *args, "synth.days=2"]) == 0
    assert main(["retrain", *args]) == 0
    assert "waiting for complete labels (retrain.label_delay_days=1): 2026-11-02" in capsys.readouterr().out
    days = _days(tmp_path)
    assert days["2026-11-01"]["status"] == "taken" and days["2026-11-02"]["status"] == "waiting"
    report = json.loads(Path(days["2026-11-02"]["drift"]["reports"]["previous"]["json"]).read_text())
    assert {f["field"] for f in report["findings"]}.isdisjoint({"ctr", "ctcvr"})  # no label checks yet
    # the next day lands, and the day before's conversions arrive (its partition is rewritten)
    assert main(["synth", *args, "synth.days=3"]) == 0
    landing = tmp_path / "landing" / "synth"
    late = pl.read_csv(landing / "day=2026-11-02.csv", infer_schema=False)
    late.with_columns(pl.when(pl.col("click") == "1").then(pl.lit("1")).otherwise(pl.col("conversion"))
                      .alias("conversion")).write_csv(landing / "day=2026-11-02.csv")
    assert main(["retrain", *args]) == 0
    out = capsys.readouterr().out
    days = _days(tmp_path)
    assert days["2026-11-03"]["status"] == "waiting"
    # read again with its labels: every click converted, which the label check now sees
    assert days["2026-11-02"]["status"] == "drifted" and "ctcvr: label_rate" in days["2026-11-02"]["reason"]
    assert "drifted day 2026-11-02" in out


def test_a_day_without_a_declared_column_is_drifted_and_cannot_be_accepted(tmp_path, capsys):
    args = _retrain_args(tmp_path)
    assert main(["synth", *args, "synth.days=2", "synth.drift={days:[2026-11-02],drop_column:numerical_7}"]) == 0
    assert main(["retrain", *args]) == 0
    assert "numerical_7: schema (column removed)" in capsys.readouterr().out
    record = _days(tmp_path)["2026-11-02"]
    assert record["status"] == "drifted" and record["rows_good"] == 0
    # recorded in MLflow although no job runs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("synth").experiment_id],
                              "attributes.run_name = 'retrain-drift-2026-11-02'")
    assert runs and runs[0].data.metrics["drift.2026-11-02.drifted_checks"] == 1
    assert main(["retrain", *args, "retrain.accept_day=2026-11-02"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read with the data conf (numerical_7: schema (column removed))" in err


def test_mtlrec_drift_reports_a_day_on_demand(tmp_path, capsys):
    args = _retrain_args(tmp_path)
    assert main(["synth", *args, "synth.days=2", "synth.drift={days:[2026-11-02],shift_numeric:numerical_3}"]) == 0
    assert main(["drift", *args]) == 0  # the newest day by default
    out = capsys.readouterr().out
    assert "day 2026-11-02 vs day 2026-11-01" in out and "numerical_3: js" in out
    folder = tmp_path / "monitor" / "synth"
    assert (folder / "day=2026-11-02-vs-previous-histograms.png").is_file()
    assert "| numerical_3 | feature | js |" in (folder / "day=2026-11-02-vs-previous.md").read_text()
    assert main(["drift", *args, "day=2026-11-09"]) == 2
    assert "monitor.day=2026-11-09: no such partition" in capsys.readouterr().err

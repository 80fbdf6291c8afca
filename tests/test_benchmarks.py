"""The benchmark commands run end to end on tiny sizes (numbers come from the real runs)."""

from __future__ import annotations

import json

import pytest

from helpers import shared_file
from mtlrec.pipeline.cli import main


@pytest.mark.slow
def test_bench_ingest_compares_like_with_like(tmp_path):
    args = ["bench", "ingest", "bench.rows=4000", "bench.days=4", f"paths.work_dir={tmp_path}",
            f"paths.reports={tmp_path / 'reports'}"]
    assert main(args) == 0
    result = json.loads((tmp_path / "reports" / "ingest.json").read_text())
    assert result["rows"] == 4000
    # the pandas baseline did the same work: same good/quarantined rows and vocabularies
    assert result["same_result"] == {"rows_good": True, "rows_quarantined": True, "vocab_sizes": True}
    assert result["implementations"]["mtlrec"]["rows_quarantined"] > 0
    assert result["batch_reader"]["samples_per_s"] > 0
    assert "mtlrec / pandas rows/s" in (tmp_path / "reports" / "ingest.md").read_text()


@pytest.mark.slow
def test_bench_scale_runs_its_steps_once_and_the_whole_run_on_the_largest_logs(tmp_path, capsys):
    args = ["bench", "scale", "bench.scale_rows=[3000,6000]", "bench.scale_days=3",
            f"paths.work_dir={tmp_path}", f"paths.reports={tmp_path / 'reports'}",
            "model.n_experts=2", "model.expert_hidden=[16]", "model.tower_hidden=[8]"]
    assert main(args) == 0
    result = json.loads((tmp_path / "reports" / "scale.json").read_text())
    small, large = result["sizes"]
    assert [small["ingest"]["rows_read"], large["ingest"]["rows_read"]] == [3000, 6000]
    for size in (small, large):
        assert size["stream"]["data"] == "stream" and size["memory"]["data"] == "memory"
    assert "run" not in small
    run = large["run"]  # synth and ingest reused; trained, evaluated, exported, gated, registered
    assert run["action"] == "champion" and run["holdout_rows"] > 1900 and run["peak_rss_mb"] > 0
    assert run["command"].startswith("mtlrec run ") and "synth.rows_per_day=2000" in run["command"]
    assert "A whole `mtlrec run` of the 6,000-row logs" in (tmp_path / "reports" / "scale.md").read_text()
    capsys.readouterr()
    assert main(args) == 0  # stopped or not, a second bench reuses every finished step
    assert capsys.readouterr().err.count("bench scale: reusing") == 7


@pytest.mark.slow
def test_bench_methods_measures_every_case_against_ew(tmp_path):
    from mtlrec.pipeline import config
    from mtlrec.pipeline.benchmarks import methods

    shared_file("census-income/census-income.data.gz")
    overrides = [f"paths.work_dir={tmp_path}", f"paths.reports={tmp_path / 'reports'}"]
    cases = [methods.CASES[0], ("pcgrad", "gradient", ["method=pcgrad"]),
             ("grouped, 2 groups", "schedule", ["method=grouped", "method.grouped.warmup_steps=1000"])]
    result = methods.run(config.load(overrides), overrides, warmup=1, steps=3, cases=cases)
    rows = {r["method"]: r for r in result["runs"]}
    assert list(rows) == [c[0] for c in cases] and rows["ew"]["time_ratio"] == 1.0
    for row in rows.values():  # every case measured in its own process (no timing asserted)
        assert row["median_step_ms"] > 0 and row["peak_rss_mb"] > 0
    assert "× EW time" in (tmp_path / "reports" / "methods.md").read_text()


def test_adatask_balances_the_shared_parameters_that_task_b_dominates_under_ew():
    """AdaTask Sec. 3: with plain RMSProp most shared parameters' updates come from the
    large-scale task B; AdaTask's per-task accumulators balance them. The least-squares
    reference fits the same (scaled) data."""
    from mtlrec.pipeline.benchmarks import adatask_synthetic as bench

    ew = bench.train_one(bench.METHODS["ew"], seed=0, epochs=3, n_train=2560)  # probed at steps 10, 20
    ada = bench.train_one(bench.METHODS["adatask"], seed=0, epochs=3, n_train=2560)
    linear = bench.least_squares(seed=0, n_train=2560)
    assert 0.2 < linear["rmse_a"] < 0.6 and 0.2 < linear["rmse_b"] < 0.6  # x², x³ stay unexplained
    assert ew["dominated_by_b"] > 0.6  # rAU(i, B) in the paper's (0.8, 1]
    assert ada["balanced"] > 0.9 and ada["dominated_by_b"] < 0.05


@pytest.mark.slow
def test_bench_qm9_table_has_every_method_with_delta_m_against_its_stl(tmp_path, capsys):

    shared_file("qm9/qm9.parquet")
    args = ["bench", "qm9", f"paths.work_dir={tmp_path}", f"paths.reports={tmp_path / 'reports'}",
            "data.rows.train=32", "data.rows.valid=16", "data.rows.test=16", "trainer.max_epochs=1",
            "trainer.batch_size=16"]
    assert main(args) == 0
    result = json.loads((tmp_path / "reports" / "qm9.json").read_text())
    assert result["seeds"] == 1  # the table's default for QM9
    labels = [s["method"] for s in result["summary"]]
    assert labels == ["STL", "EW", "AdaTask", "DB-MTL", "MoCoGrad", "DTJS", "Grouped updates"]
    stl = next(r for r in result["runs"] if r["method"] == "STL")
    for run in result["runs"]:
        assert run["delta_m_pct"] is None if run["method"] == "STL" else run["delta_m_pct"] is not None
        assert len(run["tasks"]) == 11
    ew = next(r for r in result["runs"] if r["method"] == "EW")
    expected = -100 * sum((ew["tasks"][t] - stl["tasks"][t]) / stl["tasks"][t] for t in stl["tasks"]) / 11
    assert abs(ew["delta_m_pct"] - expected) < 1e-9
    table = (tmp_path / "reports" / "qm9.md").read_text()
    assert "| Grouped updates |" in table and "DB-MTL paper, Table 5" in table
    # run again: every finished run is reused (a bench stopped half-way resumes), same numbers
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().err.count("bench: reusing the finished run") == len(labels)
    again = json.loads((tmp_path / "reports" / "qm9.json").read_text())
    assert again["runs"] == result["runs"]


def test_paired_differences_to_ew_call_only_consistent_gains_beyond_noise():
    from mtlrec.pipeline.benchmarks import paired

    def rows(method, values):
        return [{"method": method, "seed": s, "d": v} for s, v in enumerate(values)]

    table = (rows("EW", [1.0, 5.0, -2.0]) + rows("steady", [2.0, 6.1, -1.0])
             + rows("noisy", [2.0, 4.0, -1.5]) + rows("one seed", [9.0]) + rows("STL", [None, None, None]))
    out = paired.to_baseline(table, "d")
    assert set(out) == {"steady", "noisy", "one seed"}  # EW itself and metric-less rows have none
    assert out["steady"]["diffs"] == pytest.approx([1.0, 1.1, 1.0])  # paired by seed, not by mean
    assert out["steady"]["mean"] == pytest.approx(31 / 30) and out["steady"]["beyond_noise"]
    assert out["noisy"]["diffs"] == pytest.approx([1.0, -1.0, 0.5]) and not out["noisy"]["beyond_noise"]
    assert out["one seed"]["diffs"] == [8.0] and not out["one seed"]["beyond_noise"]
    assert paired.cell(out["steady"]).endswith("(3 seeds) ✓") and paired.cell(out["one seed"]) == "+8.00 (1 seed)"
    assert paired.to_baseline(rows("PCGrad", [1.0]), "d") == {}
    lost = paired.to_baseline(table + rows("lost", [0.0, 4.1, -3.0]), "d")
    summary = [{"method": label, "delta_m_vs_ew": entry} for label, entry in lost.items()] + [{"method": "EW"}]
    assert paired.verdict(summary) == ("Better than EW beyond seed noise: steady; worse: lost; "
                                                   "within noise: noisy.")
    assert paired.verdict([{"method": "one seed", "delta_m_vs_ew": out["one seed"]}]) == "One seed: no claim against EW."
    assert paired.verdict([{"method": "EW"}]) == ""  # the baseline alone: nothing to say


@pytest.mark.slow
def test_bench_qm9_steps_sets_each_case_against_ew_and_the_bound(tmp_path):
    from mtlrec.pipeline import config
    from mtlrec.pipeline.benchmarks import qm9_steps

    shared_file("qm9/qm9.parquet")
    paths = [f"paths.work_dir={tmp_path}", f"paths.reports={tmp_path / 'reports'}"]
    overrides = [*paths, "data.rows.train=64", "data.rows.valid=16", "trainer.batch_size=16"]
    cases = [qm9_steps.CASES[0], ("pcgrad", qm9_steps.SHARED, ["method=pcgrad"]),
             ("pcgrad", qm9_steps.REP, ["method=pcgrad", "grad_on=representation"])]
    result = qm9_steps.run(config.load(paths), overrides, warmup=1, steps=2, cases=cases)
    assert [r["time_ratio"] for r in result["runs"]][0] == 1.0 and result["bound"] == pytest.approx(23 / 3)
    table = (tmp_path / "reports" / "qm9_steps.md").read_text()
    assert "of the estimate 7.67 |" in table and "| pcgrad | representation |" in table and "goal ≤ 3:" in table


def test_a_paper_table_stopped_half_way_reports_the_runs_it_finished():
    from mtlrec.pipeline.benchmarks import paper_tables

    table = paper_tables.PaperTable(
        name="toy", title="Toy", setting=[], methods=[("STL", []), ("EW", []), ("PCGrad", [])],
        columns=["a", "b"], fmt=".2f", scale=1.0, mean=("mean_auc", "mean AUC", 1.0), paper="")

    def row(method, seed, a, delta):
        return {"method": method, "seed": seed, "tasks": {"a": a, "b": 0.5}, "means": {"mean_auc": (a + 0.5) / 2},
                "delta_m_pct": delta, "samples_per_s": 100.0, "train_s": 1.0}

    rows = [row("STL", 0, 0.7, None), row("EW", 0, 0.8, 2.0), row("STL", 1, 0.7, None)]
    result = {"machine": {"cpus": 2, "torch": "x", "time": "t"}, "setting": [], "seeds": 2, "runs": rows,
              "planned_runs": 6, "summary": paper_tables._summary(table, rows)}
    text = paper_tables.markdown(table, result)
    assert [s["method"] for s in result["summary"]] == ["STL", "EW"]  # PCGrad has not run yet
    assert "**Partial: 3 of 6 runs finished**" in text and "| EW | 0.80 ± 0.00 |" in text
    assert "Partial" not in paper_tables.markdown(table, {**result, "planned_runs": 3})


def test_bench_distributed_counts_what_a_rank_sends_by_hand():
    """HPS, 2 tables of 10 rows × dim 3, 1 dense feature, bottom [4], towers [2] → 1:
    θ = 7·4 + 4 = 32 shared, towers 2 × (4·2 + 2 + 2 + 1) = 26, D = 58, tables 60. Two ranks
    of 4 rows: a ring all-reduce sends 2(N−1)/N = 1× its size; the all-to-all sends half of
    the 4·2·3 pooled lookups, forward and backward = 24."""
    from mtlrec.models.config import model_config
    from mtlrec.models.ranker import MultiTaskRanker
    from mtlrec.pipeline.benchmarks.distributed import volume

    model = MultiTaskRanker(model_config(arch="hps", embedding_dim=3, expert_hidden=[4], tower_hidden=[2]),
                            {"a": 10, "b": 10}, 1, 2)
    v = volume(model, local_batch=4, ranks=2)
    assert (v["shared_params"], v["dense_params"], v["table_params"]) == (32, 58, 60)
    assert v["floats_per_step"] == {"EW, replicated": 118, "gradient-level, replicated": 150,
                                    "EW, DMP": 82, "gradient-level, DMP": 114}

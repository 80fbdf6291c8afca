"""The synthetic AliExpress-schema generator: schema, marginals, learnable ground truth."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from mtlrec.features.synth import GroundTruth, SynthParams, generate

SMALL = dict(days=2, rows_per_day=20_000, cardinalities=(
    1_000_000, 50_000, 5_000, 1_000, 500, 100, 50, 20, 10, 8, 6, 5, 4, 3, 2, 2))


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    paths = generate(SynthParams(**SMALL), folder)
    return paths, pl.concat([pl.read_csv(p) for p in paths])


def test_schema_is_the_aliexpress_layout_plus_country_day_and_tags(logs):
    paths, df = logs
    assert [p.name for p in paths] == ["day=2026-11-01.csv", "day=2026-11-02.csv"]
    expected = (["search_id"] + [f"categorical_{i}" for i in range(1, 17)]
                + [f"numerical_{i}" for i in range(1, 64)]
                + ["click", "conversion", "country", "day", "tags"])
    assert df.columns == expected
    tags = df["tags"].fill_null("").str.split("|").list.eval(pl.element().filter(pl.element() != ""))
    assert tags.list.len().max() <= SynthParams().max_tags and 0 in tags.list.len().to_list()
    assert df["search_id"].is_unique().all()
    assert df["day"].unique().sort().to_list() == ["2026-11-01", "2026-11-02"]


def test_marginals_are_realistic(logs):
    _, df = logs
    ctr, ctcvr = df["click"].mean(), df["conversion"].mean()
    assert 0.03 < ctr < 0.05  # target 4%
    assert 0.04 < ctcvr / ctr < 0.12  # target 8% of clicks convert
    assert (df["conversion"] <= df["click"]).all()  # conversion means click and buy
    nums = df.select(pl.selectors.starts_with("numerical_"))
    assert nums.min().min_horizontal().item() >= 0 and nums.max().max_horizontal().item() <= 1
    assert 0.3 < (nums.to_numpy() == 0).mean() < 0.7  # mostly-zero like the real logs


def test_zipf_cardinalities(logs):
    _, df = logs
    distinct = df["categorical_1"].n_unique()
    assert distinct > 5_000  # a heavy tail from a 10^6-value field
    top = df["categorical_1"].value_counts(sort=True)["count"].to_list()
    assert top[0] > 50 * top[len(top) // 2]  # a few values dominate


def test_deterministic_for_a_seed(tmp_path):
    p = SynthParams(days=1, rows_per_day=500, cardinalities=SMALL["cardinalities"])
    a = generate(p, tmp_path / "a")[0].read_bytes()
    b = generate(p, tmp_path / "b")[0].read_bytes()
    c = generate(SynthParams(**{**p.__dict__, "seed": 7}), tmp_path / "c")[0].read_bytes()
    assert a == b and a != c


def test_ground_truth_is_learnable_and_the_conflict_knob_works():
    rng = np.random.default_rng(0)
    for rho in (1.0, -1.0):
        p = SynthParams(conflict_rho=rho, cardinalities=SMALL["cardinalities"])
        truth = GroundTruth(p)
        d = truth.draw(rng, 50_000, p)
        click = rng.random(50_000) < 1 / (1 + np.exp(-d["ctr_logit"]))
        assert roc_auc_score(click, d["ctr_logit"]) > 0.7
        corr = np.corrcoef(truth.ctr_eff[0], truth.cvr_eff[0])[0, 1]
        assert corr == pytest.approx(rho, abs=1e-6)
    for rho in (-0.9, 0.0, 0.5):  # on the conversion label: CTCVR's effects ≈ click's + CVR's
        p = SynthParams(conflict_rho=rho, conflict_on="ctcvr", cardinalities=SMALL["cardinalities"])
        truth = GroundTruth(p)
        click = np.concatenate([*truth.ctr_eff, truth.w_ctr, truth.tag_ctr])
        cvr = np.concatenate([*truth.cvr_eff, truth.w_cvr, truth.tag_cvr])
        assert np.corrcoef(click, click + cvr)[0, 1] == pytest.approx(rho, abs=0.03)  # drawn: not exact
        assert np.corrcoef(click, cvr)[0, 1] < -0.3  # the purchase given a click opposes the click


def test_intent_mode_pulls_the_labels_apart_while_the_features_effects_agree():
    """conflict_on=intent: the logits' part no feature explains is each row's intent, with
    std intent_sd and correlation ρ between the tasks; the features' effects agree (0.8)."""
    def logits(rho, sd):
        p = SynthParams(conflict_on="intent", conflict_rho=rho, intent_sd=sd, ctr=0.3, cvr=0.3, signal=2.0,
                        cardinalities=SMALL["cardinalities"])  # data=synth_conflict's rates and signal
        truth = GroundTruth(p)
        return truth, truth.draw(np.random.default_rng(5), 100_000, p)
    for rho in (-0.9, 0.0):
        truth, d = logits(rho, 3.0)
        _, quiet = logits(rho, 1e-9)  # the same rows and effects, without the intents
        click_intent, buy_intent = d["ctr_logit"] - quiet["ctr_logit"], d["cvr_logit"] - quiet["cvr_logit"]
        assert np.corrcoef(click_intent, buy_intent)[0, 1] == pytest.approx(rho, abs=0.02)
        assert click_intent.std() == pytest.approx(3.0, rel=0.02)
        effects = [np.concatenate([*truth.ctr_eff, truth.w_ctr]), np.concatenate([*truth.cvr_eff, truth.w_cvr])]
        assert np.corrcoef(*effects)[0, 1] == pytest.approx(0.8, abs=0.05)
        rng = np.random.default_rng(6)
        click, buy = (rng.random((2, 100_000)) < 1 / (1 + np.exp(-np.stack([d["ctr_logit"], d["cvr_logit"]]))))
        label_corr = np.corrcoef(click, buy)[0, 1]
        assert label_corr < -0.1 if rho < 0 else label_corr > 0.05


def test_corrupt_fraction_produces_quarantinable_defects(tmp_path):
    p = SynthParams(days=1, rows_per_day=5_000, corrupt_fraction=0.05,
                    cardinalities=SMALL["cardinalities"])
    df = pl.read_csv(generate(p, tmp_path)[0], infer_schema=False)
    assert (df["numerical_5"] == "abc").sum() > 0
    assert (df["click"] == "2").sum() > 0
    assert ((df["click"] == "0") & (df["conversion"] == "1")).sum() > 0


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="conflict_rho"):
        SynthParams(conflict_rho=2.0)
    with pytest.raises(ValueError, match="16 cardinalities"):
        SynthParams(cardinalities=(10, 10))


def test_a_day_written_from_the_same_parameters_is_kept_and_any_other_is_rewritten(tmp_path):
    p = SynthParams(days=2, rows_per_day=300, cardinalities=SMALL["cardinalities"])
    first = generate(p, tmp_path)
    stamps = [f.stat().st_mtime_ns for f in first]
    more = generate(SynthParams(**{**p.__dict__, "days": 3}), tmp_path)  # one more day
    assert [f.stat().st_mtime_ns for f in more[:2]] == stamps  # kept, not rewritten
    edited = first[0].read_bytes()
    first[0].write_bytes(edited[:-50])  # someone edited a day file: it is written anew
    generate(p, tmp_path)
    assert first[0].read_bytes() == edited
    generate(SynthParams(**{**p.__dict__, "seed": 7}), tmp_path)  # other parameters: rewritten
    assert first[0].read_bytes() != edited and first[1].stat().st_mtime_ns != stamps[1]


def test_conflict_labels_oppose_the_click_and_leave_every_other_column_as_it_was(tmp_path):
    """buy (drawn without the click) follows the CVR effects, so at ρ = −0.9 its logit
    opposes the click's; like follows the click, share the buy; the other columns are
    exactly those written without the extra labels."""
    common = dict(days=1, rows_per_day=40_000, chunk_rows=15_000, conflict_rho=-0.9, format="parquet", tags=50,
                  cardinalities=SMALL["cardinalities"])
    generate(SynthParams(**common), tmp_path / "plain")
    p = SynthParams(**common, conflict_labels=True)
    generate(p, tmp_path / "conflict")
    plain = pl.read_parquet(tmp_path / "plain" / "day=2026-11-01.parquet")
    extra = pl.read_parquet(tmp_path / "conflict" / "day=2026-11-01.parquet")
    assert extra.select(plain.columns).equals(plain)
    assert extra["buy"].mean() == pytest.approx(p.cvr, rel=0.15)
    assert extra["like"].mean() == pytest.approx(p.like_rate, rel=0.15)
    d = GroundTruth(p).draw(np.random.default_rng(0), 50_000, p)
    corr = np.corrcoef([d["ctr_logit"], d["cvr_logit"], d["like_logit"], d["share_logit"]])
    assert corr[0, 1] < -0.8 and corr[0, 2] > 0.7 and corr[1, 3] > 0.7 and corr[2, 3] < -0.5


def test_every_conflict_bench_setting_loads_with_its_knob_where_its_title_says(tmp_path):
    from mtlrec.pipeline import config
    from mtlrec.pipeline.benchmarks.conflict import SCHEDULE, SETTINGS

    for title, _, setting, _, _ in SETTINGS:
        cfg = config.load([*setting, *SCHEDULE, f"paths.work_dir={tmp_path}"])
        mode = "cvr" if title.startswith("control") else "intent"
        assert cfg.synth.conflict_on == mode, title
        assert [label.name for label in cfg.data.labels][:2] == ["click", "buy"], title

"""Ingestion of the real files in ../shared/data (census-income, AliExpress sample)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from helpers import shared_file
from mtlrec.features.ingest import ingest
from mtlrec.pipeline import config


@pytest.fixture(scope="module")
def census(tmp_path_factory):
    shared_file("census-income/census-income.data.gz")
    cfg = config.load(["data=census"])
    out = tmp_path_factory.mktemp("census") / "features"
    return ingest(cfg.data, out, resolved_config=config.to_yaml(cfg))


def test_census_rows_splits_and_labels(census):
    m = census.manifest
    assert m["rows_read"] == 199_523 + 99_762 and m["rows_quarantined"] == 0
    assert m["split_rows"]["test"] == 99_762
    assert abs(m["split_rows"]["valid"] / 199_523 - 0.1) < 0.01  # seeded 10% of the train file
    data = pl.read_parquet(census.data_dir, hive_partitioning=True)
    rates = data.group_by("split").agg(pl.col("income").mean(), pl.col("marital").mean())
    for row in rates.iter_rows(named=True):
        assert 0.05 < row["income"] < 0.08  # ~6.2% earn > 50K
        assert 0.40 < row["marital"] < 0.46  # ~43% never married
    feature_cols = set(data.columns) - {"split", "income", "marital"}
    assert len(feature_cols) == 32 + 7
    assert not {"instance weight", "marital stat"} & feature_cols


def test_census_na_is_a_category_and_question_mark_is_missing(census):
    vocab = pl.read_parquet(census.artifacts_dir / "vocab.parquet")
    hispanic = vocab.filter(pl.col("field") == "hispanic origin")["value"].to_list()
    assert "NA" in hispanic
    assert "?" not in vocab["value"].to_list()
    data = pl.read_parquet(census.data_dir, hive_partitioning=True)
    assert (data["migration code-change in msa"] == 1).sum() > 0  # "?" → the MISSING id


def test_census_stats_fitted_on_train_only(census):
    stats = json.loads((census.artifacts_dir / "numeric_stats.json").read_text())
    assert stats["age"]["rows"] == census.manifest["split_rows"]["train"]
    data = pl.read_parquet(census.data_dir, hive_partitioning=True).filter(pl.col("split") == "train")
    assert abs(data["age"].mean()) < 1e-4 and abs(data["age"].std(ddof=0) - 1) < 1e-3


def test_census_output_is_reused_when_nothing_changed(census):
    again = ingest(config.load(["data=census"]).data, census.path)
    assert again.manifest == census.manifest
    assert (census.path / "config.yaml").read_text().startswith("seed:")


def test_aliexpress_sample_ingests_unchanged(tmp_path):
    shared_file("aliexpress-sample/aliexpress_train_sample.csv")
    out = ingest(config.load(["data=aliexpress"]).data, tmp_path / "ali")
    m = out.manifest
    assert m["rows_read"] == 120 and m["rows_quarantined"] == 0
    assert m["split_rows"]["test"] == 20
    data = pl.read_parquet(out.data_dir, hive_partitioning=True)
    assert data["ctr"].sum() > data["ctcvr"].sum() > 0
    assert data.select(pl.selectors.starts_with("categorical_")).width == 16
    assert data.select(pl.selectors.starts_with("numerical_")).width == 63

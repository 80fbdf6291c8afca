"""Vocabularies (ids, min_count, stability across refits) and the numeric transform,
including property-based tests with hypothesis."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import small_spec
from mtlrec.features import numeric
from mtlrec.features.spec import CategoricalField, NumericField
from mtlrec.features.transform import FeatureTransform
from mtlrec.features.vocab import FIRST_ID, MISSING_ID, OOV_ID, encode, fit_vocabulary, table_size


def _counts(values: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame({"value": values}, schema={"value": pl.String}).group_by("value").agg(
        pl.len().cast(pl.Int64).alias("count")
    )


def _encode(values: list[str | None], field: CategoricalField, vocab: pl.DataFrame) -> list[int]:
    frame = pl.DataFrame({field.name: values}, schema={field.name: pl.String})
    return frame.select(encode(field, vocab))[field.name].to_list()


def test_ids_by_frequency_then_value_with_reserved_oov_and_missing():
    field = CategoricalField(name="c")
    vocab = fit_vocabulary(_counts(["b", "a", "b", "c", "a", "b", None]), field)
    assert vocab.rows() == [("b", 2, 3), ("a", 3, 2), ("c", 4, 1)]
    assert _encode(["a", "b", "zzz", None], field, vocab) == [3, 2, OOV_ID, MISSING_ID]
    assert table_size(vocab, field) == 5


def test_min_count_and_max_size():
    field = CategoricalField(name="c", min_count=2, max_size=1)
    vocab = fit_vocabulary(_counts(["x", "x", "x", "y", "y", "z"]), field)
    assert vocab["value"].to_list() == ["x"]  # y passes min_count but max_size=1
    assert _encode(["y", "z"], field, vocab) == [OOV_ID, OOV_ID]


def test_refit_keeps_ids_and_appends_new_values():
    field = CategoricalField(name="c")
    first = fit_vocabulary(_counts(["a", "a", "b"]), field)
    second = fit_vocabulary(_counts(["c", "c", "c", "b", "d"]), field, previous=first)
    ids = dict(zip(second["value"], second["id"]))
    assert ids["a"] == 2 and ids["b"] == 3  # kept, even though "a" is gone now
    assert ids["c"] == 4 and ids["d"] == 5  # appended, most frequent first
    assert dict(zip(second["value"], second["count"]))["a"] == 0


def test_hashing_maps_into_buckets_deterministically():
    field = CategoricalField(name="c", hash_buckets=10)
    vocab = fit_vocabulary(_counts([]), field)
    ids = _encode([f"v{i}" for i in range(200)] + [None], field, vocab)
    assert all(FIRST_ID <= i < FIRST_ID + 10 for i in ids[:-1]) and ids[-1] == MISSING_ID
    assert ids == _encode([f"v{i}" for i in range(200)] + [None], field, vocab)
    assert len(set(ids[:-1])) == 10
    assert table_size(vocab, field) == 12


words = st.lists(st.text(alphabet="abcdef", min_size=1, max_size=3), max_size=60)


@settings(max_examples=60, deadline=None)
@given(words, words, words, st.integers(1, 3))
def test_vocabulary_ids_are_stable_across_any_refits(a, b, c, min_count):
    field = CategoricalField(name="c", min_count=min_count)
    v1 = fit_vocabulary(_counts(a), field)
    v2 = fit_vocabulary(_counts(b), field, previous=v1)
    v3 = fit_vocabulary(_counts(c), field, previous=v2)
    for old, new in ((v1, v2), (v2, v3)):
        old_ids = dict(zip(old["value"], old["id"]))
        new_ids = dict(zip(new["value"], new["id"]))
        assert all(new_ids[v] == i for v, i in old_ids.items())  # nothing renumbered
    ids = v3["id"].to_list()
    assert ids == list(range(FIRST_ID, FIRST_ID + len(ids)))  # dense, no reuse
    assert v3["value"].n_unique() == v3.height


def _reference_numeric(x: np.ndarray, f: NumericField) -> np.ndarray:
    """numpy reference of clip → signed log1p → fill → standardise, fitted on x itself;
    inputs and clip bounds are float32 values (as ingest parses them), arithmetic float64."""
    y = x.astype(np.float32).astype(np.float64)
    if f.fill == "zero":
        y = np.where(np.isnan(y), 0.0, y)
    if f.clip is not None:
        y = np.clip(y, *np.float32(f.clip).astype(np.float64))
    if f.log1p:
        y = np.sign(y) * np.log1p(np.abs(y))
    mean = np.nanmean(y) if np.any(~np.isnan(y)) else 0.0
    std = np.nanstd(y) if np.any(~np.isnan(y)) else 1.0
    std = std if std >= 1e-12 else 1.0
    y = np.where(np.isnan(y), mean, y)
    return ((y - mean) / std) if f.standardize else y


finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.one_of(finite, st.none()), min_size=1, max_size=50),
    st.booleans(), st.booleans(), st.sampled_from(["mean", "zero"]),
    st.one_of(st.none(), st.tuples(st.floats(-100, 0), st.floats(0, 100))),
)
def test_numeric_transform_matches_numpy_reference(values, log1p, standardize, fill, clip):
    f = NumericField(name="x", log1p=log1p, standardize=standardize, fill=fill, clip=clip)
    frame = pl.DataFrame({"x": values}, schema={"x": pl.Float64})
    row = frame.select(numeric.stats_exprs([f])).row(0, named=True)
    stats = numeric.collect_stats(row, [f])["x"]
    got = frame.select(numeric.encode(f, stats))["x"].to_numpy()
    arr = np.array([np.nan if v is None else v for v in values])
    want = _reference_numeric(arr, f)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-4, atol=1e-4)
    if standardize and len({v for v in values if v is not None}) > 1:
        assert abs(float(np.mean(got[~np.isnan(arr)]))) < 1e-3 or fill == "zero"


def test_transform_save_load_roundtrip_and_numpy_inputs(tmp_path):
    spec = small_spec("unused.csv")
    typed = pl.DataFrame({
        "cat_a": ["x", "y", "x", None], "cat_b": ["p", "p", "q", "r"],
        "num_x": [1.0, 2.0, None, 4.0], "num_y": [0.0, 10.0, 100.0, 1000.0],
    })
    vocabularies = {
        "cat_a": fit_vocabulary(typed.group_by("cat_a").len("count").rename({"cat_a": "value"}),
                                spec.categorical[0]),
        "cat_b": fit_vocabulary(typed.group_by("cat_b").len("count").rename({"cat_b": "value"}),
                                spec.categorical[1]),
    }
    stats = numeric.collect_stats(typed.select(numeric.stats_exprs(spec.numeric)).row(0, named=True),
                                  spec.numeric)
    t = FeatureTransform(spec, vocabularies, stats)
    t.save(tmp_path / "art")
    loaded = FeatureTransform.load(tmp_path / "art")
    inputs, inputs0 = loaded.to_numpy(typed), t.to_numpy(typed)
    ids, dense, ids0, dense0 = inputs.ids, inputs.dense, inputs0.ids, inputs0.dense
    assert inputs.lengths is None  # no multi-valued field: the model has no lengths input
    assert ids.dtype == np.int64 and dense.dtype == np.float32
    assert ids.shape == (4, 2) and dense.shape == (4, 2)
    np.testing.assert_array_equal(ids, ids0)
    np.testing.assert_array_equal(dense, dense0)
    assert ids[:, 0].tolist() == [2, 3, 2, MISSING_ID]
    assert dense[2, 0] == pytest.approx(0.0)  # missing → mean → 0 after standardising
    want_y = np.log1p([0.0, 10.0, 100.0, 1000.0])
    np.testing.assert_allclose(dense[:, 1], (want_y - want_y.mean()) / want_y.std(), rtol=1e-5)
    assert loaded.table_sizes == {"cat_a": 4, "cat_b": 5}
    assert math.isclose(loaded.numeric_stats["num_x"]["mean"], 7 / 3)

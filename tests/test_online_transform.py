"""The served request's numpy transform (features/online.py) against the polars transform
training uses (FeatureTransform.to_numpy), on the same rows: ids exactly equal, dense
values equal as float32, on every field kind: known / unknown / missing categories,
hashed fields, multi-valued lists (missing, empty, longer than max_len), numeric fields
with each fill, clip, log1p, standardised or not, missing values."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import small_spec
from mtlrec.features import numeric
from mtlrec.features.online import OnlineTransform, RawBatch
from mtlrec.features.transform import FeatureTransform
from mtlrec.features.vocab import MISSING_ID, OOV_ID, fit_vocabulary

CATEGORIES = ["a", "b", "c", "d", "é", "10", ""]  # "10": an id as text; "": a value like any other


def _spec():
    return small_spec(
        "unused.csv",
        categorical=[{"name": "plain", "min_count": 2}, {"name": "hashed", "hash_buckets": 7},
                     {"name": "tags", "multi": True, "max_len": 3},
                     {"name": "htags", "multi": True, "max_len": 2, "hash_buckets": 5}],
        numeric=[{"name": "mean_fill"}, {"name": "log", "log1p": True},
                 {"name": "clipped", "clip": [-1.5, 2.1], "fill": "zero"},
                 {"name": "raw", "standardize": False, "fill": 3.25},
                 {"name": "both", "clip": [0.0, 1e6], "log1p": True, "fill": 7.0}],
    )


def _transform(train: pl.DataFrame) -> FeatureTransform:
    """Fitted on `train` as ingest fits (value counts of single values and list elements)."""
    spec = _spec()
    vocabularies = {}
    for f in spec.categorical:
        column = train[f.name].explode() if f.multi else train[f.name]
        counts = column.value_counts(name="count").rename({f.name: "value"})
        vocabularies[f.name] = fit_vocabulary(counts, f)
    stats = numeric.collect_stats(train.select(numeric.stats_exprs(spec.numeric)).row(0, named=True),
                                  spec.numeric)
    return FeatureTransform(spec, vocabularies, stats)


category = st.one_of(st.none(), st.sampled_from(CATEGORIES), st.text(max_size=3))
tag_list = st.one_of(st.none(), st.lists(st.sampled_from(CATEGORIES[:5]) | st.text(min_size=1, max_size=2),
                                         max_size=5))
number = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False, width=64),
                   st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.1, -1.5]))
row = st.fixed_dictionaries({
    "plain": category, "hashed": category, "tags": tag_list, "htags": tag_list,
    "mean_fill": number, "log": number, "clipped": number, "raw": number, "both": number,
})


def _frame(rows: list[dict], spec) -> pl.DataFrame:
    schema = ({f.name: pl.List(pl.String) if f.multi else pl.String for f in spec.categorical}
              | {f.name: pl.Float64 for f in spec.numeric})
    return pl.DataFrame(rows, schema=schema)


def _batch(rows: list[dict], spec) -> RawBatch:
    numeric_values = [[np.nan if r[f.name] is None else r[f.name] for f in spec.numeric] for r in rows]
    return RawBatch({f.name: [r[f.name] for r in rows] for f in spec.categorical},
                    np.array(numeric_values, dtype=np.float64).reshape(len(rows), len(spec.numeric)))


@settings(max_examples=60, deadline=None)
@given(st.lists(row, min_size=3, max_size=40), st.lists(row, min_size=1, max_size=25))
def test_online_transform_equals_the_polars_transform(train_rows, served_rows):
    spec = _spec()
    transform = _transform(_frame(train_rows, spec))
    want = transform.to_numpy(_frame(served_rows, spec))
    got = OnlineTransform(transform).encode(_batch(served_rows, spec))
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    assert got.ids.dtype == want.ids.dtype == np.int64 and got.dense.dtype == np.float32
    # numpy's and polars' log1p may differ by one ulp, which (x − mean) can turn into 2e-16 vs 0
    np.testing.assert_allclose(got.dense, want.dense, rtol=2e-7, atol=1e-12)


def test_known_answers_for_missing_unknown_and_lists():
    spec = _spec()
    train = _frame([{"plain": "a", "hashed": "x", "tags": ["t", "u"], "htags": None, "mean_fill": 1.0,
                     "log": 0.0, "clipped": 1.0, "raw": 2.0, "both": 3.0}] * 2, spec)
    online = OnlineTransform(_transform(train))
    served = [{"plain": "a", "hashed": None, "tags": ["u", "zz", "t", "t"], "htags": [], "mean_fill": None,
               "log": None, "clipped": 9.0, "raw": None, "both": None},
              {"plain": "new", "hashed": "x", "tags": None, "htags": None, "mean_fill": 1.0,
               "log": 0.0, "clipped": None, "raw": 1.5, "both": -4.0}]
    got = online.encode(_batch(served, spec))
    plain, hashed, tags = got.ids[:, 0], got.ids[:, 1], got.ids[:, 2:5]
    assert plain.tolist() == [2, OOV_ID] and hashed[0] == MISSING_ID
    # "t" and "u" were counted twice each: ids 2, 3 in (count, value) order; at most 3 kept
    assert tags.tolist() == [[3, OOV_ID, 2], [MISSING_ID, 0, 0]]
    assert got.lengths.tolist() == [[3, 1], [1, 1]]  # an empty or missing list is [MISSING]
    # clipped: trained on 1.0 only (mean 1, std 1); 9 is clipped to 2.1, missing is filled with 0
    assert got.dense[0, 2] == np.float32(numeric.round_float32(2.1) - 1.0) and got.dense[1, 2] == -1.0
    assert got.dense[0, 3] == 3.25 and got.dense[1, 3] == 1.5  # constant fill, not standardised

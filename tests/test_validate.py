"""The cheap `bad` flag must agree exactly with the detailed problems (reasons)."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import HEADER, small_spec
from mtlrec.features import validate
from mtlrec.features.sources import EXTRA_COL, FILE_COL, LINE_COL

values = {
    "sid": st.sampled_from(["1", "2", "3", None]),
    "cat_a": st.sampled_from(["a", "b", "caf\ufffd", None]),
    "cat_b": st.sampled_from(["x", None]),
    "num_x": st.sampled_from(["1.5", "-2", "abc", "nan", "inf", "1e999", "1e39", "", None]),
    "num_y": st.sampled_from(["0", "3.25", "x1", "-inf", None]),
    "click": st.sampled_from(["0", "1", "2", "-1", "1.0", None]),
    "conversion": st.sampled_from(["0", "1", "yes", None]),
}
rows = st.lists(st.fixed_dictionaries(values), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(rows, st.sampled_from(["reject", "missing"]), st.booleans())
def test_bad_flag_equals_having_a_reason(data, nonfinite, check_utf8):
    spec = small_spec("x.csv", numeric=[{"name": "num_x", "nonfinite": nonfinite},
                                        {"name": "num_y", "required": True}])
    frame = pl.DataFrame(data, schema={c: pl.String for c in HEADER}).with_columns(
        pl.lit(None, pl.String).alias(EXTRA_COL), pl.lit(0).alias(FILE_COL),
        pl.int_range(pl.len()).alias(LINE_COL),
        (~pl.col("sid").is_first_distinct()).alias(validate.DUP_COL),
    )
    checks = validate.problems(spec, [], check_utf8=check_utf8)
    out = validate.with_parsed_numbers(frame.lazy(), spec).select(
        validate.bad_flag(spec, checks).alias("bad"), validate.reason(checks).alias("reason"),
    ).collect()
    has_reason = out["reason"].is_not_null() & (out["reason"] != "")
    assert out["bad"].null_count() == 0
    assert out["bad"].to_list() == has_reason.to_list()

"""Which split (train / valid / test) each good row belongs to, as one polars expression.

Rows from a configured `valid` or `test` source keep that role. Rows of the `train`
source are divided by the configured method (see `spec.Split`).
"""

from __future__ import annotations

import polars as pl

from mtlrec.features.spec import DataSpec

ROLE_COL = "__role"  # the source a row came from: train, valid or test
SEQ_COL = "__seq"  # position of the row across all input files (train files first)
SPLIT_COL = "split"
_BUCKETS = 1_000_000


def split_expr(
    spec: DataSpec, *, file_names: pl.Expr, n_train_rows: int, days: list[str], has_test_source: bool
) -> pl.Expr:
    """Expression giving each row's split name.

    file_names: expression mapping a row to its file's base name (random split hashes
    (file name, line) so adding or reordering files never moves an existing row).
    n_train_rows: rows read from the train source (tail split positions).
    days: distinct days of the good rows (day split).
    """
    s = spec.split
    test_frac = 0.0 if has_test_source else s.test_fraction
    role = pl.col(ROLE_COL)
    if s.method == "random":
        u = pl.struct(file_names, pl.col("__line")).hash(seed=s.seed) % _BUCKETS
        to_test = u < int(test_frac * _BUCKETS)
        to_valid = u < int((test_frac + s.valid_fraction) * _BUCKETS)
    elif s.method == "tail":
        pos = pl.col(SEQ_COL)
        to_test = pos >= round(n_train_rows * (1.0 - test_frac))
        to_valid = pos >= round(n_train_rows * (1.0 - test_frac - s.valid_fraction))
    else:
        ordered = sorted(days)
        n_test = 0 if has_test_source else s.test_days
        test_days = ordered[len(ordered) - n_test:] if n_test else []
        valid_days = ordered[max(0, len(ordered) - n_test - s.valid_days): len(ordered) - n_test]
        day = pl.col(spec.day).cast(pl.String)
        to_test = day.is_in(test_days)
        to_valid = day.is_in(valid_days)
    from_train = (
        pl.when(to_test).then(pl.lit("test")).when(to_valid).then(pl.lit("valid")).otherwise(pl.lit("train"))
    )
    return pl.when(role == "train").then(from_train).otherwise(role).alias(SPLIT_COL)

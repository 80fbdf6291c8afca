"""Vocabularies for categorical fields, stable across refits.

Ids are reserved: 0 = out-of-vocabulary, 1 = missing, known values from 2 on. A refit
never renumbers: every value of the previous vocabulary keeps its id (even when it is
no longer seen), new values are appended after the largest id, most frequent first.
Retraining warm-starts embedding tables from the champion and relies on this.
"""

from __future__ import annotations

import polars as pl

from mtlrec.features.spec import CategoricalField

OOV_ID = 0
MISSING_ID = 1
FIRST_ID = 2

VOCAB_SCHEMA = {"value": pl.String, "id": pl.Int32, "count": pl.Int64}
VOCAB_COLUMNS = list(VOCAB_SCHEMA)


def empty_vocabulary() -> pl.DataFrame:
    return pl.DataFrame(schema=VOCAB_SCHEMA)


def fit_vocabulary(
    counts: pl.DataFrame, field: CategoricalField, previous: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Vocabulary (value, id, count) from training-split value counts.

    `counts` has columns value, count (nulls are the MISSING id, never a vocabulary
    entry). Values rarer than `min_count` stay out (they map to OOV); `max_size` caps
    the total number of known values, previous ones included.
    """
    previous = empty_vocabulary() if previous is None else previous.select(VOCAB_COLUMNS)
    seen = (
        counts.lazy()
        .filter(pl.col("value").is_not_null())
        .select(pl.col("value").cast(pl.String), pl.col("count").cast(pl.Int64))
    )
    kept = (
        previous.lazy()
        .drop("count")
        .join(seen, on="value", how="left")
        .with_columns(pl.col("count").fill_null(0))
    )
    room = None if field.max_size is None else max(0, field.max_size - previous.height)
    new = (
        seen.filter(pl.col("count") >= field.min_count)
        .join(previous.lazy(), on="value", how="anti")
        .sort(["count", "value"], descending=[True, False])
    )
    if room is not None:
        new = new.head(room)
    next_id = FIRST_ID if previous.is_empty() else int(previous["id"].max()) + 1
    new = new.with_columns((pl.int_range(pl.len(), dtype=pl.Int32) + next_id).alias("id"))
    return pl.concat([kept.select(VOCAB_COLUMNS), new.select(VOCAB_COLUMNS)]).sort("id").collect()


def table_size(vocab: pl.DataFrame, field: CategoricalField) -> int:
    """Number of embedding rows the field needs (reserved ids included)."""
    if field.hash_buckets is not None:
        return FIRST_ID + field.hash_buckets
    return FIRST_ID if vocab.is_empty() else int(vocab["id"].max()) + 1


def encode(field: CategoricalField, vocab: pl.DataFrame) -> pl.Expr:
    """Expression: the field's raw string → its Int32 id; a multi field's list of strings
    → the list of its first `max_len` elements' ids ([MISSING_ID] for no list or an empty one).
    """
    col = pl.col(field.name)
    if not field.multi:
        return _encode_value(col, field, vocab).alias(field.name)
    ids = elements(field).list.eval(_encode_value(pl.element(), field, vocab))
    missing = pl.lit([MISSING_ID], pl.List(pl.Int32))
    return pl.when(col.is_null() | (col.list.len() == 0)).then(missing).otherwise(ids).alias(field.name)


def elements(field: CategoricalField) -> pl.Expr:
    """A multi field's kept elements: the first `max_len` (what the vocabulary counts)."""
    return pl.col(field.name).list.head(field.max_len)


def _encode_value(value: pl.Expr, field: CategoricalField, vocab: pl.DataFrame) -> pl.Expr:
    """Ids are dense from FIRST_ID in id order (refits only append), so a value's id is
    FIRST_ID + its position, which a cast to an Enum of the vocabulary computes fast;
    values outside it become null → OOV."""
    if field.hash_buckets is not None:
        known = (value.hash(seed=0) % field.hash_buckets).cast(pl.Int32) + FIRST_ID
    else:
        ordered = vocab.sort("id")
        if not ordered["id"].equals(pl.int_range(FIRST_ID, FIRST_ID + ordered.height, dtype=pl.Int32,
                                                 eager=True).alias("id")):
            raise ValueError(f"vocabulary of '{field.name}' is not dense from id {FIRST_ID}")
        position = value.cast(pl.Enum(ordered["value"]), strict=False).to_physical()
        known = (position.cast(pl.Int32) + FIRST_ID).fill_null(OOV_ID)
    return pl.when(value.is_null()).then(pl.lit(MISSING_ID, pl.Int32)).otherwise(known)

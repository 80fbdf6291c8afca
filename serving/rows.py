"""Raw rows from a client (JSON objects, or a Parquet batch) → the typed frame the feature
transform encodes: categorical fields as strings, numeric fields as floats.

The contract, per field of the feature spec: a categorical value is a string or an
integer (integers are read as their decimal text, as ingest reads a CSV cell); a
numeric value is a number; null means "missing" (the same missing id / fill as in
training). An absent field, a value of another type or a non-finite number the spec
rejects is a `RowError` naming the row and the field: it is almost always a client bug
(a renamed field would otherwise score every row as "missing"). Unknown category values
are not errors: they encode to the OOV id and are counted. Keys the spec does not use
(an id, labels) are ignored.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from mtlrec.features.transform import FeatureTransform

_CATEGORICAL_TYPES = frozenset({str, int, type(None)})  # bool is not int here (see _kind)
_NUMERIC_TYPES = frozenset({int, float, type(None)})
_INTEGER_DTYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32,
                   pl.UInt64)


class RowError(ValueError):
    """A row the model cannot score; `row` is 0-based within the request or input."""

    def __init__(self, row: int, field: str | None, message: str) -> None:
        where = f"row {row}" + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")
        self.row, self.field = row, field


def schema(transform: FeatureTransform) -> dict[str, pl.DataType]:
    """The typed frame's columns, in the transform's field order."""
    return ({f: pl.String for f in transform.categorical_names}
            | {f: pl.Float64 for f in transform.numeric_names})


def from_json(rows: object, transform: FeatureTransform) -> pl.DataFrame:
    """A parsed JSON list of row objects → typed frame; raises RowError."""
    if not isinstance(rows, list):
        raise RowError(0, None, f"expected a list of row objects, got {type(rows).__name__}")
    needed = schema(transform)
    keys = needed.keys()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RowError(i, None, f"expected an object of field values, got {type(row).__name__}")
        if not keys <= row.keys():
            missing = [k for k in keys if k not in row]
            raise RowError(i, missing[0], f"missing field ({len(missing)} missing: {missing[:5]})")
    for name, dtype in needed.items():
        allowed = _CATEGORICAL_TYPES if dtype == pl.String else _NUMERIC_TYPES
        if not {type(row[name]) for row in rows} <= allowed:
            i = next(i for i, row in enumerate(rows) if type(row[name]) not in allowed)
            want = "a string or an integer" if dtype == pl.String else "a number"
            raise RowError(i, name, f"expected {want} or null, got {_kind(rows[i][name])}")
    frame = pl.from_dicts(rows, schema=needed) if rows else pl.DataFrame(schema=needed)
    return _check_finite(frame, transform, 0)


def from_frame(frame: pl.DataFrame, transform: FeatureTransform, first_row: int) -> pl.DataFrame:
    """A batch of an input table (e.g. Parquet) → typed frame; raises RowError.

    first_row: the batch's offset in the whole input, so errors name the input's row.
    """
    needed = schema(transform)
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise RowError(first_row, absent[0], f"missing column ({len(absent)} missing: {absent[:5]})")
    exprs = []
    for name, dtype in needed.items():
        have = frame.schema[name]
        ok = (have in (pl.String, pl.Categorical, pl.Null) or have in _INTEGER_DTYPES) \
            if dtype == pl.String else (have.is_numeric() or have == pl.Null)
        if not ok:
            want = "string or integer" if dtype == pl.String else "numeric"
            raise RowError(first_row, name, f"column type {have} is not {want}")
        exprs.append(pl.col(name).cast(dtype))
    return _check_finite(frame.select(exprs), transform, first_row)


def _check_finite(frame: pl.DataFrame, transform: FeatureTransform, first_row: int) -> pl.DataFrame:
    """NaN/inf: an error for fields that reject them (as ingest does), missing otherwise."""
    names = transform.numeric_names
    if not names or frame.is_empty():
        return frame
    values = frame.select(pl.col(names).fill_null(0.0)).to_numpy()
    rows, cols = np.nonzero(~np.isfinite(values))  # row-major: the first bad row first
    if not len(rows):
        return frame
    rejecting = {f.name for f in transform.spec.numeric if f.nonfinite == "reject"}
    for r, c in zip(rows, cols):
        if names[c] in rejecting:
            raise RowError(first_row + int(r), names[c], f"non-finite number {values[r, c]}")
    lenient = sorted({names[c] for c in cols})
    return frame.with_columns(pl.when(pl.col(n).is_finite()).then(pl.col(n)).alias(n) for n in lenient)


def _kind(value: object) -> str:
    return {bool: "a boolean", list: "a list", dict: "an object", float: "a fractional number",
            str: "a string"}.get(type(value), type(value).__name__)

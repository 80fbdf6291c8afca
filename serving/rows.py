"""Raw rows from a client (JSON objects, or a Parquet batch) → checked, typed values the
feature transform encodes: categorical fields as strings, numeric fields as floats.

The contract, per field of the feature spec: a categorical value is a string or a
64-bit integer (integers are read as their decimal text, as ingest reads a CSV cell); a
multi-valued field's value is a JSON list of such values or one string of them joined by
the field's separator (an empty element is an error, as in ingest); a numeric value is a
number within float64's range; null means "missing" (the same missing id / fill as in
training). An absent field, a value of another type, an integer
out of range, a string that is not valid Unicode (JSON's \\u escapes allow lone
surrogates, which UTF-8 cannot hold) or a non-finite number the spec rejects is a
`RowError` naming the row and the field: it is almost always a client bug (a renamed
field would otherwise score every row as "missing"). So is a row whose score is not
finite (`check_scores`): a number so far outside the training data that the model's
float32 input overflows. Unknown category values are not errors: they encode to the OOV
id and are counted. Keys the spec does not use (an id, labels) are ignored, whatever
they hold. Error messages quote a value in ASCII, cut at 200 characters.

A request's rows become a `RawBatch` of columns (features/online.py), type-checked
column by column on the set of Python types present, with no per-value Python beyond
reading the values out of the row objects. A Parquet batch (`from_frame`, batch scoring)
stays a polars frame: there polars' per-call cost is spread over many rows.
"""

from __future__ import annotations

import itertools
import operator
import sys
from collections.abc import Callable

import numpy as np
import polars as pl

from mtlrec.features.online import RawBatch
from mtlrec.features.spec import CategoricalField
from mtlrec.features.transform import FeatureTransform, ModelInputs
from mtlrec.features.validate import split_elements

_CATEGORICAL_TYPES = frozenset({str, int, type(None)})  # bool is not int here (see _kind)
NUMERIC_TYPES = frozenset({int, float, type(None)})
_MULTI_TYPES = frozenset({list, str, type(None)})
_CATEGORICAL_INTEGERS = (-2**63, 2**63 - 1, "the 64-bit range (send an id this large as a string)")
_NUMERIC_INTEGERS = (-int(sys.float_info.max), int(sys.float_info.max), "the float64 range")
_SHOWN = 200  # characters of a value an error message quotes
_INTEGER_DTYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32,
                   pl.UInt64)


class RowError(ValueError):
    """A row the model cannot score; `row` is 0-based within the request or input."""

    def __init__(self, row: int, field: str | None, message: str) -> None:
        where = f"row {row}" + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")
        self.row, self.field, self.message = row, field, message


def schema(transform: FeatureTransform) -> dict[str, pl.DataType]:
    """The typed frame's columns, in the transform's field order."""
    return ({f.name: pl.List(pl.String) if f.multi else pl.String for f in transform.spec.categorical}
            | {f: pl.Float64 for f in transform.numeric_names})


def from_json(rows: object, transform: FeatureTransform) -> RawBatch:
    """A parsed JSON list of row objects → its checked columns; raises RowError.

    The values are read out of the rows by `operator.itemgetter` and the numeric ones
    converted as one matrix, so a valid request runs no Python per row; only a request
    that fails a check is looked at row by row, to name the row."""
    if not isinstance(rows, list):
        raise RowError(0, None, f"expected a list of row objects, got {type(rows).__name__}")
    categorical_names = transform.categorical_names
    numeric_names = transform.numeric_names
    try:
        categorical_rows = list(map(_getter(categorical_names), rows))
        numeric_rows = list(map(_getter(numeric_names), rows))
    except (KeyError, TypeError):  # a row that is not an object, or lacks a field
        _name_bad_row(rows, [*categorical_names, *numeric_names])
        raise
    categorical = {}
    columns = zip(*categorical_rows) if rows else ([] for _ in categorical_names)
    for field, values in zip(transform.spec.categorical, columns):
        values = list(values)
        if field.multi:
            check_types(values, field.name, _MULTI_TYPES, "a list, a string")
            values = [elements(v, field, i) for i, v in enumerate(values)]
        else:
            check_types(values, field.name, _CATEGORICAL_TYPES, "a string or an integer")
            values = category_text(values, field.name)
        categorical[field.name] = values
    return check_finite(RawBatch(categorical, _numeric_matrix(numeric_rows, numeric_names)), transform, 0)


def _getter(names: list[str]) -> Callable[[dict], tuple]:
    """row → the tuple of its values of `names` (itemgetter returns a bare value for one name)."""
    if len(names) == 1:
        return lambda row: (row[names[0]],)
    return operator.itemgetter(*names) if names else lambda row: ()


def _name_bad_row(rows: list, names: list[str]) -> None:
    """Raise RowError for the first row that is not an object or lacks a field."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RowError(i, None, f"expected an object of field values, got {type(row).__name__}")
        missing = [k for k in names if k not in row]
        if missing:
            raise RowError(i, missing[0], f"missing field ({len(missing)} missing: {missing[:5]})")


def _numeric_matrix(rows: list[tuple], names: list[str]) -> np.ndarray:
    """The numeric fields' values, a tuple per row → float64 [N, D] (null → NaN); raises
    RowError naming the field and row of a value of another type or beyond float64."""
    if rows and set(map(type, itertools.chain.from_iterable(rows))) <= NUMERIC_TYPES:
        try:
            return np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
        except OverflowError:
            pass  # an integer beyond float64: named below
    out = np.empty((len(rows), len(names)))
    for j, (name, values) in enumerate(zip(names, zip(*rows) if rows else [])):
        values = list(values)
        check_types(values, name, NUMERIC_TYPES, "a number")
        out[:, j] = numbers(values, name)
    return out


def check_types(values: list, name: str, allowed: frozenset, want: str) -> None:
    """Every value of the column is of an allowed type (null included); raises RowError
    naming the first that is not."""
    if not set(map(type, values)) <= allowed:
        i = next(i for i, v in enumerate(values) if type(v) not in allowed)
        raise RowError(i, name, f"expected {want} or null, got {kind_of(values[i])}")


def category_text(values: list, name: str) -> list:
    """A categorical column of str / int / None → str / None: an integer is read as its
    decimal text (within 64 bits); a string must be valid Unicode."""
    if int in set(map(type, values)):
        low, high, what = _CATEGORICAL_INTEGERS
        for i, v in enumerate(values):
            if type(v) is int and not low <= v <= high:
                raise RowError(i, name, f"integer {_shown(v)} is outside {what}")
        values = [str(v) if type(v) is int else v for v in values]
    check_text(values, name)
    return values


def check_text(values: list, name: str) -> None:
    """Strings (None skipped) must be valid Unicode: JSON's \\u escapes allow lone
    surrogates, which neither UTF-8 nor a vocabulary built from UTF-8 files can hold."""
    text = "".join([v for v in values if v is not None])
    if text.isascii() or is_utf8(text):
        return
    i = next(i for i, v in enumerate(values) if v is not None and not is_utf8(v))
    raise RowError(i, name, f"string {_shown(values[i])} is not valid Unicode (a lone surrogate)")


def numbers(values: list, name: str) -> np.ndarray:
    """A numeric column of int / float / None → float64, NaN for None; raises RowError for
    an integer beyond float64's range."""
    try:
        return np.array(values, dtype=np.float64)  # None → NaN
    except OverflowError:
        low, high, what = _NUMERIC_INTEGERS
        i = next(i for i, v in enumerate(values) if type(v) is int and not low <= v <= high)
        raise RowError(i, name, f"integer {_shown(values[i])} is outside {what}") from None


def elements(value: object, field: CategoricalField, row: int) -> list[str] | None:
    """A multi-valued field's JSON value → its elements as strings (None: missing)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = value.split(field.separator)
        if "" in parts:
            raise RowError(row, field.name, f"empty element in the list {_shown(value)} "
                           f"(separator {field.separator!r})")
    else:
        bad = [v for v in value if type(v) not in (str, int)]
        if bad:
            raise RowError(row, field.name, f"list elements must be strings or integers, got {kind_of(bad[0])}")
        parts = [str(v) for v in value]
    if not is_utf8("".join(parts)):
        raise RowError(row, field.name, f"string {_shown(value)} is not valid Unicode (a lone surrogate)")
    return parts


def check_finite(batch: RawBatch, transform: FeatureTransform, first_row: int) -> RawBatch:
    """±inf: an error for fields that reject non-finite numbers (as ingest does), missing
    (NaN) otherwise. NaN already means missing."""
    infinite = np.isinf(batch.numeric)
    if not infinite.any():
        return batch
    rows, cols = np.nonzero(infinite)  # row-major: the first bad row first
    names = transform.numeric_names
    rejecting = {f.name for f in transform.spec.numeric if f.nonfinite == "reject"}
    for r, c in zip(rows, cols):
        if names[c] in rejecting:
            raise RowError(first_row + int(r), names[c], f"non-finite number {batch.numeric[r, c]}")
    return RawBatch(batch.categorical, np.where(infinite, np.nan, batch.numeric))


def check_scores(scores: np.ndarray, inputs: ModelInputs, transform: FeatureTransform,
                 raw_value: Callable[[int, str], object], first_row: int) -> None:
    """Scores [N, K] of these rows must be finite: a number far outside the training data
    (1e300 in a standardised field) overflows the model's float32 input and comes out as
    NaN, which JSON cannot carry and a score file must not hold unnoticed. Raises RowError
    naming the first such row and its numeric field of largest encoded magnitude, quoting
    `raw_value(row, field)`."""
    bad = np.flatnonzero(~np.isfinite(scores).all(axis=1))
    if not len(bad):
        return
    r = int(bad[0])
    dense = inputs.dense[r]
    if not dense.size:
        raise RowError(first_row + r, None, "the model's score is not finite")
    field = transform.numeric_names[int(np.argmax(np.nan_to_num(np.abs(dense), nan=np.inf)))]
    raise RowError(first_row + r, field, f"value {_shown(raw_value(r, field))} is too far outside "
                   "the training data: the model's score is not finite")


def from_frame(frame: pl.DataFrame, transform: FeatureTransform, first_row: int) -> pl.DataFrame:
    """A batch of an input table (e.g. Parquet) → typed frame; raises RowError.

    first_row: the batch's offset in the whole input, so errors name the input's row.
    """
    needed = schema(transform)
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise RowError(first_row, absent[0], f"missing column ({len(absent)} missing: {absent[:5]})")
    exprs = []
    multi = {f.name: f for f in transform.spec.multi_fields}
    types = frame.schema  # built once: a polars Schema costs ~0.1 ms to build
    for name, dtype in needed.items():
        have = types[name]
        if name in multi:
            exprs.append(_multi_column(frame, multi[name], first_row))
            continue
        ok = (have in (pl.String, pl.Categorical, pl.Null) or have in _INTEGER_DTYPES) \
            if dtype == pl.String else (have.is_numeric() or have == pl.Null)
        if not ok:
            want = "string or integer" if dtype == pl.String else "numeric"
            raise RowError(first_row, name, f"column type {have} is not {want}")
        exprs.append(pl.col(name).cast(dtype))
    return _check_finite(frame.select(exprs), transform, first_row)


def _multi_column(frame: pl.DataFrame, field: CategoricalField, first_row: int) -> pl.Expr:
    """A multi-valued field's input column (a list column, or joined strings) → List(String)."""
    have = frame.schema[field.name]
    if isinstance(have, pl.List):
        return pl.col(field.name).list.eval(pl.element().cast(pl.String))
    if have == pl.Null:
        return pl.lit(None, pl.List(pl.String)).alias(field.name)
    if have != pl.String:
        raise RowError(first_row, field.name, f"column type {have} is neither a list nor a string")
    values = frame[field.name].cast(pl.String)
    empty = values.str.split(field.separator).list.eval(pl.element() == "").list.any() & (values != "")
    if empty.any():
        r = int(empty.arg_true()[0])
        raise RowError(first_row + r, field.name, f"empty element in the list {_shown(values[r])} "
                       f"(separator {field.separator!r})")
    return split_elements(field)


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


def is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: object) -> str:
    """A value as an error message quotes it: ASCII (a lone surrogate cannot go back in a
    UTF-8 answer) and short (a client may send megabytes)."""
    text = ascii(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}… ({len(text):,} characters)"


def kind_of(value: object) -> str:
    """How an error message names a JSON value's type."""
    return {bool: "a boolean", list: "a list", dict: "an object", float: "a fractional number",
            str: "a string"}.get(type(value), type(value).__name__)

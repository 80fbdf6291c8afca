"""Row-level validation: typed values parsed from the raw strings, and every problem a
row can have, as polars expressions (no Python per row).

A row is bad when any `Problem.condition` holds; bad rows go to quarantine with the
`reason` text (all of the row's problems, each naming its field and value). Conditions
are built never to be null, so `bad` and `~bad` partition the rows exactly: nothing is
dropped by a null in a filter.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mtlrec.features import labels
from mtlrec.features.folder import WEIGHT_COL
from mtlrec.features.sources import EXTRA_COL, FILE_COL, LINE_COL, InputFile
from mtlrec.features.spec import CategoricalField, DataSpec

DUP_COL = "__dup"  # computed over all input rows before validation (ingest)
NUM_PREFIX = "__num:"  # numeric fields parsed once (see `with_parsed_numbers`)
REPLACEMENT_CHAR = "\ufffd"  # what utf8-lossy decoding puts in place of invalid bytes
MAX_ECHO = 200  # characters of a value shown in a reason (the quarantine keeps it whole)


@dataclass(frozen=True)
class Problem:
    kind: str  # short category, counted in the manifest
    condition: pl.Expr  # True where the row has the problem; never null
    message: pl.Expr  # names the field and shows the offending value


def _quoted(col: str) -> pl.Expr:
    """The value in quotes, cut at MAX_ECHO characters: a stray quote or a runaway field
    can make one value megabytes long."""
    value = pl.col(col)
    cut = pl.when(value.str.len_chars() > MAX_ECHO).then(
        pl.concat_str(value.str.slice(0, MAX_ECHO), pl.lit("…"))).otherwise(value)
    return pl.format("'{}'", cut)


def _number(col: str) -> pl.Expr:
    return pl.col(NUM_PREFIX + col)


def with_parsed_numbers(lf: pl.LazyFrame, spec: DataSpec) -> pl.LazyFrame:
    """Parse every numeric field once; the checks and the typed values read the result.

    Values are rounded to float32, the precision of the model inputs; serving rounds the
    same way (features.numeric), so training and serving encode identical numbers.
    """
    return lf.with_columns(
        pl.col(f.name).cast(pl.Float64, strict=False).cast(pl.Float32).alias(NUM_PREFIX + f.name)
        for f in spec.numeric
    )


def split_elements(field: CategoricalField) -> pl.Expr:
    """A multi field's string → its list of elements (null for a missing or empty string)."""
    raw = pl.col(field.name)
    return pl.when(raw.is_null() | (raw == "")).then(None).otherwise(
        raw.str.split(field.separator)).alias(field.name)


def typed_columns(spec: DataSpec) -> list[pl.Expr]:
    """Typed values of a raw row: categorical strings, numeric floats, task labels
    (`labels.typed`: null where a task skips the row), the sample weight as WEIGHT_COL.

    Non-finite numbers become missing when the field allows it (`nonfinite: missing`);
    rows with problems get some nulls here, which is harmless: they are quarantined.
    """
    exprs: list[pl.Expr] = [split_elements(f) if f.multi else pl.col(f.name) for f in spec.categorical]
    for f in spec.numeric:
        x = _number(f.name)
        if f.nonfinite == "missing":
            x = pl.when(x.is_finite()).then(x).otherwise(None)
        exprs.append(x.alias(f.name))
    exprs += labels.typed(spec) + labels.typed_weight(spec, WEIGHT_COL)
    for c in (spec.id, spec.group, spec.day):
        if c is not None:
            exprs.append(pl.col(c))
    return exprs


def problems(spec: DataSpec, files: Iterable[InputFile], check_utf8: bool = False) -> list[Problem]:
    """Every check, in the order its message appears in `reason`.

    check_utf8: look for U+FFFD, which lossy decoding puts in place of invalid bytes
    (only needed when a file failed strict UTF-8 decoding).
    """
    out = _file_problems(spec, files) + [
        Problem(
            "blank line",
            pl.all_horizontal(pl.col(c).is_null() for c in spec.expected_columns),
            pl.lit("blank line"),
        ),
        Problem(
            "too many fields",
            pl.col(EXTRA_COL).is_not_null(),
            pl.format("more fields than the {} columns", pl.lit(len(spec.expected_columns))),
        ),
    ]
    out += _string_problems(spec, check_utf8)
    out += _numeric_problems(spec)
    out += _label_problems(spec)
    if spec.checks.unique_id:
        out.append(Problem(
            "duplicate id",
            pl.col(spec.id).is_not_null() & pl.col(DUP_COL),
            pl.format("{}: duplicate id {}", pl.lit(spec.id), _quoted(spec.id)),
        ))
    return [Problem(p.kind, p.condition.fill_null(False), p.message) for p in out]


def _file_problems(spec: DataSpec, files: Iterable[InputFile]) -> list[Problem]:
    """Lines that planning and the survey of each file found broken (features.sources);
    first in a reason, as they explain the problems that follow from them."""
    out = []
    for f in files:
        at = pl.col(FILE_COL) == f.index
        if f.unbalanced:
            out.append(Problem(
                "unterminated quote",
                at & pl.col(LINE_COL).is_in(list(f.unbalanced)),
                pl.lit(f"unterminated quote: {spec.source.quote_char!r} is not closed on its line "
                       f"(a value cannot span lines; this line is split without quoting)"),
            ))
        if f.truncated_line is not None:
            out.append(Problem(
                "truncated line",
                at & (pl.col(LINE_COL) == f.truncated_line),
                pl.lit("truncated last line (no final newline, too few fields)"),
            ))
    return out


def _string_problems(spec: DataSpec, check_utf8: bool) -> list[Problem]:
    out = []
    required = [f.name for f in spec.categorical if f.required]
    required += [c for c in (spec.id, spec.group, spec.day) if c is not None]
    strings = [f.name for f in spec.categorical] + [x for x in (spec.id, spec.group, spec.day) if x]
    for c in strings if check_utf8 else []:
        out.append(Problem(
            "invalid utf-8",
            pl.col(c).str.contains(REPLACEMENT_CHAR, literal=True),
            pl.format("{}: invalid UTF-8 bytes in {}", pl.lit(c), _quoted(c)),
        ))
    for c in required:
        out.append(_missing(c))
    for f in spec.multi_fields:
        raw = pl.col(f.name)
        out.append(Problem(
            "empty list element",
            raw.is_not_null() & (raw != "")
            & split_elements(f).list.eval(pl.element() == "").list.any(),
            pl.format("{}: empty element in the list {} (separator {})", pl.lit(f.name),
                      _quoted(f.name), pl.lit(repr(f.separator))),
        ))
    if spec.day is not None:
        out.append(Problem(
            "bad day",
            pl.col(spec.day).is_not_null()
            & pl.col(spec.day).str.to_date("%Y-%m-%d", strict=False).is_null(),
            pl.format("{}: not a YYYY-MM-DD date {}", pl.lit(spec.day), _quoted(spec.day)),
        ))
    return out


def _numeric_problems(spec: DataSpec) -> list[Problem]:
    out = []
    for f in spec.numeric:
        raw, x = pl.col(f.name), _number(f.name)
        out.append(Problem(
            "unparseable number",
            raw.is_not_null() & x.is_null(),
            pl.format("{}: unparseable number {}", pl.lit(f.name), _quoted(f.name)),
        ))
        if f.nonfinite == "reject":
            out.append(Problem(
                "non-finite number",
                x.is_not_null() & ~x.is_finite(),
                pl.format("{}: non-finite number {}", pl.lit(f.name), _quoted(f.name)),
            ))
        if f.required:
            out.append(_missing(f.name))
    return out


def _label_problems(spec: DataSpec) -> list[Problem]:
    out = [Problem(kind, condition, message) for kind, condition, message in
           labels.problems(spec, _quoted) + labels.weight_problems(spec, _quoted)]
    for a, b in spec.checks.implies:
        out.append(Problem(
            f"{a} without {b}",
            (labels.binary(a) == 1.0) & (labels.binary(b) == 0.0),
            pl.lit(f"{a} = 1 requires {b} = 1"),
        ))
    return out


def _missing(col: str) -> Problem:
    return Problem(
        "missing required field", pl.col(col).is_null(), pl.lit(f"{col}: missing required value")
    )


_NUMBER_KINDS = ("unparseable number", "non-finite number")


def bad_flag(spec: DataSpec, checks: list[Problem]) -> pl.Expr:
    """True for a row with any problem: the OR of `checks`, computed more cheaply.

    Per numeric field, "unparseable" (raw present, parse null) OR "non-finite" (parsed,
    not finite) is one test: raw present AND NOT finite(parse). With `nonfinite: missing`
    only the unparseable test applies. tests/test_validate.py checks the equivalence.
    """
    numeric = []
    for f in spec.numeric:
        raw, x = pl.col(f.name), _number(f.name)
        ok = x.is_finite().fill_null(False) if f.nonfinite == "reject" else x.is_not_null()
        numeric.append(raw.is_not_null() & ~ok)
    others = [p.condition for p in checks if p.kind not in _NUMBER_KINDS]
    return pl.any_horizontal(others + numeric)


BAD_COL = "__bad"


# `is_first_distinct` over one id column holds about 42 bytes a row (2.1 GB for 50M ids,
# measured); inputs whose ids would take more than ID_CHECK_MAX_BYTES are checked in that
# many hash buckets of their ids, one bucket at a time.
ID_BYTES_PER_ROW = 42
ID_CHECK_MAX_BYTES = 512 * 2**20


def flag_bad_rows(lf: pl.LazyFrame, spec: DataSpec, checks: list[Problem], files: list[InputFile],
                  scratch: Path) -> pl.LazyFrame:
    """The scanned rows with their numbers parsed and `BAD_COL` set (the duplicate-id
    check, when configured, first sees every input row): how ingest and the raw-rows
    reader (features/raw.py) both decide which rows are good. `scratch`: a folder for the
    ids of inputs too large to check in one piece."""
    if spec.checks.unique_id:
        lf = lf.with_columns(_repeated_id(lf, spec.id, files, scratch).alias(DUP_COL))
    return with_parsed_numbers(lf, spec).with_columns(bad_flag(spec, checks).alias(BAD_COL))


def _repeated_id(lf: pl.LazyFrame, id_col: str, files: list[InputFile], scratch: Path) -> pl.Expr:
    """True on each row whose id appeared on an earlier row, in input order.

    Rows sharing an id share a hash bucket, and filtering keeps their order, so checking
    bucket by bucket finds exactly the rows a check of all ids at once finds. The ids are
    first copied to `scratch` (one pass over the inputs, however many buckets follow).
    """
    first = pl.col(id_col).is_first_distinct()
    buckets = -(-sum(f.max_rows for f in files) * ID_BYTES_PER_ROW // ID_CHECK_MAX_BYTES)
    if buckets <= 1:
        return ~first
    row = pl.col(FILE_COL).cast(pl.Int64) * 2**40 + pl.col(LINE_COL)  # a line number < 2^40
    bucket = pl.col(id_col).hash(seed=0) % buckets
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        ids_file = Path(tmp) / "ids.parquet"
        lf.select(row.alias("row"), pl.col(id_col)).sink_parquet(ids_file)
        ids = pl.scan_parquet(ids_file)
        repeated = pl.concat([ids.filter(bucket == b).filter(~first).select("row")
                              .collect(engine="streaming") for b in range(buckets)])["row"]
    return row.is_in(repeated.implode())


def reason(checks: list[Problem]) -> pl.Expr:
    """All of a row's problems, '; '-separated (null for a good row)."""
    return pl.concat_str(
        [pl.when(p.condition).then(p.message) for p in checks], separator="; ", ignore_nulls=True
    )

"""Finding and opening raw input files, with the checks that must pass before any work.

Every file is opened as a lazy polars frame of *strings* (the original values, so a
quarantined row keeps exactly what was in the file) plus bookkeeping columns:
`__file` (its index in the file list), `__line` (1-based line number in a CSV, header
counted; 1-based row number in a Parquet file) and `__extra` (non-null when a CSV row
has more fields than the header: the parser truncates ragged lines into this sentinel
column instead of failing the whole file).
"""

from __future__ import annotations

import csv
import glob
import gzip
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from mtlrec.features.errors import DataError
from mtlrec.features.spec import Source

FILE_COL = "__file"
LINE_COL = "__line"
EXTRA_COL = "__extra"
_COMMON_SEPARATORS = [",", ";", "\t", "|"]


@dataclass(frozen=True)
class InputFile:
    path: Path
    role: str  # which source it came from: train, valid or test
    index: int  # position in the run's file list (the `__file` column)
    columns: tuple[str, ...]  # column names in file order
    truncated_line: int | None  # line number of a last line cut short (see _truncated_tail)


def resolve(pattern: str, key: str) -> list[Path]:
    """Expand one configured path or glob; an empty match is an error naming the key."""
    matches = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser())))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise DataError(f"no input file matches {key}={pattern!r}")
    return files


def open_inputs(source: Source, expected: list[str]) -> list[InputFile]:
    """Resolve every configured source and check each file's columns up front."""
    out: list[InputFile] = []
    for role in ("train", "valid", "test"):
        pattern = getattr(source, role)
        if pattern is None:
            continue
        for path in resolve(pattern, f"data.source.{role}"):
            columns, truncated = _inspect(path, source, expected)
            f = InputFile(path, role, len(out), tuple(columns), None)
            if truncated:
                rows = scan(f, source).select(pl.len()).collect().item()
                f = InputFile(path, role, f.index, f.columns, _first_data_line(source) + rows - 1)
            out.append(f)
    return out


def scan(f: InputFile, source: Source, lossy: bool = False) -> pl.LazyFrame:
    """A lazy frame of the file's original values as strings + bookkeeping columns.

    lossy: decode invalid UTF-8 as U+FFFD instead of failing (validate flags those rows).
    """
    if source.format == "parquet":
        lf = pl.scan_parquet(f.path, row_index_name=LINE_COL, row_index_offset=1)
        lf = lf.with_columns(pl.col(c).cast(pl.String) for c in f.columns)
        lf = lf.with_columns(pl.lit(None, pl.String).alias(EXTRA_COL))
    else:
        schema = {c: pl.String for c in f.columns} | {EXTRA_COL: pl.String}
        lf = pl.scan_csv(
            f.path,
            has_header=source.has_header,
            separator=source.separator,
            quote_char=source.quote_char,
            schema=schema,
            encoding="utf8-lossy" if lossy else "utf8",
            row_index_name=LINE_COL,
            row_index_offset=_first_data_line(source),
            truncate_ragged_lines=True,
            missing_columns="insert",
            raise_if_empty=True,
        )
        if source.strip_whitespace:
            lf = lf.with_columns(pl.col(c).str.strip_chars() for c in f.columns)
    if source.null_values:
        lf = lf.with_columns(
            pl.when(pl.col(c).is_in(source.null_values)).then(None).otherwise(pl.col(c)).alias(c)
            for c in f.columns
        )
    return lf.with_columns(
        pl.lit(f.index, pl.Int32).alias(FILE_COL), pl.col(LINE_COL).cast(pl.Int64)
    )


def _first_data_line(source: Source) -> int:
    return 2 if source.has_header else 1


def _inspect(path: Path, source: Source, expected: list[str]) -> tuple[list[str], bool]:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")
    if source.format == "parquet":
        try:
            columns = pq.read_schema(path).names
        except Exception as exc:  # pyarrow raises several types for a non-Parquet file
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        _compare(path, columns, expected, hint="")
        return columns, False
    first = _first_line(path)
    if not first.strip():
        raise DataError(f"{path}: the first line is empty (expected a header or a data row)")
    fields = _split(first, source)
    if source.has_header:
        columns = [c.strip() for c in fields] if source.strip_whitespace else fields
        _compare(path, columns, expected, hint=_separator_hint(first, source, len(expected)))
    else:
        columns = list(source.columns or [])
        _compare(path, columns, expected, hint="")
        if len(fields) != len(columns):
            raise DataError(
                f"{path}: line 1 has {len(fields)} fields separated by {source.separator!r}, "
                f"data.source.columns lists {len(columns)}"
                + _separator_hint(first, source, len(columns))
            )
    return columns, _truncated_tail(path, source, len(columns))


def _compare(path: Path, columns: list[str], expected: list[str], hint: str) -> None:
    dup = sorted({c for c in columns if columns.count(c) > 1})
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    problems = []
    if dup:
        problems.append(f"duplicate columns {dup}")
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(
            f"unexpected columns {extra} (declare them in the data conf, e.g. under `ignore`)"
        )
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems) + hint)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _first_line(path: Path) -> str:
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.readline(1 << 20)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the first line ({exc})") from exc
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")


def _split(line: str, source: Source) -> list[str]:
    quoting = csv.QUOTE_MINIMAL if source.quote_char else csv.QUOTE_NONE
    reader = csv.reader([line], delimiter=source.separator, quotechar=source.quote_char or '"',
                        quoting=quoting)
    return next(reader, [])


def _separator_hint(line: str, source: Source, n_expected: int) -> str:
    for sep in _COMMON_SEPARATORS:
        if sep != source.separator and len(line.split(sep)) == n_expected:
            return (
                f" -- the first line splits into the expected {n_expected} fields with "
                f"separator {sep!r}, not the configured {source.separator!r} "
                f"(set data.source.separator)"
            )
    return ""


def _truncated_tail(path: Path, source: Source, n_columns: int) -> bool:
    """True when the file was cut mid-row: no final newline and a short last line.

    The CSV parser fills the missing trailing fields of a short row with nulls, which
    can look like legitimately empty values; a file that ends without a newline on a
    line with too few fields is the signature of a truncated write.
    """
    if _is_gzip(path):
        return False  # a cut gzip stream fails to decompress instead (a clear read error)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - (1 << 16)))
        tail = fh.read()
    if tail.endswith(b"\n"):
        return False
    last = tail.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")
    return len(_split(last, source)) < n_columns

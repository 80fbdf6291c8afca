"""Finding and opening raw input files, with the checks that must pass before any work.

Three steps, each reading more of the files:
- `open_inputs` plans: it lists the files and checks each one's first line (columns,
  separator) and, for a CSV, its last bytes; cheap, so an unchanged input is recognised
  without reading it;
- `survey` reads each CSV once as plain lines: their number, and the lines with an odd
  number of quote characters;
- `scan` opens a file as a lazy polars frame of *strings* (the original values, so a
  quarantined row keeps exactly what was in the file) plus bookkeeping columns:
  `__file` (its index in the file list), `__line` (1-based line number in a CSV, header
  counted; 1-based row number in a Parquet file) and `__extra` (non-null when a CSV row
  has more fields than the header: the parser truncates ragged lines into this sentinel
  column instead of failing the whole file). `collect_inputs` runs a query over these
  frames and turns a failed read into a DataError naming the file.

A CSV record is one line. Lines may end in LF, CRLF or CR alone (old Mac files; told
apart from the first MiB); a UTF-8 byte-order mark is ignored. A quoted value cannot
span lines: a line with an odd number of quote characters (a stray or unterminated
quote, which would otherwise run on through the rest of the file) is read on its own
without quoting and flagged (validate: "unterminated quote"); the lines around it are
read as usual.
"""

from __future__ import annotations

import codecs
import csv
import glob
import gzip
import logging
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.features.errors import DataError
from mtlrec.features.spec import Source

log = logging.getLogger(__name__)

FILE_COL = "__file"
LINE_COL = "__line"
EXTRA_COL = "__extra"
MAX_UNBALANCED = 100  # lines with an unbalanced quote per file; more means a wrong quote_char
_COMMON_SEPARATORS = [",", ";", "\t", "|"]
_HEAD_BYTES = 1 << 20  # what planning reads of a file
_NO_SEPARATOR = "\x00"  # for reading whole lines: text holds no NUL (planning checks the head)
_READ_ERRORS = (pl.exceptions.PolarsError, OSError)

T = TypeVar("T")


@dataclass(frozen=True)
class InputFile:
    path: Path
    role: str  # which source it came from: train, valid or test
    index: int  # position in the run's file list (the `__file` column)
    columns: tuple[str, ...]  # column names in file order
    size: int  # bytes when planned: the fingerprint and the manifest describe this state
    mtime_ns: int
    eol: str = "\n"  # a CSV's line terminator: "\n" (LF or CRLF) or "\r" (CR alone)
    cut_short: bool = False  # no final newline and a short last line (see _truncated_tail)
    lines: int | None = None  # a CSV's physical lines, header included (set by `survey`)
    unbalanced: tuple[int, ...] = ()  # lines with an odd number of quote chars (`survey`)
    lists: tuple[tuple[str, str], ...] = ()  # Parquet list columns and the separator joining them
    uncompressed: int | None = None  # a Parquet file's column data uncompressed, in bytes
    parquet_rows: int | None = None  # a Parquet file's rows (its metadata)
    types: tuple[str, ...] = ()  # a Parquet file's column types (`logical_type`), as `columns`

    @property
    def data_bytes(self) -> int:
        """The size of the file's values as text or uncompressed columns (what parsing them
        into memory scales with; a compressed Parquet file is much smaller)."""
        return self.size if self.uncompressed is None else self.uncompressed

    @property
    def max_rows(self) -> int:
        """At most this many data rows (a CSV's physical lines bound its rows); 0 when not
        known yet (a CSV before `survey`)."""
        return self.parquet_rows if self.parquet_rows is not None else (self.lines or 0)

    @property
    def truncated_line(self) -> int | None:
        """The line number of a last line cut short, if any."""
        return self.lines if self.cut_short else None


def resolve(pattern: str, key: str) -> list[Path]:
    """Expand one configured path or glob; an empty match is an error naming the key."""
    matches = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser())))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise DataError(f"no input file matches {key}={pattern!r}")
    return files


def open_inputs(source: Source, expected: list[str],
                list_separators: Mapping[str, str] | None = None) -> list[InputFile]:
    """Resolve every configured source and check each file's columns up front.

    list_separators: the multi-valued fields and their separators; a Parquet list column
    must be one of them (its elements are joined with it, so every format reaches
    validation as strings)."""
    out: list[InputFile] = []
    for role in ("train", "valid", "test"):
        pattern = getattr(source, role)
        if pattern is None:
            continue
        for path in resolve(pattern, f"data.source.{role}"):
            try:
                out.append(_inspect(path, role, len(out), source, expected, list_separators or {}))
            except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a broken gzip
                raise DataError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})"
                                ) from exc
    return out


def logical_type(t: pa.DataType) -> str:
    """An Arrow type by what it holds: string, large_string and string_view are all
    `string` (writers pick among them freely), likewise for lists and binary."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return f"list<{logical_type(t.value_type)}>"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    return str(t)


def column_types(files: list[InputFile]) -> dict[str, str]:
    """The columns of `files` and their types as stored: a Parquet file's logical Arrow
    types (the first file's, where files differ), a CSV's columns `string` (text has no
    types)."""
    out: dict[str, str] = {}
    for f in files:
        for c, t in zip(f.columns, f.types or ("string",) * len(f.columns)):
            out.setdefault(c, t)
    return out


def stored_types(path: Path, source: Source) -> dict[str, str]:
    """A file's columns and types as it holds them, unchecked against any spec (schema
    drift reads a day whose columns are not the spec's): a Parquet file's schema, a CSV's
    header line (or `source.columns`) as `string`."""
    if source.format == "parquet":
        return {x.name: logical_type(x.type) for x in pq.read_schema(path)}
    names = _header_fields(path, source)[0] if source.has_header else list(source.columns or [])
    return dict.fromkeys(names, "string")


def survey(files: list[InputFile], source: Source) -> list[InputFile]:
    """`files` with each CSV's lines counted and its unbalanced quote lines found.

    One pass over each CSV as plain lines (no CSV parsing: cheaper than the read), needed
    before `scan`. A broken file (a gzip cut short, a file gone since planning) is a
    DataError naming it; so are more than MAX_UNBALANCED unbalanced lines, which say the
    quote character is not one in this file.
    """
    if source.format != "csv":
        return files
    return [_survey(f, source) for f in files]


def scan(f: InputFile, source: Source, lossy: bool = False) -> pl.LazyFrame:
    """A lazy frame of the file's original values as strings + bookkeeping columns.

    lossy: decode invalid UTF-8 as U+FFFD instead of failing (validate flags those rows).
    """
    if source.format == "parquet":
        lf = pl.scan_parquet(f.path, row_index_name=LINE_COL, row_index_offset=1)
        lists = dict(f.lists)
        lf = lf.with_columns(
            pl.col(c).list.eval(pl.element().cast(pl.String)).list.join(lists[c]) if c in lists
            else pl.col(c).cast(pl.String) for c in f.columns)
        lf = lf.with_columns(pl.lit(None, pl.String).alias(EXTRA_COL))
    else:
        lf = pl.concat([_read_csv(f, source, lossy, part, *span)
                        for part, span in enumerate(_csv_spans(f, source))])
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


def collect_inputs(files: list[InputFile], source: Source, query: Callable[[bool], T]) -> T:
    """`query(lossy)`: a query over `scan(f, source, lossy)` of `files`, run.

    Strict UTF-8 decoding first (no per-row cost); only when that fails is the query run
    again with lossy decoding, whose replacement characters validate flags per row. Any
    other failure to read is a DataError naming the file (`read_error`).
    """
    for lossy in (False, True):
        try:
            return query(lossy)
        except _READ_ERRORS as exc:
            if lossy or "utf-8" not in str(exc).lower():
                raise read_error(files, source, exc) from exc
            log.info("invalid UTF-8 in the input, re-reading with per-row checks")
    raise AssertionError("unreachable: the lossy pass either returns or raises")


def count_rows(f: InputFile, source: Source) -> int:
    """The rows of one file, counted by a pass of its own."""
    try:
        return scan(f, source, lossy=True).select(pl.len()).collect().item()
    except _READ_ERRORS as exc:
        raise read_error([f], source, exc) from exc


def read_error(files: list[InputFile], source: Source, exc: Exception) -> DataError:
    """Why reading `files` failed, naming the file at fault: one gone since planning, else
    the one whose failure `exc` is (several files: each is re-read alone to find it)."""
    for f in files:
        if not f.path.exists():
            return DataError(f"{f.path}: the file was removed or renamed after it was listed")
    if len(files) == 1:
        return _unreadable(files[0], source, exc)
    for f in files:
        if (failure := _read_failure(f, source)) is not None:
            return _unreadable(f, source, failure)
    return DataError(f"reading {[str(f.path) for f in files]} failed: {_summary(exc)}")


def _unreadable(f: InputFile, source: Source, exc: Exception) -> DataError:
    return DataError(f"{f.path}: cannot be read as {source.format.upper()} ({_summary(exc)})")


def _read_failure(f: InputFile, source: Source) -> Exception | None:
    """What reading every value of `f` alone raises, if anything."""
    try:
        scan(f, source, lossy=True).select(pl.all().null_count()).collect(engine="streaming")
    except _READ_ERRORS as exc:
        return exc
    return None


def _summary(exc: Exception) -> str:
    """The first line of an error: polars follows it with hints about schema inference."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _list_columns(path: Path, schema: pa.Schema, separators: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    out = []
    for field in schema:
        if not pa.types.is_list(field.type) and not pa.types.is_large_list(field.type):
            continue
        if field.name not in separators:
            raise DataError(f"{path}: column '{field.name}' holds lists; declare it a categorical "
                            "field with `multi: true` (or list it under `ignore`)")
        if pa.types.is_nested(field.type.value_type):
            raise DataError(f"{path}: column '{field.name}' holds lists of {field.type.value_type}; "
                            "a multi-valued field holds a flat list of values")
        out.append((field.name, separators[field.name]))
    return tuple(out)


def _first_data_line(source: Source) -> int:
    return 2 if source.has_header else 1


def _inspect(path: Path, role: str, index: int, source: Source, expected: list[str],
             list_separators: Mapping[str, str]) -> InputFile:
    stat = path.stat()
    if stat.st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")
    planned = InputFile(path, role, index, (), stat.st_size, stat.st_mtime_ns)
    if source.format == "parquet":
        try:
            meta = pq.read_metadata(path)
            schema = meta.schema.to_arrow_schema()
        except Exception as exc:  # pyarrow raises several types for a non-Parquet file
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        _compare(path, schema.names, expected, hint="")
        uncompressed = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        return replace(planned, columns=tuple(schema.names), uncompressed=uncompressed,
                       types=tuple(logical_type(x.type) for x in schema),
                       parquet_rows=meta.num_rows, lists=_list_columns(path, schema, list_separators))
    head = _head(path)
    if b"\x00" in head:
        raise DataError(f"{path}: not a text file: it holds NUL bytes (binary, compressed other "
                        f"than with gzip, or UTF-16 text?)")
    fields, first_line, eol = _header_fields(path, source, head)
    if source.has_header:
        columns = fields
        _compare(path, columns, expected, hint=_separator_hint(first_line, source, len(expected)))
    else:
        columns = list(source.columns or [])
        _compare(path, columns, expected, hint="")
        if len(fields) != len(columns):
            raise DataError(
                f"{path}: line 1 has {len(fields)} fields separated by {source.separator!r}, "
                f"data.source.columns lists {len(columns)}"
                + _separator_hint(first_line, source, len(columns))
            )
    return replace(planned, columns=tuple(columns), eol=eol,
                   cut_short=_truncated_tail(planned, source, len(columns), eol))


def _header_fields(path: Path, source: Source, head: bytes | None = None) -> tuple[list[str], str, str]:
    """The first line's fields (stripped when the source says so), the line, and its end."""
    head = _head(path) if head is None else head
    eol = "\r" if b"\r" in head and b"\n" not in head else "\n"
    first = head.split(eol.encode(), 1)[0].removeprefix(codecs.BOM_UTF8)
    first_line = first.decode("utf-8", errors="replace").rstrip("\r")
    if not first_line.strip():
        raise DataError(f"{path}: the first line is empty (expected a header or a data row)")
    fields = _split(path, first_line, source)
    if source.has_header and source.strip_whitespace:
        fields = [c.strip() for c in fields]
    return fields, first_line, eol


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


def _head(path: Path) -> bytes:
    """The first MiB of the file's content (decompressed, for a gzip file)."""
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as fh:
        return fh.read(_HEAD_BYTES)


def _split(path: Path, line: str, source: Source) -> list[str]:
    """The fields of one line, read as `scan` reads it (no quoting when a quote is unbalanced)."""
    quote = source.quote_char
    quoting = csv.QUOTE_MINIMAL if quote and line.count(quote) % 2 == 0 else csv.QUOTE_NONE
    try:
        return next(csv.reader([line], delimiter=source.separator, quotechar=quote or '"',
                               quoting=quoting), [])
    except csv.Error as exc:  # e.g. a lone CR inside a line of an LF file
        raise DataError(f"{path}: cannot split {line[:80]!r} into fields ({exc})") from exc


def _separator_hint(line: str, source: Source, n_expected: int) -> str:
    for sep in _COMMON_SEPARATORS:
        if sep != source.separator and len(line.split(sep)) == n_expected:
            return (
                f" -- the first line splits into the expected {n_expected} fields with "
                f"separator {sep!r}, not the configured {source.separator!r} "
                f"(set data.source.separator)"
            )
    return ""


def _truncated_tail(f: InputFile, source: Source, n_columns: int, eol: str) -> bool:
    """True when the file was cut mid-row: no final newline and a short last line.

    The CSV parser fills the missing trailing fields of a short row with nulls, which
    can look like legitimately empty values; a file that ends without a newline on a
    line with too few fields is the signature of a truncated write.
    """
    if _is_gzip(f.path):
        return False  # a cut gzip stream fails to decompress instead (a clear read error)
    with open(f.path, "rb") as fh:
        fh.seek(max(0, f.size - (1 << 16)))
        tail = fh.read()
    if tail.endswith(eol.encode()):
        return False
    last = tail.rsplit(eol.encode(), 1)[-1].decode("utf-8", errors="replace")
    return len(_split(f.path, last, source)) < n_columns


def _survey(f: InputFile, source: Source) -> InputFile:
    lines = pl.scan_csv(
        f.path, has_header=False, separator=_NO_SEPARATOR, quote_char=None, eol_char=f.eol,
        schema={"text": pl.String}, encoding="utf8-lossy", truncate_ragged_lines=True,
        row_index_name=LINE_COL, row_index_offset=1, raise_if_empty=False,
    )
    try:
        n_lines = lines.select(pl.len()).collect().item()
        unbalanced = _unbalanced(lines, source) if source.quote_char else []
    except _READ_ERRORS as exc:
        raise read_error([f], source, exc) from exc
    if len(unbalanced) > MAX_UNBALANCED:
        quote = source.quote_char
        raise DataError(
            f"{f.path}: more than {MAX_UNBALANCED} lines have an odd number of {quote!r} "
            f"(lines {', '.join(map(str, unbalanced[:5]))}, …): a quoted value cannot span "
            f"lines, and this many stray quotes mean {quote!r} is no quote character in this "
            f"file: set data.source.quote_char: null"
        )
    return replace(f, lines=n_lines, unbalanced=tuple(unbalanced))


def _unbalanced(lines: pl.LazyFrame, source: Source) -> list[int]:
    """Data lines with an odd number of quote characters, up to MAX_UNBALANCED + 1 (the
    header's quotes are checked at planning, where a bad header fails)."""
    odd = pl.col("text").str.count_matches(source.quote_char, literal=True) % 2 == 1
    return lines.filter(odd & (pl.col(LINE_COL) >= _first_data_line(source))).select(
        LINE_COL).head(MAX_UNBALANCED + 1).collect(engine="streaming")[LINE_COL].to_list()


def _csv_spans(f: InputFile, source: Source) -> list[tuple[int, int | None, bool]]:
    """How the file's data lines are read: (first line, number of lines or None for the
    rest, with quoting) of consecutive reads. One read unless lines are unbalanced; each
    of those is read alone without quoting (with it, its quote would run on through the
    lines after it) and the lines between them as usual."""
    if f.lines is None:
        raise ValueError(f"{f.path}: survey() the file before scanning it")
    spans: list[tuple[int, int | None, bool]] = []
    start = _first_data_line(source)
    for line in f.unbalanced:
        spans += [(start, line - start, True), (line, 1, False)]
        start = line + 1
    return spans + [(start, None, True)]


def _read_csv(f: InputFile, source: Source, lossy: bool, part: int, first: int,
              n_rows: int | None, quoted: bool) -> pl.LazyFrame:
    """`n_rows` records (all, when None) from line `first` on; the lines before it are
    skipped as raw lines (no quote can run on from them).

    Each read of a file has its own name for the `__extra` column: within one query,
    polars (2.1) keys a CSV scan's options (skip_lines, quote_char) by file and schema,
    so reads of one file with equal schemas would all get the options of one of them.
    """
    extra = f"{EXTRA_COL}{part}"
    return pl.scan_csv(
        f.path,
        has_header=False,
        skip_lines=first - 1,
        n_rows=n_rows,
        separator=source.separator,
        quote_char=source.quote_char if quoted else None,
        eol_char=f.eol,
        schema={c: pl.String for c in f.columns} | {extra: pl.String},
        encoding="utf8-lossy" if lossy else "utf8",
        row_index_name=LINE_COL,
        row_index_offset=first,
        truncate_ragged_lines=True,
        missing_columns="insert",
        raise_if_empty=False,
    ).rename({extra: EXTRA_COL})

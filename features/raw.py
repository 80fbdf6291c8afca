"""Validated raw rows of a few files: the checks of ingest without its fitting.

For inputs that are validated but not turned into a training set: one day partition
entering the retrain store, a holdout day scored by two bundles for the promotion gate,
new logs scored by a served model. A day of production logs is tens of millions of
rows, so the good rows are written to a Parquet file on the streaming engine and read
back a chunk at a time (`RawRows.typed_chunks`): memory is bounded by the chunk and the
bad rows, not by the input. The same `validate` expressions as ingest decide which rows
are good, so the good rows here are exactly the rows ingest would keep; bad rows come
back with their reasons (never silently dropped).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from mtlrec import files as files_mod
from mtlrec.features import stats, validate
from mtlrec.features.sources import (
    FILE_COL,
    LINE_COL,
    InputFile,
    collect_inputs,
    column_types,
    open_inputs,
    resolve,
    scan,
    stored_types,
    survey,
)
from mtlrec.features.spec import DataSpec, Source

_DAY = re.compile(r"day=(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class RawRows:
    good_file: Path  # Parquet: the good rows' original values (strings), the spec's columns
    rows_good: int
    quarantine: pl.DataFrame  # source_file, line, reason + the original values
    files: list[str]
    columns: dict[str, str] = field(default_factory=dict)  # the inputs' columns and stored types

    def statistics(self, spec: DataSpec, vocabularies: Mapping[str, pl.DataFrame] | None = None
                   ) -> stats.SliceStats:
        """The good rows' statistics (`features.stats`), read from the good-rows file (the
        raw files are not read again); `vocabularies`: what out-of-vocabulary is counted
        against (a champion's)."""
        typed = validate.with_parsed_numbers(pl.scan_parquet(self.good_file), spec).select(
            validate.typed_columns(spec))
        return stats.compute(typed, spec, self.rows_good, self.columns, vocabularies)

    def typed_chunks(self, spec: DataSpec, chunk_rows: int) -> Iterator[pl.DataFrame]:
        """The good rows, `chunk_rows` at a time, typed as ingest types them (categorical
        strings, numeric floats, labels 0/1, id/group/day): what `FeatureTransform` and the
        metrics read."""
        for batch in pq.ParquetFile(self.good_file).iter_batches(batch_size=chunk_rows):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield validate.with_parsed_numbers(frame.lazy(), spec).select(
                validate.typed_columns(spec)).collect()


def read(spec: DataSpec, pattern: str, good_file: Path) -> RawRows:
    """Read and validate every file matching `pattern` with the spec's source options; the
    good rows go to `good_file` (written atomically), the bad ones stay in memory."""
    source = spec.source.model_copy(update={"train": pattern, "valid": None, "test": None})
    inputs = survey(open_inputs(source, spec.expected_columns, spec.list_separators), source)
    with files_mod.atomic_file(Path(good_file)) as tmp:
        quarantine = collect_inputs(inputs, source, lambda lossy: _validated(spec, source, inputs, lossy, tmp))
        rows_good = pq.ParquetFile(tmp).metadata.num_rows
    return RawRows(Path(good_file), rows_good, quarantine, [str(f.path) for f in inputs],
                   column_types(inputs))


def _validated(spec: DataSpec, source: Source, files: list[InputFile], lossy: bool,
               good_file: Path) -> pl.DataFrame:
    """One streaming pass over `files`: the good rows into `good_file`; returns the
    quarantined rows with their reasons."""
    checks = validate.problems(spec, files, check_utf8=lossy)
    frame = validate.flag_bad_rows(
        pl.concat([scan(f, source, lossy) for f in files], how="vertical_relaxed"), spec, checks,
        files, good_file.parent)
    paths = pl.col(FILE_COL).replace_strict([f.index for f in files], [str(f.path) for f in files])
    quarantine = frame.filter(pl.col(validate.BAD_COL)).select(
        paths.alias("source_file"), pl.col(LINE_COL).alias("line"),
        validate.reason(checks).alias("reason"), *spec.expected_columns)
    good = frame.filter(~pl.col(validate.BAD_COL)).select(spec.expected_columns).sink_parquet(
        good_file, lazy=True)
    bad, _ = pl.collect_all([quarantine, good], engine="streaming")
    return bad


def columns_of(spec: DataSpec, pattern: str) -> dict[str, str]:
    """The columns of the files matching `pattern` as they are, unchecked against the spec
    (every file's columns; a name stored with two types is listed as both)."""
    out: dict[str, set[str]] = {}
    for path in resolve(pattern, "data.source.train"):
        for c, t in stored_types(path, spec.source).items():
            out.setdefault(c, set()).add(t)
    return {c: " | ".join(sorted(t)) for c, t in out.items()}


def day_partitions(pattern: str) -> dict[str, str]:
    """{day: glob of that day's files} among the files `pattern` matches, in day order.

    A day partition is a file (`…/day=2026-11-05.csv`) or a folder of files
    (`…/day=2026-11-05/part-0.csv`), as landing folders are laid out; files without a
    day in their name or folder are not partitions and are left out.
    """
    out: dict[str, str] = {}
    for name in sorted(glob.glob(str(Path(pattern).expanduser()))):
        path = Path(name)
        if (match := _DAY.search(path.name)) is not None:
            out[match[1]] = glob.escape(name)
        elif (match := _DAY.search(path.parent.name)) is not None:
            out[match[1]] = f"{glob.escape(str(path.parent))}/{Path(pattern).name}"
    return dict(sorted(out.items()))

"""Batch scoring: a Parquet table of raw feature rows → a Parquet table of scores.

Reads `chunk_rows` rows at a time (pyarrow batches) and appends each scored chunk to
the output, so memory is bounded by the chunk, not the input. The output holds the
input's id column next to one probability column per task, in input order; it is
written atomically (`mtlrec.files.atomic_file`), so a crash never leaves a truncated
file that looks complete.

Whatever stops a run midway ends it with a one-line `DataError` naming the input file,
and no output: a file that is not readable Parquet (truncated, another format, empty, a
corrupt page found chunks in), a row outside the contract of `serving.rows`, or a row
whose score is not finite (`rows.check_scores`).

It reports its rows/s next to onnxruntime's alone on the same rows (the time inside the
session's runs), so the cost of reading, checking, transforming and writing is visible.
"""

from __future__ import annotations

import contextlib
import glob
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec import files
from mtlrec.features.errors import DataError
from mtlrec.serving import rows as rows_mod
from mtlrec.serving.bundle import Bundle, oov_per_field


def score_parquet(model: Bundle, inputs: str, output: Path, id_column: str | None,
                  chunk_rows: int) -> dict:
    """Score every row of the Parquet file(s) `inputs` (a path or glob) into `output`."""
    sources = sorted(glob.glob(str(Path(inputs).expanduser())))
    if not sources:
        raise DataError(f"no Parquet file matches score.input={inputs!r}")
    done, oov, start = 0, 0, time.perf_counter()
    session = [0.0]  # seconds inside onnxruntime
    # the writer closes (ExitStack) before atomic_file publishes or removes the file
    with files.atomic_file(output) as tmp, contextlib.ExitStack() as closing:
        writer: pq.ParquetWriter | None = None
        for path in sources:
            for table, counts in _scored_chunks(model, path, id_column, chunk_rows, session):
                writer = writer or closing.enter_context(pq.ParquetWriter(tmp, table.schema))
                writer.write_table(table)
                done += table.num_rows
                oov += int(counts.sum())
        if writer is None:
            raise DataError(f"score.input={inputs!r}: no rows")
    seconds = time.perf_counter() - start
    return {"rows": done, "oov_values": oov, "output": str(output), "files": len(sources),
            "rows_per_s": done / seconds, "onnxruntime_rows_per_s": done / max(session[0], 1e-9)}


def _scored_chunks(model: Bundle, path: str, id_column: str | None, chunk_rows: int,
                   session: list[float]) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """One Parquet file's scores, `chunk_rows` rows at a time, each with its OOV counts;
    adds the seconds spent in onnxruntime to session[0]."""
    offset = 0
    for batch in _batches(path, id_column, chunk_rows):
        frame = pl.from_arrow(pa.Table.from_batches([batch]))
        try:
            typed = rows_mod.from_frame(frame, model.transform, offset)
            inputs = model.transform.to_numpy(typed)
            start = time.perf_counter()
            scores = model.predict(inputs)
            session[0] += time.perf_counter() - start
            counts = oov_per_field(inputs, model.transform)
            rows_mod.check_scores(scores, inputs, model.transform, lambda r, f: typed[f][r], offset)
        except rows_mod.RowError as exc:
            raise DataError(f"{path}: {exc}") from None
        out = pl.DataFrame({c: scores[:, j] for j, c in enumerate(model.columns)})
        if id_column is not None:
            out = out.insert_column(0, frame[id_column])
        yield out.to_arrow(), counts
        offset += len(frame)


def _batches(path: str, id_column: str | None, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """The batches of one Parquet file that has the id column. pyarrow's errors (ArrowInvalid
    when opening, OSError for a corrupt page or a folder) become a DataError naming the file,
    where they happen: only the reading is guarded, not what the caller does with a batch."""
    try:
        reader = pq.ParquetFile(path)
        if id_column is not None and id_column not in reader.schema_arrow.names:
            raise DataError(f"{path}: no id column '{id_column}' (score.id_column); it has "
                            f"{reader.schema_arrow.names[:10]}…")
        yield from reader.iter_batches(batch_size=chunk_rows)
    except (pa.ArrowException, OSError) as exc:
        reason = " ".join(str(exc).split())  # pyarrow's messages span lines
        raise DataError(f"{path}: not a readable Parquet file: {reason}") from None

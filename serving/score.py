"""Batch scoring: a Parquet table of raw feature rows → a Parquet table of scores.

Reads `chunk_rows` rows at a time (pyarrow batches) and appends each scored chunk to
the output, so memory is bounded by the chunk, not the input. The output holds the
input's id column next to one probability column per task, in input order; it is
written under a temporary name and renamed at the end, so a crash never leaves a
truncated file that looks complete.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.features.errors import DataError
from mtlrec.serving import rows as rows_mod
from mtlrec.serving.bundle import Bundle


def score_parquet(model: Bundle, inputs: str, output: Path, id_column: str | None,
                  chunk_rows: int) -> dict:
    """Score every row of the Parquet file(s) `inputs` (a path or glob) into `output`."""
    files = sorted(glob.glob(str(Path(inputs).expanduser())))
    if not files:
        raise DataError(f"no Parquet file matches score.input={inputs!r}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    writer: pq.ParquetWriter | None = None
    done, oov = 0, 0
    try:
        for path in files:
            reader = pq.ParquetFile(path)
            if id_column is not None and id_column not in reader.schema_arrow.names:
                raise DataError(f"{path}: no id column '{id_column}' (score.id_column); it has "
                                f"{reader.schema_arrow.names[:10]}…")
            offset = 0
            for batch in reader.iter_batches(batch_size=chunk_rows):
                frame = pl.from_arrow(pa.Table.from_batches([batch]))
                try:
                    typed = rows_mod.from_frame(frame, model.transform, offset)
                except rows_mod.RowError as exc:
                    raise DataError(f"{path}: {exc}") from None
                scores, counts = model.score(typed)
                out = pl.DataFrame({t: scores[:, k] for k, t in enumerate(model.tasks)})
                if id_column is not None:
                    out = out.insert_column(0, frame[id_column])
                table = out.to_arrow()
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                done += len(frame)
                offset += len(frame)
                oov += int(counts.sum())
        if writer is None:
            raise DataError(f"score.input={inputs!r}: no rows")
        writer.close()
        writer = None
        tmp.replace(output)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return {"rows": done, "oov_values": oov, "output": str(output), "files": len(files)}

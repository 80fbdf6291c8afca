"""Multi-valued fields as padded matrices: the layout the exported model takes and the
splits store (numpy + pyarrow only, so both the training path and the server use it)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PAD_ID = 0  # what fills a row's unused slots; the lengths mask them out


def pad_lists(column: pa.Array | pa.ChunkedArray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A list column → ids [N, width] int64 and lengths [N] int64. A list longer than
    `width` keeps its head (ingest already cut lists to the field's max_len)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = pos < width
    out = np.full((len(lengths), width), PAD_ID, np.int64)
    out[row[keep], pos[keep]] = values[keep]
    return out, np.minimum(lengths, width)

"""Model-ready Parquet → training batches (torchrec KeyedJaggedTensor + dense + labels).

Reads with pyarrow only (no polars), so the training path runs where polars is absent
(the GPU machine). A split is loaded once into contiguous tensors; an epoch is a seeded
permutation and each batch is three `index_select`s, so the loader costs microseconds
per batch and is never what training waits on (`mtlrec bench ingest` measures it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtlrec.features.folder import FeaturesFolder


@dataclass
class Batch:
    """ids [B, F] int64 (one id per field), dense [B, D] float32, labels [B, K] float32."""

    keys: list[str]
    ids: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor

    @property
    def sparse(self) -> KeyedJaggedTensor:
        """The ids as a torchrec KeyedJaggedTensor (key-major values, one id per row)."""
        b, f = self.ids.shape
        return KeyedJaggedTensor(
            keys=self.keys,
            values=self.ids.t().reshape(-1),
            lengths=torch.ones(b * f, dtype=torch.int32, device=self.ids.device),
        )

    @property
    def inputs(self) -> tuple[KeyedJaggedTensor, torch.Tensor]:
        """The ranker's positional arguments."""
        return self.sparse, self.dense

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(self.keys, self.ids.to(device, non_blocking=non_blocking),
                     self.dense.to(device, non_blocking=non_blocking),
                     self.labels.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.ids.shape[0]


class SplitData:
    """One split of a model-ready features folder, held as contiguous tensors."""

    def __init__(self, features: FeaturesFolder, split: str,
                 extra_columns: tuple[str, ...] = ()) -> None:
        info = features.info()
        dataset = ds.dataset(features.data_dir, format="parquet", partitioning="hive")
        columns = info.categorical + info.numeric + info.tasks + list(extra_columns)
        table = dataset.to_table(columns=columns, filter=ds.field("split") == split)
        self.keys = list(info.categorical)
        self.ids = torch.from_numpy(_matrix(table, info.categorical, np.int64))
        self.dense = torch.from_numpy(_matrix(table, info.numeric, np.float32))
        self.labels = torch.from_numpy(_matrix(table, info.tasks, np.float32))
        self.extra = {c: table.column(c).to_numpy(zero_copy_only=False) for c in extra_columns}

    def __len__(self) -> int:
        return self.labels.shape[0]

    def head(self, n: int) -> "SplitData":
        """The first n rows as a split of their own (views, no copy): short runs, tests."""
        out = object.__new__(SplitData)
        out.keys, out.ids, out.dense, out.labels = self.keys, self.ids[:n], self.dense[:n], self.labels[:n]
        out.extra = {c: v[:n] for c, v in self.extra.items()}
        return out

    def batch(self, index: torch.Tensor) -> Batch:
        return Batch(self.keys, self.ids.index_select(0, index),
                     self.dense.index_select(0, index), self.labels.index_select(0, index))


class Batchable(Protocol):
    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor) -> Any: ...


class BatchLoader:
    """Iterates a split (anything with `len` and `batch(index)`: `SplitData`, or the image
    and graph splits of MultiMNIST and QM9) in batches; shuffled with a generator seeded
    by (seed, epoch).

    The order of epoch e depends only on (seed, e), so a run resumed at epoch e sees
    exactly the batches an uninterrupted run would.
    """

    def __init__(self, data: Batchable, batch_size: int, *, shuffle: bool, seed: int = 0,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        n = len(self.data)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            yield self.data.batch(order[i * self.batch_size:(i + 1) * self.batch_size])


def _matrix(table: pa.Table, names: list[str], dtype: type) -> np.ndarray:
    out = np.empty((table.num_rows, len(names)), dtype=dtype)
    for j, name in enumerate(names):
        out[:, j] = table.column(name).to_numpy()
    return out

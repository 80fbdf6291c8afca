"""Model-ready Parquet → training batches (torchrec KeyedJaggedTensor + dense + labels).

Reads with pyarrow only (no polars), so the training path runs where polars is absent
(the GPU machine). Two ways to hold a split, both giving the same batches:

- `SplitData` (here): loaded once into contiguous tensors; an epoch is a seeded
  permutation and each batch is three `index_select`s, so the loader costs microseconds
  per batch (`mtlrec bench ingest` measures it). For splits that fit the memory budget.
- `features.stream.StreamSplit`: row groups streamed in bounded memory, for logs larger
  than memory (`trainer.data`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtlrec.features.folder import WEIGHT_COL, FeatureInfo, FeaturesFolder
from mtlrec.features.lists import pad_lists


@dataclass(frozen=True)
class Slots:
    """Where each categorical field's ids sit in a padded ids matrix [N, S]: a single-valued
    field takes one column, a multi-valued one `max_len` columns, its element count in the
    next column of lengths [N, M] (the ONNX model's inputs, and how splits store them)."""

    widths: tuple[int, ...]
    multi: tuple[bool, ...]


@dataclass
class Batch:
    """ids [B, S] int64 (one column per single-valued field; see `Slots`), dense [B, D]
    float32, labels [B, K] float32 (NaN where a task skips the row), lengths [B, M] int64
    of the multi-valued fields, weights [B, K] float32 of each row in each task's loss and
    metrics (None: all 1)."""

    keys: list[str]
    ids: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor | None = None
    slots: Slots | None = None  # None: every field holds one id
    weights: torch.Tensor | None = None

    @property
    def sparse(self) -> KeyedJaggedTensor:
        """The ids as a torchrec KeyedJaggedTensor: values key-major, with each row's real
        number of ids per field (1 for a single-valued field)."""
        b = self.ids.shape[0]
        if self.slots is None:
            return KeyedJaggedTensor(keys=self.keys, values=self.ids.t().reshape(-1),
                                     lengths=torch.ones(b * len(self.keys), dtype=torch.int32,
                                                        device=self.ids.device))
        values, lengths = [], []
        slot, m = 0, 0
        for width, multi in zip(self.slots.widths, self.slots.multi):
            if multi:
                n = self.lengths[:, m]
                mask = torch.arange(width, device=n.device) < n[:, None]
                values.append(self.ids[:, slot:slot + width][mask])
                lengths.append(n)
                m += 1
            else:
                values.append(self.ids[:, slot])
                lengths.append(torch.ones(b, dtype=self.lengths.dtype, device=self.ids.device))
            slot += width
        return KeyedJaggedTensor(keys=self.keys, values=torch.cat(values),
                                 lengths=torch.cat(lengths).int())

    @property
    def inputs(self) -> tuple[KeyedJaggedTensor, torch.Tensor]:
        """The ranker's positional arguments."""
        return self.sparse, self.dense

    def _map(self, fn) -> "Batch":
        return Batch(self.keys, fn(self.ids), fn(self.dense), fn(self.labels),
                     None if self.lengths is None else fn(self.lengths), self.slots,
                     None if self.weights is None else fn(self.weights))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """Page-locked copies, so `to(cuda, non_blocking=True)` overlaps the copy with compute."""
        return self._map(torch.Tensor.pin_memory)

    def __len__(self) -> int:
        return self.ids.shape[0]


@dataclass
class Rows:
    """Rows of a split as tensors (see `Batch` for the shapes); lengths has M = 0 columns
    when no field is multi-valued; weights is None when every row weighs 1."""

    ids: torch.Tensor
    lengths: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None = None

    def index_select(self, index: torch.Tensor) -> "Rows":
        return Rows(*(t.index_select(0, index) for t in self._all))

    def __getitem__(self, rows: slice) -> "Rows":
        return Rows(*(t[rows] for t in self._all))

    @staticmethod
    def cat(parts: list["Rows"]) -> "Rows":
        return parts[0] if len(parts) == 1 else Rows(*(torch.cat(ts) for ts in zip(*(p._all for p in parts))))

    @property
    def _all(self) -> tuple[torch.Tensor, ...]:
        tensors = self.ids, self.lengths, self.dense, self.labels
        return tensors if self.weights is None else (*tensors, self.weights)

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass(frozen=True)
class RowLayout:
    """Which model-ready columns become which tensor, in the order the model expects.

    Weights: a row's sample weight (`weighted`), times 1/rate in every task but the sampled
    one on the kept rows whose sampled task is 0, when this split was negative-downsampled
    (`importance`: the sampled task's index and 1/rate; the training split only)."""

    categorical: list[str]
    numeric: list[str]
    tasks: list[str]
    max_len: dict[str, int] = field(default_factory=dict)  # the multi-valued fields
    weighted: bool = False
    importance: tuple[int, float] | None = None

    @classmethod
    def of(cls, info: FeatureInfo, split: str = "train") -> "RowLayout":
        importance = None
        if info.sampled is not None and split == "train":
            importance = (info.tasks.index(info.sampled.task), 1.0 / info.sampled.rate)
        return cls(list(info.categorical), list(info.numeric), list(info.tasks), info.max_len,
                   info.weighted, importance)

    @property
    def columns(self) -> list[str]:
        return self.categorical + self.numeric + self.tasks + ([WEIGHT_COL] if self.weighted else [])

    @property
    def has_weights(self) -> bool:
        return self.weighted or self.importance is not None

    def weights(self, table: pa.Table, labels: np.ndarray) -> np.ndarray | None:
        """[N, K] weights of the rows of `table` (None: all 1)."""
        if not self.has_weights:
            return None
        n, k = labels.shape
        row = table.column(WEIGHT_COL).to_numpy().astype(np.float32) if self.weighted else np.ones(n, np.float32)
        out = np.repeat(row[:, None], k, axis=1)
        if self.importance is not None:
            task, factor = self.importance
            others = np.arange(k) != task
            out[np.ix_(labels[:, task] == 0.0, others)] *= np.float32(factor)
        return out

    @property
    def slots(self) -> Slots | None:
        if not self.max_len:
            return None
        return Slots(tuple(self.max_len.get(c, 1) for c in self.categorical),
                     tuple(c in self.max_len for c in self.categorical))

    @property
    def n_slots(self) -> int:
        """Columns of the ids matrix (see `Slots`)."""
        return len(self.categorical) + sum(w - 1 for w in self.max_len.values())

    @property
    def row_bytes(self) -> int:
        """Bytes one row takes as tensors (int64 ids and lengths, float32 dense and labels)."""
        weights = len(self.tasks) if self.has_weights else 0
        return 8 * (self.n_slots + len(self.max_len)) + 4 * (len(self.numeric) + len(self.tasks) + weights)

    def rows(self, table: pa.Table) -> Rows:
        ids, lengths = [], []
        for name in self.categorical:
            if name in self.max_len:
                padded, n = pad_lists(table.column(name), self.max_len[name])
                ids.append(padded)
                lengths.append(n)
            else:
                ids.append(table.column(name).to_numpy().astype(np.int64)[:, None])
        n_rows = table.num_rows
        labels = matrix(table, self.tasks, np.float32)
        weights = self.weights(table, labels)
        return Rows(torch.from_numpy(np.concatenate(ids, axis=1) if ids else np.empty((n_rows, 0), np.int64)),
                    torch.from_numpy(np.stack(lengths, axis=1) if lengths else np.empty((n_rows, 0), np.int64)),
                    torch.from_numpy(matrix(table, self.numeric, np.float32)),
                    torch.from_numpy(labels), None if weights is None else torch.from_numpy(weights))

    def batch(self, rows: Rows) -> Batch:
        multi = bool(self.max_len)
        return Batch(self.categorical, rows.ids, rows.dense, rows.labels,
                     rows.lengths if multi else None, self.slots, rows.weights)


def split_filter(split: str) -> ds.Expression:
    return ds.field("split") == split


def open_dataset(features: FeaturesFolder) -> ds.Dataset:
    return ds.dataset(features.data_dir, format="parquet", partitioning="hive")


class SplitData:
    """One split of a model-ready features folder, held as contiguous tensors."""

    def __init__(self, features: FeaturesFolder, split: str,
                 extra_columns: tuple[str, ...] = ()) -> None:
        layout = RowLayout.of(features.info(), split)
        table = open_dataset(features).to_table(columns=layout.columns + list(extra_columns),
                                                filter=split_filter(split))
        self._fill(layout, layout.rows(table),
                   {c: table.column(c).to_numpy(zero_copy_only=False) for c in extra_columns})

    @classmethod
    def from_rows(cls, layout: RowLayout, rows: Rows, extra: dict[str, np.ndarray] | None = None) -> "SplitData":
        out = object.__new__(cls)
        out._fill(layout, rows, extra or {})
        return out

    def _fill(self, layout: RowLayout, rows: Rows, extra: dict[str, np.ndarray]) -> None:
        self.layout, self.rows, self.extra = layout, rows, extra

    @property
    def ids(self) -> torch.Tensor:
        return self.rows.ids

    @property
    def lengths(self) -> torch.Tensor:
        return self.rows.lengths

    @property
    def dense(self) -> torch.Tensor:
        return self.rows.dense

    @property
    def labels(self) -> torch.Tensor:
        return self.rows.labels

    @property
    def weights(self) -> torch.Tensor | None:
        return self.rows.weights

    def __len__(self) -> int:
        return len(self.rows)

    def head(self, n: int) -> "SplitData":
        """The first n rows as a split of their own (views, no copy): short runs, tests."""
        return SplitData.from_rows(self.layout, self.rows[:n], {c: v[:n] for c, v in self.extra.items()})

    def batch(self, index: torch.Tensor) -> Batch:
        return self.layout.batch(self.rows.index_select(index))


class Batchable(Protocol):
    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor) -> Any: ...


@dataclass(frozen=True)
class Shard:
    """This process's part of every global batch: with `world` ranks of batch b, the global
    step-t batch is the single-process step-t batch of size world·b, and rank r takes its
    rows [r·b, (r+1)·b) (the invariant distributed training relies on). A shorter last
    batch is split evenly, so no rank is left without rows while another has b."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in [0, world={self.world})")

    def part(self, size: int) -> slice:
        """This rank's rows of a global batch of `size` rows."""
        return slice(self.rank * size // self.world, (self.rank + 1) * size // self.world)


def steps_per_epoch(rows: int, global_batch: int, drop_last: bool) -> int:
    return rows // global_batch if drop_last else -(-rows // global_batch)


class EpochLoader:
    """What every loader shares: batch size, seeded shuffling, sharding, the epoch."""

    def __init__(self, data: Any, batch_size: int, *, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, shard: Shard = Shard()) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.seed, self.drop_last, self.shard, self.epoch = seed, drop_last, shard, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return steps_per_epoch(len(self.data), self.batch_size * self.shard.world, self.drop_last)

    def __iter__(self) -> Iterator[Any]:
        return self.iterate(0)

    def iterate(self, start: int = 0) -> Iterator[Any]:
        raise NotImplementedError


class BatchLoader(EpochLoader):
    """Iterates a split (anything with `len` and `batch(index)`: `SplitData`, or the image
    and graph splits of MultiMNIST and QM9) in batches; shuffled with a generator seeded
    by (seed, epoch).

    The order of epoch e depends only on (seed, e), so a run resumed at epoch e, or at
    batch i of it (`iterate(start=i)`), sees exactly the batches an uninterrupted run would.
    """

    def iterate(self, start: int = 0) -> Iterator[Any]:
        """The epoch's batches from batch `start` on."""
        n = len(self.data)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        g = self.batch_size * self.shard.world
        for i in range(start, len(self)):
            yield self.data.batch(order[i * g:(i + 1) * g][self.shard.part(min(g, n - i * g))])


def matrix(table: pa.Table, names: list[str], dtype: type) -> np.ndarray:
    """The named columns as one row-major [N, len(names)] array."""
    out = np.empty((table.num_rows, len(names)), dtype=dtype)
    for j, name in enumerate(names):
        out[:, j] = table.column(name).to_numpy(zero_copy_only=False)  # a null becomes NaN
    return out

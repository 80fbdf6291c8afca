"""A split of model-ready Parquet streamed in bounded memory, for logs larger than memory.

An epoch is defined without reading any data, from the row groups' sizes alone:
1. the split's row groups in file order, permuted by a generator seeded by (seed, epoch)
   when shuffling;
2. cut, in that order, into windows of at most `window_rows` rows (the shuffle buffer:
   a window holds row groups drawn from across all files; without shuffling no buffer
   is needed, and windows hold at most SEQUENTIAL_WINDOW_ROWS);
3. each window's rows permuted by a generator seeded by (seed, epoch, window);
4. the windows concatenated and cut into global batches of world·b rows; rank r of a
   `Shard` takes rows [r·b, (r+1)·b) of each.

So batch i of epoch e is a pure function of (seed, e, i): a run resumed in the middle of
an epoch reads only the windows from batch i on and sees exactly the batches an
uninterrupted run would. With shuffling off the stream is the split in file order, the
batches `SplitData` + `BatchLoader(shuffle=False)` give, bit for bit.

Memory: background threads (`prefetch` of them) read and decode the next windows while
the trainer consumes the current one, so at most prefetch + 1 decoded windows and one
Arrow staging copy are alive: `window_rows` is the budget divided by that many rows'
bytes. pyarrow decodes outside the GIL, so the reading overlaps the training step.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch

from mtlrec.features.batches import (Batch, Batchable, BatchLoader, EpochLoader, RowLayout, Rows,
                                     Shard, SplitData, matrix, open_dataset, split_filter)
from mtlrec.features.folder import WEIGHT_COL, FeaturesFolder

log = logging.getLogger(__name__)

DataMode = Literal["auto", "memory", "stream"]
MB = 1 << 20
SEQUENTIAL_WINDOW_ROWS = 65_536  # a window's rows when not shuffling (ingest's row group)


@dataclass(frozen=True)
class RowGroup:
    fragment: ds.ParquetFileFragment
    index: int  # the row group's id in its file
    rows: int

    def read(self, columns: list[str]) -> pa.Table:
        return self.fragment.subset(row_group_ids=[self.index]).to_table(columns=columns)


class StreamSplit:
    """One split of a features folder, read row group by row group (see module docstring)."""

    def __init__(self, features: FeaturesFolder, split: str, *, budget_bytes: int,
                 extra_columns: tuple[str, ...] = (), prefetch: int = 2) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.layout = RowLayout.of(features.info(), split)
        self.keys = self.layout.categorical
        self.extra_columns, self.prefetch, self.split = tuple(extra_columns), prefetch, split
        self._dataset = open_dataset(features)
        self.groups = [RowGroup(fragment, rg.id, rg.num_rows)
                       for fragment in self._dataset.get_fragments(filter=split_filter(split))
                       for rg in fragment.row_groups]
        # prefetch windows in flight + the one being consumed + one Arrow staging copy
        self.window_rows = max(1, budget_bytes // ((prefetch + 2) * self.layout.row_bytes))
        largest = max((g.rows for g in self.groups), default=0)
        if largest > self.window_rows:
            log.warning("%s split: a row group of %d rows exceeds the stream window of %d rows "
                        "(trainer.memory_budget_mb is too small for this file's row groups); "
                        "windows will hold one row group each", split, largest, self.window_rows)

    def __len__(self) -> int:
        return sum(g.rows for g in self.groups)

    @cached_property
    def labels(self) -> torch.Tensor:
        """[N, K] in file order, only these columns read (what evaluation compares with)."""
        return torch.from_numpy(matrix(self._columns(self.layout.tasks), self.layout.tasks, np.float32))

    @cached_property
    def weights(self) -> torch.Tensor | None:
        """[N, K] in file order (None: every row weighs 1)."""
        if not self.layout.has_weights:
            return None
        table = self._columns(self.layout.tasks + ([WEIGHT_COL] if self.layout.weighted else []))
        return torch.from_numpy(self.layout.weights(table, matrix(table, self.layout.tasks, np.float32)))

    @cached_property
    def extra(self) -> dict[str, np.ndarray]:
        """The extra columns (e.g. the group column of the test split), in file order."""
        table = self._columns(list(self.extra_columns))
        return {c: table.column(c).to_numpy(zero_copy_only=False) for c in self.extra_columns}

    def _columns(self, columns: list[str]) -> pa.Table:
        return self._dataset.to_table(columns=columns, filter=split_filter(self.split))

    def sample(self, max_rows: int, seed: int) -> SplitData:
        """An in-memory split of whole row groups drawn at random (seeded) up to `max_rows`
        rows: where a method needs random access to this split (DTJS's dev batches)."""
        order = torch.randperm(len(self.groups), generator=torch.Generator().manual_seed(seed)).tolist()
        picked, rows = [], 0
        for i in order:
            if rows and rows + self.groups[i].rows > max_rows:
                break
            picked.append(self.groups[i])
            rows += self.groups[i].rows
        return SplitData.from_rows(self.layout, self.layout.rows(_read(picked, self.layout.columns)))

    def windows(self, epoch: int, shuffle: bool, seed: int) -> list[list[RowGroup]]:
        """Steps 1–2 of the module docstring."""
        order = (torch.randperm(len(self.groups), generator=_generator(seed, epoch)).tolist()
                 if shuffle else range(len(self.groups)))
        # only shuffling needs a shuffle buffer: reading in order (evaluation, predict) holds
        # small windows, whatever the split's size
        limit = self.window_rows if shuffle else min(self.window_rows, SEQUENTIAL_WINDOW_ROWS)
        out: list[list[RowGroup]] = []
        rows = 0
        for i in order:
            group = self.groups[i]
            if not out or rows + group.rows > limit:
                out.append([])
                rows = 0
            out[-1].append(group)
            rows += group.rows
        return out

    def loader(self, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
               shard: Shard = Shard()) -> "StreamLoader":
        return StreamLoader(self, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, shard=shard)


@dataclass
class _Window:
    """A decoded window and the order its rows are served in."""

    rows: Rows
    order: torch.Tensor
    next: int = 0  # position in `order` of the next row to serve

    @property
    def left(self) -> int:
        return len(self.order) - self.next

    def take(self, n: int) -> Rows:
        index = self.order[self.next:self.next + n]
        self.next += len(index)
        return self.rows.index_select(index)


class StreamLoader(EpochLoader):
    """The batches of a `StreamSplit`, with the interface of `BatchLoader`."""

    data: StreamSplit

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        """The epoch's batches from batch `start` on; only windows from there are read."""
        g = self.batch_size * self.shard.world
        steps = len(self)
        if start >= steps:
            return
        windows = self.data.windows(self.epoch, self.shuffle, self.seed)
        skip, first = start * g, 0  # rows of the epoch stream before the first batch served
        while sum(r.rows for r in windows[first]) <= skip:
            skip -= sum(r.rows for r in windows[first])
            first += 1
        reader = _WindowReader(self, windows, first, skip)
        try:
            for _ in range(start, steps):
                rows = reader.take(g)
                yield self.data.layout.batch(rows[self.shard.part(len(rows))])
        finally:
            reader.close()

    def decode(self, window: list[RowGroup], index: int) -> _Window:
        """Step 3 of the module docstring (runs on a reader thread)."""
        rows = self.data.layout.rows(_read(window, self.data.layout.columns))
        n = len(rows)
        order = (torch.randperm(n, generator=_generator(self.seed, self.epoch, index + 1))
                 if self.shuffle else torch.arange(n))
        return _Window(rows, order)


class _WindowReader:
    """An epoch's windows from `first` on, decoded `prefetch` windows ahead by threads,
    served as one stream of rows starting `skip` rows into the first window."""

    def __init__(self, loader: StreamLoader, windows: list[list[RowGroup]], first: int,
                 skip: int) -> None:
        self.loader, self.windows, self.skip = loader, windows, skip
        self.pool = ThreadPoolExecutor(loader.data.prefetch, thread_name_prefix="stream")
        self.upcoming = iter(range(first, len(windows)))
        self.pending: deque[Future] = deque()
        self.current: _Window | None = None
        for _ in range(loader.data.prefetch):
            self._submit()

    def _submit(self) -> None:
        w = next(self.upcoming, None)
        if w is not None:
            self.pending.append(self.pool.submit(self.loader.decode, self.windows[w], w))

    def take(self, n: int) -> Rows:
        """The next n rows (fewer at the end of the epoch)."""
        pieces: list[Rows] = []
        while n > 0:
            if self.current is None or self.current.left == 0:
                if not self.pending:
                    break
                self.current = self.pending.popleft().result()
                self._submit()
                self.current.next, self.skip = self.skip, 0
                continue
            piece = self.current.take(n)
            n -= len(piece)
            pieces.append(piece)
        return Rows.cat(pieces)

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


def _read(groups: list[RowGroup], columns: list[str]) -> pa.Table:
    tables = [g.read(columns) for g in groups]
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]


def _generator(seed: int, epoch: int, window: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_003 + window)


LogSplit = SplitData | StreamSplit


def open_split(features: FeaturesFolder, split: str, *, mode: DataMode, budget_mb: int,
               extra_columns: tuple[str, ...] = ()) -> LogSplit:
    """The split in memory, or streamed: `auto` streams when its tensors would not fit
    `budget_mb` (`trainer.data`, `trainer.memory_budget_mb`)."""
    if mode == "memory":
        return SplitData(features, split, extra_columns)
    stream = StreamSplit(features, split, budget_bytes=budget_mb * MB, extra_columns=extra_columns)
    if mode == "auto" and len(stream) * stream.layout.row_bytes <= budget_mb * MB:
        return SplitData(features, split, extra_columns)
    return stream


class Loader(Protocol):
    """What the trainer iterates: an epoch's batches, from any batch index on."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def iterate(self, start: int = 0) -> Iterator[Any]: ...


def make_loader(data: Batchable | StreamSplit, batch_size: int, *, shuffle: bool, seed: int = 0,
                drop_last: bool = False, shard: Shard = Shard()) -> Loader:
    """The loader of any split: streamed splits stream, every other split is indexed."""
    if isinstance(data, StreamSplit):
        return data.loader(batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, shard=shard)
    return BatchLoader(data, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, shard=shard)

"""Streaming model-ready Parquet in bounded memory: the same batches as the in-memory
split with shuffling off, every row once per epoch with it on, exact mid-epoch resume,
and the sharding invariant distributed training relies on."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtlrec.features.batches import BatchLoader, Shard, SplitData
from mtlrec.features.folder import FeatureInfo, FeaturesFolder
from mtlrec.features import stream as stream_mod
from mtlrec.features.stream import StreamSplit, make_loader, open_split

FILES, GROUPS, GROUP_ROWS = 3, 5, 97  # ≥ 3 files × ≥ 4 row groups, sizes prime to the batch
CATEGORICAL, NUMERIC, TASKS = ["a", "b", "c"], ["x", "y"], ["ctr", "ctcvr"]


def _rows_in(batch) -> list[int]:
    """Each row's id (the `x` column holds the row's number in file order)."""
    return batch.dense[:, 0].long().tolist()


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> FeaturesFolder:
    """A features folder written directly: FILES files × GROUPS row groups per split,
    row i holding x = i so every batch says which rows it holds."""
    root = tmp_path_factory.mktemp("stream")
    folder = FeaturesFolder(root)
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        out = folder.data_dir / f"split={split}"
        out.mkdir(parents=True)
        n = FILES * GROUPS * GROUP_ROWS
        columns = {c: rng.integers(0, 50, n) for c in CATEGORICAL}
        columns |= {"x": np.arange(n, dtype=np.float32), "y": rng.normal(size=n).astype(np.float32)}
        columns |= {t: rng.integers(0, 2, n).astype(np.int8) for t in TASKS}
        columns["group"] = rng.integers(0, 7, n)
        table = pa.table(columns)
        per_file = GROUPS * GROUP_ROWS
        for f in range(FILES):
            pq.write_table(table.slice(f * per_file, per_file), out / f"part-{f}.parquet",
                           row_group_size=GROUP_ROWS)
    folder.artifacts_dir.mkdir()
    FeatureInfo(CATEGORICAL, NUMERIC, TASKS, {c: 50 for c in CATEGORICAL}).save(folder.artifacts_dir)
    return folder


def _stream(features: FeaturesFolder, window_groups: float = 2.5, split: str = "train") -> StreamSplit:
    """A stream whose windows hold about `window_groups` row groups."""
    row_bytes = 8 * len(CATEGORICAL) + 4 * (len(NUMERIC) + len(TASKS))
    return StreamSplit(features, split, budget_bytes=int(window_groups * GROUP_ROWS * 4 * row_bytes))


def test_the_stream_reads_every_file_and_row_group(features):
    stream = _stream(features)
    assert len(stream.groups) == FILES * GROUPS and len(stream) == FILES * GROUPS * GROUP_ROWS
    assert 1 < len(stream.windows(0, shuffle=True, seed=0)) < len(stream.groups)


def test_only_a_shuffled_read_holds_budget_sized_windows(features, monkeypatch):
    monkeypatch.setattr(stream_mod, "SEQUENTIAL_WINDOW_ROWS", 2 * GROUP_ROWS)
    stream = _stream(features, window_groups=100)  # a budget larger than the split
    assert len(stream.windows(0, shuffle=True, seed=0)) == 1
    in_order = stream.windows(0, shuffle=False, seed=0)  # evaluation: two row groups a window
    assert [len(w) for w in in_order] == [2] * (FILES * GROUPS // 2) + [1] * (FILES * GROUPS % 2)
    assert [g for w in in_order for g in w] == stream.groups


@pytest.mark.parametrize("batch_size", [64, 100, 1000])
def test_unshuffled_stream_equals_the_in_memory_batches_bit_for_bit(features, batch_size):
    memory = list(BatchLoader(SplitData(features, "train"), batch_size, shuffle=False))
    streamed = list(make_loader(_stream(features), batch_size, shuffle=False))
    assert len(streamed) == len(memory)
    for m, s in zip(memory, streamed):
        assert s.keys == m.keys
        assert torch.equal(s.ids, m.ids) and torch.equal(s.dense, m.dense) and torch.equal(s.labels, m.labels)


@pytest.mark.parametrize("epoch", [0, 1])
def test_shuffled_stream_serves_every_row_exactly_once_per_epoch(features, epoch):
    loader = make_loader(_stream(features), 128, shuffle=True, seed=3)
    loader.set_epoch(epoch)
    seen = [r for batch in loader for r in _rows_in(batch)]
    assert sorted(seen) == list(range(FILES * GROUPS * GROUP_ROWS))
    assert seen != sorted(seen)  # shuffled, and across files: the first batch mixes row groups
    first = {r // GROUP_ROWS for r in seen[:128]}
    assert len(first) >= 2


def test_shuffled_epochs_differ_and_repeat_for_the_same_seed(features):
    def order(epoch: int, seed: int = 3) -> list[int]:
        loader = make_loader(_stream(features), 128, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return [r for batch in loader for r in _rows_in(batch)]

    assert order(0) == order(0) and order(0) != order(1) and order(0, seed=4) != order(0)


@pytest.mark.parametrize("start", [0, 1, 5, 11])
def test_resuming_in_the_middle_of_an_epoch_gives_the_remaining_batches(features, start):
    loader = make_loader(_stream(features, window_groups=1.5), 120, shuffle=True, seed=9)
    loader.set_epoch(2)
    every = [_rows_in(b) for b in loader]
    assert [_rows_in(b) for b in loader.iterate(start)] == every[start:]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "memory"])
def test_ranks_batches_together_are_the_single_process_batch(features, world, streamed):
    """For W ranks of batch b, the union of the ranks' step-t batches is the single-process
    step-t batch of size W·b (with shuffling, so the order is the same too)."""
    b = 50

    def loader(batch_size: int, shard: Shard):
        data = _stream(features) if streamed else SplitData(features, "train")
        out = make_loader(data, batch_size, shuffle=True, seed=5, shard=shard)
        out.set_epoch(1)
        return out

    single = [_rows_in(batch) for batch in loader(world * b, Shard())]
    ranks = [[_rows_in(batch) for batch in loader(b, Shard(r, world))] for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)
    for t, whole in enumerate(single):
        assert [row for r in range(world) for row in ranks[r][t]] == whole


def test_a_shard_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2"):
        Shard(2, 2)


def test_labels_and_extra_columns_come_in_file_order(features):
    stream = StreamSplit(features, "valid", budget_bytes=1 << 20, extra_columns=("group",))
    memory = SplitData(features, "valid", extra_columns=("group",))
    assert torch.equal(stream.labels, memory.labels)
    np.testing.assert_array_equal(stream.extra["group"], memory.extra["group"])


def test_sample_holds_whole_row_groups_up_to_the_cap(features):
    sample = _stream(features, split="valid").sample(300, seed=1)
    rows = sample.dense[:, 0].long().tolist()
    assert len(rows) == 3 * GROUP_ROWS  # three whole groups fit in 300 rows, four do not
    assert {r // GROUP_ROWS for r in rows} == {r // GROUP_ROWS for r in rows[::GROUP_ROWS]}


@pytest.mark.parametrize("budget_mb, expected", [(64, SplitData), (0, StreamSplit)])
def test_auto_streams_only_what_does_not_fit_the_budget(features, budget_mb, expected):
    assert isinstance(open_split(features, "train", mode="auto", budget_mb=budget_mb), expected)

"""Splits of the ingested data, and the batch reader (KJT + dense + labels)."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from helpers import good_rows, small_spec, write_csv
from mtlrec.features.batches import BatchLoader, SplitData
from mtlrec.features.ingest import ingest


@pytest.fixture
def ingested(tmp_path):
    csv = write_csv(tmp_path / "logs.csv", good_rows(1000))
    return ingest(small_spec(str(csv)), tmp_path / "out")


def _split_of(out) -> dict[str, str]:
    data = pl.read_parquet(out.data_dir, hive_partitioning=True)
    return dict(zip(data["sid"].to_list(), data["split"].to_list()))


def test_random_split_is_seeded_and_stable_when_files_are_added(tmp_path):
    a = write_csv(tmp_path / "a.csv", good_rows(1000))
    first = _split_of(ingest(small_spec(str(tmp_path / "a.csv")), tmp_path / "o1"))
    assert 0.15 < sum(s == "valid" for s in first.values()) / 1000 < 0.25
    write_csv(tmp_path / "b.csv", good_rows(500, start=1000))
    both = _split_of(ingest(small_spec(str(tmp_path / "*.csv")), tmp_path / "o2"))
    assert all(both[k] == v for k, v in first.items())  # adding a file moved nothing
    other_seed = _split_of(ingest(small_spec(str(a), split={"seed": 1}), tmp_path / "o3"))
    assert other_seed != first


def test_tail_split_takes_the_last_rows(tmp_path):
    csv = write_csv(tmp_path / "a.csv", good_rows(100))
    split = _split_of(ingest(small_spec(str(csv), split={"method": "tail", "valid_fraction": 0.1}),
                             tmp_path / "o"))
    assert sorted(int(k) for k, v in split.items() if v == "valid") == list(range(90, 100))


def test_day_split_and_day_partitions(tmp_path):
    header = ["sid", "cat_a", "cat_b", "num_x", "num_y", "click", "conversion", "day"]
    for d in range(4):
        rows = [r + [f"2026-11-0{d + 1}"] for r in good_rows(50, start=50 * d)]
        write_csv(tmp_path / f"day{d}.csv", rows, header=header)
    spec = small_spec(str(tmp_path / "day*.csv"), day="day",
                      split={"method": "day", "valid_days": 1, "test_days": 1})
    out = ingest(spec, tmp_path / "o")
    assert out.manifest["split_rows"] == {"train": 100, "valid": 50, "test": 50}
    assert (out.data_dir / "split=test" / "day=2026-11-04").is_dir()
    assert (out.data_dir / "split=train" / "day=2026-11-01").is_dir()


def test_stats_and_vocab_use_the_training_split_only(tmp_path):
    header = ["sid", "cat_a", "cat_b", "num_x", "num_y", "click", "conversion", "day"]
    rows = [r + ["2026-11-01"] for r in good_rows(50)]
    rows += [[str(100 + i), "only_in_test", "b", "1000", "1", "0", "0", "2026-11-02"] for i in range(5)]
    write_csv(tmp_path / "d.csv", rows, header=header)
    spec = small_spec(str(tmp_path / "d.csv"), day="day",
                      split={"method": "day", "valid_days": 0, "test_days": 1})
    out = ingest(spec, tmp_path / "o")
    vocab = pl.read_parquet(out.artifacts_dir / "vocab.parquet")
    assert "only_in_test" not in vocab["value"].to_list()
    test = pl.read_parquet(out.data_dir / "split=test", hive_partitioning=True)
    assert (test["cat_a"] == 0).all()  # OOV in test


def test_batches_are_kjt_dense_labels(ingested):
    data = SplitData(ingested, "train")
    loader = BatchLoader(data, batch_size=64, shuffle=False)
    batch = next(iter(loader))
    kjt = batch.sparse
    assert kjt.keys() == ["cat_a", "cat_b"]
    assert kjt.stride() == 64 and kjt.lengths().tolist() == [1] * 128
    assert torch.equal(kjt["cat_b"].values(), batch.ids[:, 1])
    assert batch.dense.dtype == torch.float32 and batch.dense.shape == (64, 2)
    assert batch.labels.dtype == torch.float32 and batch.labels.shape == (64, 2)
    frame = pl.read_parquet(ingested.data_dir / "split=train")
    assert batch.ids[:, 0].tolist() == frame["cat_a"][:64].to_list()
    assert torch.allclose(batch.labels[:, 0], torch.tensor(frame["ctr"][:64].to_numpy()))
    assert len(loader) == -(-len(data) // 64)


def test_shuffling_is_seeded_per_epoch_and_covers_every_row(ingested):
    data = SplitData(ingested, "train", extra_columns=())
    def order(seed: int, epoch: int) -> list[float]:
        loader = BatchLoader(data, batch_size=100, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([b.dense[:, 0] * 1000 + b.ids[:, 1] for b in loader]).tolist()
    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 0)) == sorted(order(1, 1))
    assert len(order(1, 0)) == len(data)

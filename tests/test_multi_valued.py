"""Multi-valued categorical fields from raw logs to model inputs: a Parquet list column and
a delimited string give the same ids, the vocabulary counts elements, bad lists are
quarantined, long lists are cut and counted, batches carry the real lengths, and a
served request may send a JSON list or the joined string."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from mtlrec.features.batches import SplitData
from mtlrec.features.errors import DataError
from mtlrec.features.ingest import IngestOptions, ingest
from mtlrec.features.online import OnlineTransform
from mtlrec.features.spec import DataSpec
from mtlrec.features.transform import FeatureTransform
from mtlrec.features.vocab import FIRST_ID, MISSING_ID
from mtlrec.serving import rows

TAGS = ["a|b", "b", None, "c|b|a|d|e", "b|a", "", "a||b", "b|c", "d", "a"]  # row 6 is bad


def _spec(fmt: str, path: str, max_len: int = 3) -> DataSpec:
    return DataSpec.model_validate({
        "name": "lists", "source": {"format": fmt, "train": path},
        "categorical": [{"name": "shop"},
                        {"name": "tags", "multi": True, "separator": "|", "max_len": max_len,
                         "pooling": "sum"}],
        "numeric": [{"name": "price"}],
        "labels": [{"name": "ctr", "column": "click"}],
        "split": {"method": "tail", "valid_fraction": 0.2}, "checks": {"max_reject_ratio": 0.5},
    })


def _frame() -> pl.DataFrame:
    n = len(TAGS)
    return pl.DataFrame({"shop": [f"s{i % 3}" for i in range(n)], "tags": TAGS,
                         "price": [float(i) for i in range(n)], "click": [i % 2 for i in range(n)]})


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """The same rows as CSV (joined strings) and as Parquet (a list column)."""
    root = tmp_path_factory.mktemp("lists")
    _frame().write_csv(root / "logs.csv")
    lists = [None if t is None else [] if t == "" else t.split("|") for t in TAGS]
    as_lists = _frame().with_columns(pl.Series("tags", lists, dtype=pl.List(pl.String)))
    as_lists.write_parquet(root / "logs.parquet")
    csv = ingest(_spec("csv", str(root / "logs.csv")), root / "f-csv")
    parquet = ingest(_spec("parquet", str(root / "logs.parquet")), root / "f-parquet")
    return root, csv, parquet


def _all_rows(features) -> pl.DataFrame:
    return pl.read_parquet(features.data_dir / "**/*.parquet", hive_partitioning=True).sort("price")


def test_a_list_column_and_a_joined_string_give_the_same_ids(ingested):
    _, csv, parquet = ingested
    a, b = _all_rows(csv), _all_rows(parquet)
    assert a["tags"].to_list() == b["tags"].to_list()
    assert csv.manifest["table_sizes"] == parquet.manifest["table_sizes"]


def test_the_vocabulary_counts_elements_and_lists_keep_their_head(ingested):
    _, csv, _ = ingested
    vocab = FeatureTransform.load(csv.artifacts_dir).vocabularies["tags"]
    # train rows (first 80% of the 9 good rows): elements b ×5, a ×4, c ×2 (d is row 3's 4th: cut)
    counts = dict(zip(vocab["value"], vocab["count"]))
    assert counts["b"] >= counts["a"] >= counts["c"] and "e" not in counts
    ids = dict(zip(vocab["value"], vocab["id"]))
    got = _all_rows(csv)["tags"].to_list()
    assert got[0] == [ids["a"], ids["b"]]
    assert got[2] == [MISSING_ID] and got[5] == [MISSING_ID]  # null and "" are one missing id
    assert got[3] == [ids["c"], ids["b"], ids["a"]]  # max_len 3 keeps the head
    assert ids["b"] == FIRST_ID  # the most frequent element first
    assert csv.manifest["lists_truncated"] == {"tags": 1}


def test_an_empty_element_is_quarantined_with_its_reason(ingested):
    _, csv, parquet = ingested
    for features in (csv, parquet):
        bad = pl.read_parquet(features.quarantine_file)
        assert bad.height == 1 and "tags: empty element in the list 'a||b'" in bad["reason"][0]


def test_an_undeclared_list_column_is_an_error_naming_it(ingested, tmp_path):
    root, _, _ = ingested
    spec = _spec("parquet", str(root / "logs.parquet"))
    single = spec.categorical[1].model_copy(update={"multi": False})
    with pytest.raises(DataError, match="column 'tags' holds lists; declare it"):
        ingest(spec.model_copy(update={"categorical": [spec.categorical[0], single]}), tmp_path / "out")


def test_batches_carry_padded_ids_and_real_lengths(ingested):
    _, csv, _ = ingested
    train = SplitData(csv, "train")
    assert train.ids.shape == (len(train), 1 + 3) and train.lengths.shape == (len(train), 1)
    batch = train.batch(torch.arange(len(train)))
    kjt = batch.sparse
    assert kjt.keys() == ["shop", "tags"]
    expected = [len(r) for r in _all_rows(csv).filter(pl.col("split") == "train")
                .sort("price")["tags"].to_list()]
    lengths = kjt["tags"].lengths().tolist()
    assert sorted(lengths) == sorted(expected) and kjt["shop"].lengths().tolist() == [1] * len(train)
    # the jagged values are exactly the padded row's first `length` ids
    values, at = kjt["tags"].values().tolist(), 0
    for row, n in enumerate(lengths):
        assert values[at:at + n] == train.ids[row, 1:1 + n].tolist()
        at += n


def test_a_served_list_or_joined_string_encode_the_same(ingested):
    _, csv, _ = ingested
    transform = FeatureTransform.load(csv.artifacts_dir)
    as_lists = [{"shop": "s1", "tags": ["a", "b"], "price": 1.0}, {"shop": "s1", "tags": [], "price": 1.0},
                {"shop": "s2", "tags": ["c", 7, "zz", "b"], "price": 2.0}]
    as_strings = [{"shop": "s1", "tags": "a|b", "price": 1.0}, {"shop": "s1", "tags": None, "price": 1.0},
                  {"shop": "s2", "tags": "c|7|zz|b", "price": 2.0}]
    online = OnlineTransform(transform)
    a = online.encode(rows.from_json(as_lists, transform))
    b = online.encode(rows.from_json(as_strings, transform))
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    assert a.lengths[:, 0].tolist() == [2, 1, 3] and a.ids.shape == (3, 4)
    frame = rows.from_frame(pl.DataFrame({"shop": ["s1"], "tags": [["a", "b"]], "price": [1.0]}),
                            transform, 0)
    np.testing.assert_array_equal(transform.to_numpy(frame).ids, a.ids[:1])
    joined = rows.from_frame(pl.DataFrame({"shop": ["s1", "s2"], "tags": ["a|b", "c|7|zz|b"], "price": [1.0, 2.0]}),
                             transform, 0)
    np.testing.assert_array_equal(transform.to_numpy(joined).ids, a.ids[[0, 2]])


@pytest.mark.parametrize("value, message", [
    ("a||b", "empty element in the list 'a||b'"),
    ([1.5], "list elements must be strings or integers, got a fractional number"),
    ({"x": 1}, "expected a list, a string or null, got an object"),
])
def test_a_bad_served_list_names_the_row_and_field(ingested, value, message):
    _, csv, _ = ingested
    transform = FeatureTransform.load(csv.artifacts_dir)
    good = {"shop": "s1", "tags": "a", "price": 1.0}
    with pytest.raises(rows.RowError, match=f"row 1, field 'tags': {message}"):
        rows.from_json([good, good | {"tags": value}], transform)


def test_staging_follows_the_parsed_size_not_the_compressed_file(tmp_path):
    """A compressed Parquet file is much smaller than its rows in memory: whether ingest
    keeps them in memory is decided by its uncompressed columns (twice, as strings)."""
    frame = pl.concat([_frame().with_columns(pl.col("tags").fill_null("a"))] * 2000)
    frame.with_columns(pl.col("tags").str.split("|")).write_parquet(tmp_path / "logs.parquet",
                                                                    compression="zstd")
    meta = pq.read_metadata(tmp_path / "logs.parquet")
    columns = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    on_disk = (tmp_path / "logs.parquet").stat().st_size
    assert on_disk * 4 < columns  # the case this test is about
    between = (on_disk + columns) / 2**20  # file × 2 fits, columns × 2 does not
    spec = _spec("parquet", str(tmp_path / "logs.parquet"))
    staged = ingest(spec, tmp_path / "staged", IngestOptions(in_memory_max_mb=between))
    held = ingest(spec, tmp_path / "held", IngestOptions(in_memory_max_mb=4 * columns / 2**20))
    assert staged.manifest["in_memory"] is False and held.manifest["in_memory"] is True
    assert _all_rows(staged).equals(_all_rows(held))

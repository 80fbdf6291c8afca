"""Hostile input files at ingest and at the raw-rows reader (`features.raw.read`): old-Mac
line endings, a byte-order mark, a stray quote, a file that disappears mid-run, binary
and unreadable files. Each is either read correctly, with every row accounted for
(rows read = good + quarantined), or a one-line DataError naming the file."""

from __future__ import annotations

import bz2
from pathlib import Path

import polars as pl
import pytest
import yaml

from helpers import HEADER, good_rows, read_quarantine, small_spec
from mtlrec.features import raw
from mtlrec.features.errors import DataError
from mtlrec.features.ingest import ingest


def _text(rows: list[list[str]], header: bool = True, eol: str = "\n") -> bytes:
    lines = ([",".join(HEADER)] if header else []) + [",".join(r) for r in rows]
    return (eol.join(lines) + eol).encode()


def _ingest(tmp_path: Path, path: Path, out: str = "out", **spec_changes) -> tuple[dict, pl.DataFrame]:
    result = ingest(small_spec(str(path), **spec_changes), tmp_path / out)
    m = result.manifest
    assert m["rows_good"] + m["rows_quarantined"] == m["rows_read"]
    assert sum(m["split_rows"].values()) == m["rows_good"]
    return m, read_quarantine(tmp_path / out)


# ------------------------------------------------------------------ line endings


def test_cr_only_and_crlf_files_read_like_lf(tmp_path):
    rows = good_rows(30) + [["500", "a1", "b1", "abc", "3", "0", "0"]]
    seen = {}
    for name, eol in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        path = tmp_path / f"{name}.csv"
        path.write_bytes(_text(rows, eol=eol))
        m, q = _ingest(tmp_path, path, out=name)
        seen[name] = (m["rows_read"], m["rows_quarantined"], q["line"].to_list(),
                      q["reason"].to_list())
        good = pl.read_parquet(raw.read(small_spec(str(path)), str(path), tmp_path / f"{name}.parquet").good_file)
        assert good.height == 30 and good["conversion"].str.contains("\r").sum() == 0
    expected = (31, 1, [32], ["num_x: unparseable number 'abc'"])
    assert seen["cr"] == seen["crlf"] == seen["lf"] == expected


def test_cr_only_file_cut_short_is_a_truncated_line(tmp_path):
    path = tmp_path / "cut.csv"
    path.write_bytes(_text(good_rows(30), eol="\r") + b"999,a1,b2,0.5")  # no final CR
    m, q = _ingest(tmp_path, path)
    assert (m["rows_read"], m["rows_quarantined"]) == (31, 1)
    assert q["line"].to_list() == [32] and "truncated last line" in q["reason"][0]


# ------------------------------------------------------------------ byte-order mark


def test_utf8_bom_is_stripped_with_and_without_header(tmp_path):
    with_header = tmp_path / "bom.csv"
    with_header.write_bytes(b"\xef\xbb\xbf" + _text(good_rows(20)))
    m, _ = _ingest(tmp_path, with_header)
    assert (m["rows_read"], m["rows_good"]) == (20, 20)

    headerless = tmp_path / "bom_nohead.csv"
    headerless.write_bytes(b"\xef\xbb\xbf" + _text(good_rows(20), header=False))
    source = {"train": str(headerless), "has_header": False, "columns": HEADER}
    m, _ = _ingest(tmp_path, headerless, out="out2", source=source)
    assert (m["rows_read"], m["rows_good"]) == (20, 20)
    good = pl.read_parquet(raw.read(small_spec(str(headerless), source=source), str(headerless),
                                    tmp_path / "good.parquet").good_file)
    assert good["sid"][0] == "0"


# ------------------------------------------------------------------ stray quotes


@pytest.mark.parametrize("at", [0, 10, 20])  # first data line, middle, last line
def test_one_unterminated_quote_quarantines_only_its_line(tmp_path, at):
    rows = good_rows(20)
    rows[3][1] = '"a,3"'  # a quoted separator: must still be one field
    rows.insert(at, ["500", '"a1', "b1", "1", "2", "0", "0"])
    path = tmp_path / "quote.csv"
    path.write_bytes(_text(rows))
    m, q = _ingest(tmp_path, path)
    assert (m["rows_read"], m["rows_good"], m["rows_quarantined"]) == (21, 20, 1)
    assert m["quarantine_reasons"] == {"unterminated quote": 1}
    assert q["line"].to_list() == [at + 2]  # header is line 1
    assert q["reason"][0].startswith("unterminated quote")
    assert q.row(0)[3:] == ("500", '"a1', "b1", "1", "2", "0", "0")  # split without quoting

    rows_read = raw.read(small_spec(str(path)), str(path), tmp_path / "good.parquet")
    good = pl.read_parquet(rows_read.good_file)
    assert good.height == rows_read.rows_good == 20 and rows_read.quarantine["line"].to_list() == [at + 2]
    assert "a,3" in good["cat_a"].to_list()
    assert sorted(good["sid"].cast(int).to_list()) == list(range(20))


def test_many_unbalanced_quotes_suggest_the_quote_setting(tmp_path):
    rows = [[str(i), f'{i}" screen', "b", "1", "2", "0", "0"] for i in range(150)]
    path = tmp_path / "inches.csv"
    path.write_bytes(_text(rows))
    with pytest.raises(DataError, match=r"inches.csv: more than 100 lines have an odd number of "
                                        r"'\"'.*data.source.quote_char") as err:
        ingest(small_spec(str(path)), tmp_path / "out")
    assert len(str(err.value)) < 1000
    m, _ = _ingest(tmp_path, path, source={"train": str(path), "quote_char": None})
    assert m["rows_good"] == 150


# ------------------------------------------------------------------ long values and messages


def test_a_long_value_is_cut_in_the_reason_but_kept_in_the_quarantine(tmp_path):
    long_value = "x" * 5000
    path = tmp_path / "long.csv"
    path.write_bytes(_text(good_rows(20) + [["500", "a1", "b1", long_value, "2", "0", "0"]]))
    _, q = _ingest(tmp_path, path)
    assert q["reason"].to_list() == ["num_x: unparseable number '" + "x" * 200 + "…'"]
    assert q["num_x"][0] == long_value  # the quarantine keeps the whole value


def test_a_data_error_message_is_capped_at_1kb(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_bytes(_text(good_rows(3)).replace(b"conversion", b"conversion," + b"y" * 5000, 1))
    with pytest.raises(DataError) as err:
        ingest(small_spec(str(path)), tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith(f"{path}: unexpected columns") and len(msg) <= 1000
    assert msg.endswith(" characters)") and "… (cut from" in msg


# ------------------------------------------------------------------ files that go away

REMOVED = r"b.csv: the file was removed or renamed after it was listed"


def test_a_file_removed_after_planning_is_a_data_error_naming_it(tmp_path, monkeypatch):
    from mtlrec.features import ingest as ingest_module

    for name, start in (("a.csv", 0), ("b.csv", 100)):
        (tmp_path / name).write_bytes(_text(good_rows(20, start)))
    planned = ingest_module.open_inputs

    def open_then_remove(*args, **kwargs):
        files = planned(*args, **kwargs)
        (tmp_path / "b.csv").unlink()
        return files

    monkeypatch.setattr(ingest_module, "open_inputs", open_then_remove)
    with pytest.raises(DataError, match=REMOVED):
        ingest(small_spec(str(tmp_path / "*.csv")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_removed_during_the_read_is_a_data_error_naming_it(tmp_path, monkeypatch):
    for name, start in (("a.csv", 0), ("b.csv", 100)):
        (tmp_path / name).write_bytes(_text(good_rows(20, start)))
    scan = raw.scan

    def scan_then_remove(f, *args, **kwargs):
        frame = scan(f, *args, **kwargs)  # the query is planned, the file not yet read
        if f.path.name == "b.csv":
            f.path.unlink()
        return frame

    monkeypatch.setattr(raw, "scan", scan_then_remove)
    with pytest.raises(DataError, match=REMOVED):
        raw.read(small_spec("unused"), str(tmp_path / "*.csv"), tmp_path / "good.parquet")


# ------------------------------------------------------------------ not CSV at all


def _bzip2_csv() -> bytes:
    """A CSV compressed with bzip2 (only gzip is read) but still named .csv."""
    return bz2.compress(_text(good_rows(200)))


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(256)


@pytest.mark.parametrize("content", [_bzip2_csv(), PNG], ids=["bzip2", "png"])
def test_a_binary_file_named_csv_is_a_data_error(tmp_path, content):
    path = tmp_path / "logs.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"logs.csv: not a text file"):
        ingest(small_spec(str(path)), tmp_path / "out")


def test_an_unreadable_file_is_a_data_error(tmp_path):
    path = tmp_path / "locked.csv"
    path.write_bytes(_text(good_rows(5)))
    path.chmod(0)
    try:
        path.open("rb").close()
        pytest.skip("this user reads files without read permission (root)")
    except PermissionError:
        pass
    with pytest.raises(DataError, match=r"locked.csv: cannot be read \(Permission denied\)"):
        ingest(small_spec(str(path)), tmp_path / "out")


def test_cli_reports_a_hostile_file_in_one_line(tmp_path, capsys):
    from mtlrec.pipeline.cli import main

    conf = tmp_path / "conf"
    (conf / "data").mkdir(parents=True)
    (conf / "data" / "logs.csv").write_bytes(_bzip2_csv())
    spec = small_spec("logs.csv").model_dump(mode="json", exclude_defaults=True)
    (conf / "data" / "hostile.yaml").write_text(yaml.safe_dump(spec | {"name": "hostile"}))
    code = main(["--config-dir", str(conf), "ingest", "data=hostile", f"paths.work_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("mtlrec ingest: error: ")
    assert "logs.csv: not a text file" in lines[-1]

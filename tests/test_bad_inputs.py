"""The corpus of broken inputs: each gives a clear error or quarantined rows with reasons;
never a traceback, never a lost row (good + quarantined = rows in the file)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from helpers import HEADER, good_rows, read_quarantine, small_spec, write_csv
from mtlrec.features import raw, validate
from mtlrec.features.errors import DataError
from mtlrec.features.ingest import ingest


def _ingest(tmp_path: Path, csv: Path, **spec_changes):
    out = tmp_path / "out"
    result = ingest(small_spec(str(csv), **spec_changes), out)
    m = result.manifest
    assert m["rows_good"] + m["rows_quarantined"] == m["rows_read"]
    assert sum(m["split_rows"].values()) == m["rows_good"]
    return result, read_quarantine(out)


def _with_bad(tmp_path: Path, bad: list[list[str]], n_good: int = 50, **kw) -> tuple:
    rows = good_rows(n_good) + bad
    csv = write_csv(tmp_path / "logs.csv", rows, **kw)
    return _ingest(tmp_path, csv)


def test_empty_zero_byte_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.csv: the file is empty \(0 bytes\)"):
        ingest(small_spec(str(empty)), tmp_path / "out")


def test_header_only_file_is_a_clear_error(tmp_path):
    csv = write_csv(tmp_path / "h.csv", [])
    with pytest.raises(DataError, match="no data rows"):
        ingest(small_spec(str(csv)), tmp_path / "out")


def test_no_matching_file_names_the_config_key(tmp_path):
    with pytest.raises(DataError, match=r"data.source.train=.*nothing-\*\.csv"):
        ingest(small_spec(str(tmp_path / "nothing-*.csv")), tmp_path / "out")


def test_truncated_last_line_is_quarantined(tmp_path):
    rows = good_rows(30) + [["999", "a1", "b2", "0.5"]]  # cut after the 4th field
    csv = write_csv(tmp_path / "cut.csv", rows, final_newline=False)
    result, q = _ingest(tmp_path, csv)
    assert result.manifest["rows_read"] == 31
    assert q.height == 1 and q["line"][0] == 32  # header is line 1
    assert "truncated last line" in q["reason"][0]
    assert q["sid"][0] == "999" and q["num_x"][0] == "0.5"


def test_wrong_delimiter_names_the_right_one(tmp_path):
    csv = write_csv(tmp_path / "semi.csv", good_rows(5), sep=";")
    with pytest.raises(DataError, match=r"separator ';', not the configured ','"):
        ingest(small_spec(str(csv)), tmp_path / "out")


def test_wrong_delimiter_headerless(tmp_path):
    csv = write_csv(tmp_path / "semi.csv", good_rows(5), header=None, sep="|")
    spec = small_spec(str(csv), source={"train": str(csv), "has_header": False, "columns": HEADER})
    with pytest.raises(DataError, match=r"line 1 has 1 fields.*separator '\|'"):
        ingest(spec, tmp_path / "out")


def test_header_mismatch_names_missing_and_extra_columns(tmp_path):
    header = ["sid", "cat_a", "cat_c", "num_x", "num_y", "click", "conversion", "extra_col"]
    csv = write_csv(tmp_path / "h.csv", [r + ["x"] for r in good_rows(5)], header=header)
    with pytest.raises(DataError) as err:
        ingest(small_spec(str(csv)), tmp_path / "out")
    msg = str(err.value)
    assert "missing columns ['cat_b']" in msg
    assert "unexpected columns ['cat_c', 'extra_col']" in msg


def test_non_utf8_bytes_are_quarantined(tmp_path):
    csv = tmp_path / "latin.csv"
    text = "\n".join([",".join(HEADER)] + [",".join(r) for r in good_rows(20)]) + "\n"
    csv.write_bytes(text.encode() + b"77,caf\xe9,b1,1.0,2,0,0\n")
    result, q = _ingest(tmp_path, csv)
    assert q.height == 1
    assert "cat_a: invalid UTF-8" in q["reason"][0]
    assert result.manifest["quarantine_reasons"] == {"invalid utf-8": 1}


@pytest.mark.parametrize(
    ("value", "kind"),
    [("1e999", "non-finite number"), ("-1e999", "non-finite number"), ("nan", "non-finite number"),
     ("inf", "non-finite number"), ("abc", "unparseable number"), ("1.2.3", "unparseable number")],
)
def test_bad_numbers_are_quarantined_with_the_value(tmp_path, value, kind):
    result, q = _with_bad(tmp_path, [["500", "a1", "b1", value, "3", "0", "0"]])
    assert q.height == 1
    assert q["num_x"][0] == value  # original string kept
    assert f"num_x: {kind} '{value}'" in q["reason"][0]
    assert result.manifest["quarantine_reasons"] == {kind: 1}


def test_nonfinite_as_missing_when_allowed(tmp_path):
    rows = good_rows(40) + [["500", "a1", "b1", "nan", "3", "0", "0"]]
    csv = write_csv(tmp_path / "l.csv", rows)
    spec = small_spec(str(csv), numeric=[{"name": "num_x", "nonfinite": "missing"}, {"name": "num_y"}])
    result = ingest(spec, tmp_path / "out")
    assert result.manifest["rows_quarantined"] == 0


@pytest.mark.parametrize("label", ["-1", "2", "yes", "0.5"])
def test_labels_outside_0_1_are_quarantined(tmp_path, label):
    result, q = _with_bad(tmp_path, [["500", "a1", "b1", "1", "3", label, "0"]])
    assert q.height == 1
    assert f"click: label must be 0 or 1, got '{label}'" in q["reason"][0]


def test_conversion_without_click_is_quarantined(tmp_path):
    result, q = _with_bad(tmp_path, [["500", "a1", "b1", "1", "3", "0", "1"]])
    assert q["reason"].to_list() == ["conversion = 1 requires click = 1"]
    assert result.manifest["quarantine_reasons"] == {"conversion without click": 1}


def test_missing_label_and_required_field(tmp_path):
    rows = good_rows(40) + [["500", "", "b1", "1", "3", "", "0"]]
    csv = write_csv(tmp_path / "l.csv", rows)
    spec = small_spec(str(csv), categorical=[{"name": "cat_a", "required": True}, {"name": "cat_b"}])
    result = ingest(spec, tmp_path / "out")
    q = read_quarantine(tmp_path / "out")
    assert q["reason"][0] == "cat_a: missing required value; click: missing required value"
    assert result.manifest["quarantine_reasons"] == {"missing required field": 1}


def test_duplicate_ids_keep_the_first(tmp_path):
    result, q = _with_bad(tmp_path, [["7", "a1", "b1", "1", "3", "0", "0"],
                                     ["7", "a2", "b2", "2", "4", "0", "0"]])
    assert q.height == 2
    assert set(q["line"].to_list()) == {52, 53}  # the original id 7 (line 9) stays good
    assert all("sid: duplicate id '7'" in r for r in q["reason"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_ids_checked_in_hash_buckets_find_exactly_the_repeats_of_a_whole_check(tmp_path, monkeypatch, fmt):
    """Inputs too large to check their ids in one piece are checked bucket by bucket: the
    same rows are quarantined, across files and in input order (the first stays good)."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):  # ids drawn with repeats, within and across files
        rows = good_rows(200, start=1000 * k)
        for r in rows:
            r[0] = str(rng.integers(0, 400))
        rows[5][0] = ""  # a missing id is not a repeat
        rows[9][0] = ""
        path = write_csv(folder / f"part-{k}.csv", rows)
        if fmt == "parquet":
            pl.read_csv(path, infer_schema=False).write_parquet(folder / f"part-{k}.parquet")
            path.unlink()
    spec = small_spec(str(folder / f"part-*.{fmt}"), source={"train": str(folder / f"part-*.{fmt}"),
                                                             "format": fmt},
                      checks={"unique_id": True, "max_reject_ratio": 1.0})
    whole = raw.read(spec, spec.source.train, tmp_path / "whole.parquet").quarantine
    monkeypatch.setattr(validate, "ID_CHECK_MAX_BYTES", 600 * validate.ID_BYTES_PER_ROW // 7)  # 7 buckets
    scratch_folders = []
    made = validate.tempfile.TemporaryDirectory
    monkeypatch.setattr(validate.tempfile, "TemporaryDirectory",
                        lambda **kw: scratch_folders.append(kw) or made(**kw))
    bucketed = raw.read(spec, spec.source.train, tmp_path / "bucketed.parquet").quarantine
    assert len(scratch_folders) == 1  # the bucketed check ran
    assert bucketed.equals(whole)
    dups = whole.filter(pl.col("reason").str.contains("duplicate id"))
    all_ids = pl.concat([pl.read_csv(f, infer_schema=False) if fmt == "csv" else pl.read_parquet(f)
                         for f in sorted(folder.iterdir())])["sid"]
    repeats = all_ids.is_not_null() & ~all_ids.is_first_distinct()
    assert dups.height == int(repeats.sum()) > 100
    assert not list(tmp_path.glob("**/ids.parquet"))  # the ids' copy is gone


def test_too_many_fields_and_blank_line(tmp_path):
    csv = tmp_path / "ragged.csv"
    body = [",".join(HEADER)] + [",".join(r) for r in good_rows(30)]
    body.insert(5, "1,a,b,1,2,0,0,EXTRA,MORE")
    body.insert(8, "")
    csv.write_text("\n".join(body) + "\n")
    result, q = _ingest(tmp_path, csv)
    assert result.manifest["rows_read"] == 32
    reasons = dict(zip(q["line"].to_list(), q["reason"].to_list()))
    assert "more fields than the 7 columns" in reasons[6]
    assert reasons[9].startswith("blank line")


def test_several_problems_in_one_row_are_all_named(tmp_path):
    result, q = _with_bad(tmp_path, [["500", "a1", "b1", "abc", "inf", "2", "1"]])
    reason = q["reason"][0]
    for part in ("num_x: unparseable number 'abc'", "num_y: non-finite number 'inf'",
                 "click: label must be 0 or 1, got '2'"):
        assert part in reason


def test_too_many_rejects_fail_loudly_and_keep_the_quarantine(tmp_path):
    bad = [[str(1000 + i), "a", "b", "abc", "1", "0", "0"] for i in range(30)]
    csv = write_csv(tmp_path / "l.csv", good_rows(70) + bad)
    spec = small_spec(str(csv), checks={"max_reject_ratio": 0.1})
    with pytest.raises(DataError, match=r"30 of 100 rows rejected \(30.00% > data.checks.max_reject_ratio"):
        ingest(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing a later stage could trust
    rejected = tmp_path / "out.rejected"
    assert read_quarantine(rejected).height == 30
    assert json.loads((rejected / "manifest.json").read_text())["status"] == "rejected"


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    data = gzip.compress(("\n".join([",".join(HEADER)] + [",".join(r) for r in good_rows(500)])).encode())
    gz = tmp_path / "cut.csv.gz"
    gz.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.csv.gz"):
        ingest(small_spec(str(gz)), tmp_path / "out")


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from mtlrec.pipeline.cli import main

    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    code = main(["ingest", "data=aliexpress", f"data.source.train={empty}", "data.source.test=null",
                 f"paths.work_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and "empty.csv: the file is empty" in err
    assert "Traceback" not in err


def test_quarantine_keeps_every_original_column(tmp_path):
    result, q = _with_bad(tmp_path, [["500", "a1", "b1", "abc", "3", "0", "0"]])
    assert q.columns[:3] == ["source_file", "line", "reason"]
    assert q.columns[3:] == HEADER
    assert q.row(0)[3:] == ("500", "a1", "b1", "abc", "3", "0", "0")


def test_good_rows_survive_unchanged_in_count(tmp_path):
    bad = [["900", "a", "b", "x", "1", "0", "0"], ["901", "a", "b", "1", "1", "5", "0"]]
    result, q = _with_bad(tmp_path, bad, n_good=300)
    data = pl.read_parquet(tmp_path / "out" / "data", hive_partitioning=True)
    assert data.height == 300 and q.height == 2
    assert sorted(data["sid"].cast(pl.Int64).to_list()) == list(range(300))

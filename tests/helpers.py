"""Test helpers: a small click/conversion schema written as real files, and the real data."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mtlrec import PROJECT_ROOT
from mtlrec.features.spec import DataSpec

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

HEADER = ["sid", "cat_a", "cat_b", "num_x", "num_y", "click", "conversion"]


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {path} is absent (CI has it; see ../shared/data/README.md)")
    return path


def small_spec(train: str, **changes) -> DataSpec:
    """A click/conversion schema with two categorical and two numeric fields."""
    raw = {
        "name": "small",
        "source": {"train": train},
        "categorical": [{"name": "cat_a"}, {"name": "cat_b"}],
        "numeric": [{"name": "num_x"}, {"name": "num_y", "log1p": True}],
        "labels": [{"name": "ctr", "column": "click"},
                   {"name": "ctcvr", "all_of": ["click", "conversion"]}],
        "id": "sid",
        "checks": {"implies": [["conversion", "click"]], "unique_id": True,
                   "max_reject_ratio": 0.5},
        "split": {"method": "random", "valid_fraction": 0.2},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = raw[key] | value
        else:
            raw[key] = value
    return DataSpec.model_validate(raw)


def good_rows(n: int, start: int = 0) -> list[list[str]]:
    rows = []
    for i in range(start, start + n):
        click = int(i % 3 == 0)
        rows.append([str(i), f"a{i % 5}", f"b{i % 7}", f"{(i % 11) * 0.5}", f"{i % 13}",
                     str(click), str(int(click and i % 2 == 0))])
    return rows


def write_csv(path: Path, rows: list[list[str]], header: list[str] | None = HEADER,
              sep: str = ",", final_newline: bool = True) -> Path:
    lines = ([sep.join(header)] if header else []) + [sep.join(r) for r in rows]
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_bytes(text.encode())
    return path


def read_quarantine(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "quarantine.parquet")

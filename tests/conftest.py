"""Shared fixtures."""

from pathlib import Path

import pytest

from helpers import good_rows, write_csv


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "logs.csv", good_rows(200))

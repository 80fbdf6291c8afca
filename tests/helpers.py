"""Test helpers: a small click/conversion schema written as real files, the real data,
the method presets, the tiny shop's logs, and a real `mtlrec serve` process."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import httpx
import mlflow

import numpy as np
import polars as pl
import pytest
import yaml

from mtlrec import CONF_DIR, checkout_root
from mtlrec.features.spec import DataSpec
from mtlrec.pipeline.cli import main
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.training.config import MethodConfig

SHARED_DATA = checkout_root().parent / "shared" / "data"
FIXTURES = Path(__file__).parent / "fixtures"

# Every method preset, and combinations of parts across presets (tests of the MTL step).
PRESETS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml") if p.stem != "stl")
COMBINATIONS = ["adatask aggregate=pcgrad", "adatask aggregate=cagrad", "mocograd loss=log",
                "grouped optimizer=adatask_adam", "adatask optimizer=adatask_rmsprop"]


def preset(spec: str, **changes) -> MethodConfig:
    """`"adatask aggregate=pcgrad"` → the preset with that part replaced."""
    name, *parts = spec.split()
    raw = yaml.safe_load((CONF_DIR / "method" / f"{name}.yaml").read_text())
    raw |= dict(p.split("=") for p in parts) | changes
    return MethodConfig(**raw)

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


def tiny_shop_logs(folder: Path, days: int, rows_per_day: int = 600, seed: int = 7,
                   start: str = "2026-11-01") -> list[Path]:
    """Day-partitioned click/conversion logs with a learnable signal in the layout of
    `fixtures/userconf/data/tinyshop.yaml` (the data of the legacy champion fixture, which
    was trained on days 2026-11-01..04 of seed 7)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    first, paths = date.fromisoformat(start), []
    for d in range(days):
        day = (first + timedelta(days=d)).isoformat()
        shop = rng.integers(0, 12, rows_per_day)
        item = rng.integers(0, 40, rows_per_day)
        price = rng.exponential(20.0, rows_per_day).round(2)
        age = rng.integers(18, 70, rows_per_day)
        logit = -0.5 + 0.35 * (shop - 6) + 0.15 * (item % 9 - 4) - 0.03 * price + 0.02 * (age - 40)
        click = rng.random(rows_per_day) < 1 / (1 + np.exp(-logit))
        buy = click & (rng.random(rows_per_day) < 1 / (1 + np.exp(-(logit + 0.5))))
        first_id = (first + timedelta(days=d) - date(2026, 11, 1)).days * rows_per_day  # unique per day
        lines = ["rid,shop,item,price,age,click,buy,day"] + [
            f"{first_id + i},s{shop[i]},i{item[i]},{price[i]},{age[i]},{int(click[i])},"
            f"{int(buy[i])},{day}" for i in range(rows_per_day)]
        paths.append(folder / f"day={day}.csv")
        paths[-1].write_text("\n".join(lines) + "\n")
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mtlrec <args> serve.port=<free port>` in its own process, ready to answer (`args`
    holds the stage, e.g. ["serve", "paths.work_dir=…"], or options before it)."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mtlrec.pipeline.cli", *args, f"serve.port={self.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become ready")

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out


TINY_SHOP_MODEL = "tinyshop-ranker"  # the tiny shop's registered model (registry.model_name)


class TinyShop:
    """A work folder and a copy of the user config folder fixtures/userconf, whose tiny
    shop lands its days next to its data file; `cli` runs a stage with `overrides`."""

    def __init__(self, root: Path, overrides: list[str]) -> None:
        self.work, self.conf = root / "work", root / "userconf"
        shutil.copytree(FIXTURES / "userconf", self.conf)
        self.landing = self.conf / "data" / "landing"
        self.overrides = overrides

    def cli(self, stage: str, *overrides: str) -> int:
        return main(["--config-dir", str(self.conf), stage, f"paths.work_dir={self.work}",
                     *self.overrides, *overrides])

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.work / "runs" / "tinyshop" / "mmoe-ew-seed2026")

    def client(self) -> mlflow.MlflowClient:
        uri = f"sqlite:///{self.work / 'mlflow.db'}"
        return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)

    def aliases(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.client().get_registered_model(TINY_SHOP_MODEL).aliases.items()}

"""Train/serve skew: a real server under a real load generator (`hey`) logs a sample of
what it scores within the log's size cap, the logged rows are the rows sent, and
`mtlrec skew` finds a shifted field against the champion's training window."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from helpers import FIXTURES, Server, TinyShop, tiny_shop_logs
from mtlrec.features.online import RawBatch
from mtlrec.serving import bundle, served_log
from mtlrec.serving.served_log import LogSettings, ServedLog

BUNDLE = FIXTURES / "legacy_champion" / "bundle"
GOOD = {"shop": "s1", "item": "i3", "price": 12.5, "age": 30}
TINY = ["data=tinyshop", "model.embedding_dim=4", "model.n_experts=2", "model.expert_hidden=[8]",
        "model.tower_hidden=[4]", "trainer.max_epochs=2", "trainer.batch_size=128",
        "gate.auc_tolerance=0.5", "gate.logloss_tolerance=1.0"]


def test_the_log_holds_exactly_the_sampled_rows_with_their_values(tmp_path):
    transform = bundle.load(BUNDLE).transform
    log = ServedLog(LogSettings(str(tmp_path), sample=1.0, file_rows=3, flush_s=0.1), seed=0)
    numeric = np.array([[12.5, 30.0], [np.nan, 41.0], [3.0, np.nan], [7.0, 1.0]])
    log.offer(RawBatch({"shop": ["s1", None, "s2", "s9"], "item": ["i3", "i1", None, "i2"]}, numeric),
              transform, "7")
    log.close()
    files = served_log.files(tmp_path)
    assert len(files) == 1  # 4 rows >= file_rows: one file, nothing half-written left
    got = pl.read_parquet(files)
    assert got["shop"].to_list() == ["s1", None, "s2", "s9"] and got["item"].to_list() == ["i3", "i1", None, "i2"]
    assert got["price"].to_list() == [12.5, None, 3.0, 7.0] and got["age"].to_list() == [30.0, 41.0, None, 1.0]
    assert set(got[served_log.VERSION]) == {"7"}


def test_rows_served_by_a_reloaded_model_go_to_a_file_of_their_own(tmp_path):
    old = bundle.load(BUNDLE).transform
    renamed = [f.model_copy(update={"name": f"{f.name}_v2"}) for f in old.spec.numeric]
    new = dataclasses.replace(old, spec=old.spec.model_copy(update={"numeric": renamed}))
    log = ServedLog(LogSettings(str(tmp_path), sample=1.0), seed=0)
    batch = RawBatch({"shop": ["s1"], "item": ["i3"]}, np.array([[12.5, 30.0]]))
    log.offer(batch, old, "1")
    log.offer(batch, new, "2")
    log.close()
    tables = [pl.read_parquet(f) for f in served_log.files(tmp_path)]
    assert [t.columns[:4] for t in tables] == [["shop", "item", "price", "age"],
                                               ["shop", "item", "price_v2", "age_v2"]]


@pytest.mark.skipif(shutil.which("hey") is None, reason="needs the `hey` load generator (apt-get install hey)")
def test_the_served_row_log_stays_within_its_cap_under_load(tmp_path):
    folder, cap_mb = tmp_path / "served", 0.05
    server = Server(["serve", f"serve.model={BUNDLE}", "serve.poll_seconds=0", f"paths.work_dir={tmp_path}",
                     f"serve.log_dir={folder}", "serve.log_sample=1.0", f"serve.log_max_mb={cap_mb}",
                     "serve.log_file_rows=200", "serve.log_flush_s=0.2"])
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"rows": [GOOD] * 20}))
    try:
        out = subprocess.run(["hey", "-n", "3200", "-c", "16", "-m", "POST", "-T", "application/json",
                              "-D", str(body), f"{server.url}/predict"],
                             capture_output=True, text=True, timeout=300, check=True).stdout
        assert re.search(r"\[200\]\s+3200 responses", out), out
        time.sleep(0.5)  # the writer's last flush
        assert httpx.get(server.url + "/ready").status_code == 200
    finally:
        log = server.stop()
    files = served_log.files(folder)
    total = sum(p.stat().st_size for p in files)
    assert files and total <= cap_mb * 2**20, (total, len(files))
    assert not list(folder.glob(".*tmp")), "a half-written file was left"
    logged = pl.read_parquet(files)  # every kept file is whole and readable
    assert logged.height < 60_000  # older files were removed for the cap
    assert set(logged["shop"]) == {"s1"} and set(logged["price"]) == {12.5}
    assert "Traceback" not in log


@pytest.mark.slow
def test_skew_finds_a_served_field_that_left_the_training_distribution(tmp_path):
    shop = TinyShop(tmp_path, TINY)
    tiny_shop_logs(shop.landing, 4)
    assert shop.cli("ingest") == 0 and shop.cli("train") == 0 and shop.cli("evaluate") == 0
    assert shop.cli("export") == 0
    folder = tmp_path / "served"
    server = Server(["--config-dir", str(shop.conf), "serve", f"paths.work_dir={shop.work}", *TINY,
                     f"serve.log_dir={folder}", "serve.log_sample=1.0", "serve.log_flush_s=0.2"])
    day = pl.read_csv(tiny_shop_logs(tmp_path / "new", 3, seed=5, start="2026-11-10"),
                      schema_overrides={"rid": pl.String})
    rows = day.select("shop", "item", (pl.col("price") * 20).alias("price"), "age").to_dicts()
    try:
        for start in range(0, len(rows), 100):
            assert httpx.post(server.url + "/predict", json={"rows": rows[start:start + 100]}).status_code == 200
        time.sleep(0.5)
    finally:
        server.stop()
    assert shop.cli("skew", f"serve.log_dir={folder}") == 0
    report = json.loads(next((shop.work / "monitor" / "tinyshop").glob("skew-v*.json")).read_text())
    assert report["rows"] == len(rows)
    assert "price:js" in report["drifted"]
    assert not [d for d in report["drifted"] if d.split(":")[0] in ("shop", "item", "age")], report["drifted"]

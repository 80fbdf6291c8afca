"""`mtlrec retrain`: scheduled retraining from a landing folder of day partitions.

One run: take the lock → ingest every new day partition once into the day store →
for the newest day, build the window (the last `retrain.window_days` days: the newest
is the holdout, the day before validation, the rest training) → ingest the window with
the champion's vocabularies as base (stable ids) → train warm-started from the
champion → evaluate → export → register → gate → promote (`pipeline.export.publish`).

State (`retrain.dir`):
```
retrain.lock              flock: a second run exits at once while one is running
manifest.json             days taken in (files, rows, quarantined), jobs and their outcome
store/day=D.parquet       the good rows of day D (original values), written once
store/day=D.quarantine.parquet
jobs/D/                   the job whose newest day is D: window/, features/, runs/, champion/
```
Every file is written under a temporary name and renamed; the manifest is updated only
after what it records exists, and a job is marked done only after its aliases moved. So
a run killed anywhere leaves nothing the next run trusts half-written, and the next run
picks the job up where it stopped (training resumes from its checkpoint). A run with
nothing new changes nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import torch

from mtlrec.features import raw
from mtlrec.features.batches import FeatureInfo
from mtlrec.features.errors import DataError
from mtlrec.models.config import ModelConfig
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline import registry
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.export import publish

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
MIN_DAYS = 3  # train + validation + holdout


class LockHeld(DataError):
    """Another retrain run holds the lock."""


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive, non-blocking flock; the kernel releases it when the process dies."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "retrain.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise LockHeld(f"another `mtlrec retrain` is running (lock {path} held by pid "
                           f"{fh.read().strip() or '?'}); this run does nothing") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield


def retrain(cfg: Config) -> dict:
    """One scheduled run; returns what it did (see module docstring)."""
    folder = Path(cfg.retrain.dir)
    with locked(folder):
        manifest = _read(folder / MANIFEST)
        taken = _take_new_days(cfg, folder, manifest)
        days = sorted(manifest["days"])
        if len(days) < MIN_DAYS:
            return {"new_days": taken, "job": None,
                    "message": f"{len(days)} day(s) stored, a job needs {MIN_DAYS}: waiting for more"}
        newest = days[-1]
        job = manifest["jobs"].get(newest)
        if job and job.get("status") == "done":
            return {"new_days": taken, "job": newest, "message":
                    f"up to date: day {newest} already published as version {job['version']} "
                    f"({job['action']})"}
        summary = _run_job(cfg, folder, days[-cfg.retrain.window_days:])
        manifest["jobs"][newest] = {"status": "done", "version": summary["version"],
                                    "action": summary["action"], "window": days[-cfg.retrain.window_days:]}
        _write(folder / MANIFEST, manifest)
        return {"new_days": taken, "job": newest, "publish": summary,
                "message": f"day {newest}: version {summary['version']} is {summary['action']}"}


def _take_new_days(cfg: Config, folder: Path, manifest: dict) -> list[str]:
    """Validate each day partition not yet in the manifest into the store, once."""
    partitions = raw.day_partitions(cfg.data.source.train)
    if not partitions:
        raise DataError(f"no day=YYYY-MM-DD partitions match data.source.train="
                        f"{cfg.data.source.train!r}")
    store = folder / "store"
    store.mkdir(exist_ok=True)
    taken = []
    for day, pattern in partitions.items():
        if day in manifest["days"]:
            continue
        rows = raw.read(cfg.data, pattern)
        quarantine = store / f"day={day}.quarantine.parquet"
        _write_parquet(rows.quarantine, quarantine)
        total = rows.good.height + rows.quarantine.height
        if rows.quarantine.height > cfg.data.checks.max_reject_ratio * total:
            raise DataError(f"day {day} ({rows.files}): {rows.quarantine.height:,} of {total:,} rows "
                            f"rejected, more than data.checks.max_reject_ratio; the day is not taken "
                            f"in. Rows and reasons: {quarantine}")
        _write_parquet(rows.good, store / f"day={day}.parquet")
        manifest["days"][day] = {"files": rows.files, "rows_good": rows.good.height,
                                 "rows_quarantined": rows.quarantine.height}
        _write(folder / MANIFEST, manifest)
        taken.append(day)
        log.info("retrain: took in day %s (%d good, %d quarantined)", day, rows.good.height,
                 rows.quarantine.height)
    return taken


def _run_job(cfg: Config, folder: Path, window: list[str]) -> dict:
    from mtlrec.pipeline.evaluate import run_evaluate
    from mtlrec.pipeline.stages import run_ingest
    from mtlrec.pipeline.train import run_train

    job = folder / "jobs" / window[-1]
    linked = job / "window"
    linked.mkdir(parents=True, exist_ok=True)
    for day in window:
        link = linked / f"day={day}.parquet"
        if not link.is_symlink():
            link.symlink_to((folder / "store" / f"day={day}.parquet").resolve())
    champion = _champion_weights(cfg, job) if cfg.retrain.warm_start else None
    job_cfg = job_config(cfg, job, None if champion is None else champion / "features")
    run_ingest(job_cfg)
    run_dir = Path(job_cfg.paths.run_dir)
    state = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    if state.get("status") != "trained":
        run_train(job_cfg, init=None if champion is None else warm_start_from(champion))
    if not (run_dir / "evaluation" / "metrics.json").is_file():
        run_evaluate(job_cfg)
    return publish(job_cfg, run_dir, str(folder / "store" / f"day={window[-1]}.parquet"))


def job_config(cfg: Config, job: Path, base_artifacts: Path | None) -> Config:
    """The config of one job: the window's store files as a day-split Parquet source, the
    job's own features and run folders, the champion's vocabularies as base."""
    data = cfg.data.model_copy(update={
        "source": cfg.data.source.model_copy(update={
            "format": "parquet", "train": str(job / "window" / "day=*.parquet"), "valid": None,
            "test": None}),
        "split": cfg.data.split.model_copy(update={"method": "day", "valid_days": 1, "test_days": 1}),
    })
    run_dir = job / "runs" / f"{cfg.model.arch}-{cfg.method.name}-seed{cfg.seed}"
    return cfg.model_copy(update={
        "data": data,
        "paths": cfg.paths.model_copy(update={"features": str(job / "features"), "run_dir": str(run_dir)}),
        "ingest": cfg.ingest.model_copy(update={
            "base_artifacts": str(base_artifacts) if base_artifacts else None}),
    })


def _champion_weights(cfg: Config, job: Path) -> Path | None:
    """The champion's weights, model config and feature artifacts, downloaded into the job
    once (the first download of a job pins its champion, even if the alias moves later)."""
    target = job / "champion"
    if (target / "model.pt").is_file():
        return target
    c = registry.client(cfg)
    version = registry.alias_version(c, cfg.registry.model_name, registry.CHAMPION)
    if version is None:
        return None
    tmp = job / ".champion.tmp"  # the lock makes this run its only writer
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for artifact, name in (("model/model.pt", "model.pt"), ("model_config.json", "model_config.json"),
                           ("features", "features")):
        local = Path(c.download_artifacts(version.run_id, artifact, str(tmp)))
        if local != tmp / name:
            local.rename(tmp / name)
    (tmp / "version").write_text(str(version.version))
    tmp.rename(target)
    return target


def warm_start_from(champion: Path) -> Callable[[MultiTaskRanker], None]:
    """An `init` for run_train: copy the champion's weights into a fresh model."""
    info = FeatureInfo.load(champion / "features")
    model_cfg = ModelConfig.model_validate_json((champion / "model_config.json").read_text())
    old = MultiTaskRanker(model_cfg, info.table_sizes, len(info.numeric), len(info.tasks))
    old.load_state_dict(torch.load(champion / "model.pt", weights_only=True))

    def init(model: MultiTaskRanker) -> None:
        warm_start(model, old)
        log.info("retrain: warm-started from champion version %s", (champion / "version").read_text())
    return init


@torch.no_grad()
def warm_start(model: MultiTaskRanker, champion: MultiTaskRanker) -> None:
    """Copy every non-embedding parameter, and each field's embedding rows the champion
    has (vocabulary ids are stable across refits: a value keeps its row); rows of values
    new since then keep their fresh initialisation."""
    theirs = champion.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith("embeddings."):
            continue
        if name not in theirs or theirs[name].shape != tensor.shape:
            raise DataError(f"cannot warm-start: '{name}' is {tuple(tensor.shape)} now but "
                            f"{tuple(theirs[name].shape) if name in theirs else 'absent'} in the "
                            "champion (model config changed?); set retrain.warm_start=false")
        tensor.copy_(theirs[name])
    new_tables, old_tables = model.embeddings.state_tables(), champion.embeddings.state_tables()
    if len(new_tables) != len(old_tables) or new_tables[0].shape[1] != old_tables[0].shape[1]:
        raise DataError("cannot warm-start: the embedding fields or dimension differ from the "
                        "champion's; set retrain.warm_start=false")
    for new, old in zip(new_tables, old_tables):
        rows = min(len(new), len(old))
        new[:rows].copy_(old[:rows])


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"days": {}, "jobs": {}}


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _write_parquet(frame: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.write_parquet(tmp)
    os.replace(tmp, path)

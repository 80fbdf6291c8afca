"""`mtlrec retrain`: scheduled retraining from a landing folder of day partitions.

One run: take the lock → ingest every new day partition once into the day store →
for the newest day, build the window (the last `retrain.window_days` days: the newest
is the holdout, the day before validation, the rest training) → ingest the window with
the champion's vocabularies as base (stable ids) → train warm-started from the
champion → evaluate → export → register → gate → promote (`pipeline.export.publish`).

State (`retrain.dir`):
```
retrain.lock              flock: a second run exits at once while one is running
manifest.json             each landed day's status (taken | rejected | accepted), files,
                          rows, quarantine; the jobs and their outcome
store/day=D.parquet       the good rows of day D (original values), written once
store/day=D.quarantine.parquet
jobs/D/                   the job whose newest day is D: window/, features/, runs/, champion/
```
Every file is written under a temporary name and renamed; the manifest is updated only
after what it records exists, and a job is marked done only after its aliases moved. So
a run killed anywhere leaves nothing the next run trusts half-written, and the next run
picks the job up where it stopped (training resumes from its checkpoint). A run with
nothing new changes nothing.

A day with more bad rows than `data.checks.max_reject_ratio` is recorded as rejected
(with its reason and quarantine), reported by every run, and skipped: the days after it
are taken in and trained on. After a fix upstream (or a decision that its good rows are
fine), `retrain.accept_day=D` takes it in as it is now; its bad rows stay quarantined.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import torch

from mtlrec import files
from mtlrec.features import raw
from mtlrec.features.errors import DataError
from mtlrec.features.folder import FeatureInfo
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline import registry
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.evaluate import evaluate_run
from mtlrec.pipeline.export import publish
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.targets import build_ranker, ingest_logs
from mtlrec.pipeline.train import train_run

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
MIN_DAYS = 3  # train + validation + holdout
# A landed day's status in the manifest (a record without one was taken in).
TAKEN, REJECTED, ACCEPTED = "taken", "rejected", "accepted"


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
        if cfg.retrain.accept_day:
            _accept(cfg, folder, manifest, cfg.retrain.accept_day)
        taken = _take_new_days(cfg, folder, manifest)
        rejected = {d: e for d, e in sorted(manifest["days"].items()) if e.get("status") == REJECTED}
        days = sorted(d for d in manifest["days"] if d not in rejected)
        result = {"new_days": taken, "rejected": rejected, "job": None}
        if len(days) < MIN_DAYS:
            return result | {"message": f"{len(days)} day(s) stored, a job needs {MIN_DAYS}: "
                                        "waiting for more"}
        newest = days[-1]
        job = manifest["jobs"].get(newest)
        if job and job.get("status") == "done":
            return result | {"job": newest, "message":
                             f"up to date: day {newest} already published as version {job['version']} "
                             f"({job['action']})"}
        summary = _run_job(cfg, folder, days[-cfg.retrain.window_days:])
        manifest["jobs"][newest] = {"status": "done", "version": summary["version"],
                                    "action": summary["action"], "window": days[-cfg.retrain.window_days:]}
        files.write_json(folder / MANIFEST, manifest)
        return result | {"job": newest, "publish": summary,
                         "message": f"day {newest}: version {summary['version']} is {summary['action']}"}


def _take_new_days(cfg: Config, folder: Path, manifest: dict) -> list[str]:
    """Validate each day partition not yet in the manifest into the store, once: taken
    in, or recorded as rejected when it has too many bad rows."""
    taken = []
    for day, pattern in _partitions(cfg).items():
        if day in manifest["days"]:
            continue
        record = _store_day(cfg, folder, day, pattern, accept=False)
        manifest["days"][day] = record
        files.write_json(folder / MANIFEST, manifest)
        if record["status"] == TAKEN:
            taken.append(day)
    return taken


def _accept(cfg: Config, folder: Path, manifest: dict, day: str) -> None:
    """`retrain.accept_day`: take a rejected day in as it is now."""
    record = manifest["days"].get(day)
    if record is None or record.get("status") != REJECTED:
        rejected = [d for d, e in sorted(manifest["days"].items()) if e.get("status") == REJECTED]
        status = "not landed yet" if record is None else record.get("status", TAKEN)
        raise DataError(f"retrain.accept_day={day}: day {day} is not rejected ({status}); rejected "
                        f"days: {rejected or 'none'}")
    pattern = _partitions(cfg).get(day)
    if pattern is None:
        raise DataError(f"retrain.accept_day={day}: no day={day} partition matches "
                        f"data.source.train={cfg.data.source.train!r} any more")
    manifest["days"][day] = _store_day(cfg, folder, day, pattern, accept=True)
    files.write_json(folder / MANIFEST, manifest)


def _partitions(cfg: Config) -> dict[str, str]:
    partitions = raw.day_partitions(cfg.data.source.train)
    if not partitions:
        raise DataError(f"no day=YYYY-MM-DD partitions match data.source.train="
                        f"{cfg.data.source.train!r}")
    return partitions


def _store_day(cfg: Config, folder: Path, day: str, pattern: str, accept: bool) -> dict:
    """Validate one day into the store: its quarantine always, its good rows unless it has
    more bad rows than data.checks.max_reject_ratio (and is not being accepted). Returns
    the day's manifest record."""
    store = folder / "store"
    good = store / f"day={day}.parquet"
    rows = raw.read(cfg.data, pattern, good)
    quarantine = store / f"day={day}.quarantine.parquet"
    _write_parquet(rows.quarantine, quarantine)
    total = rows.rows_good + rows.quarantine.height
    record = {"files": rows.files, "rows_good": rows.rows_good,
              "rows_quarantined": rows.quarantine.height, "quarantine": str(quarantine)}
    ratio = cfg.data.checks.max_reject_ratio
    if rows.quarantine.height > ratio * total and not accept:
        good.unlink()  # a rejected day's rows stay out of the store
        reason = (f"{rows.quarantine.height:,} of {total:,} rows rejected "
                  f"({rows.quarantine.height / max(total, 1):.1%} > data.checks.max_reject_ratio {ratio:.1%})")
        log.warning("retrain: day %s rejected: %s", day, reason)
        return {"status": REJECTED, "reason": reason} | record
    log.info("retrain: took in day %s (%d good, %d quarantined)", day, rows.rows_good,
             rows.quarantine.height)
    if accept:
        return {"status": ACCEPTED, "reason": "retrain.accept_day: its bad rows stay quarantined"} | record
    return {"status": TAKEN} | record


def _run_job(cfg: Config, folder: Path, window: list[str]) -> dict:
    job = folder / "jobs" / window[-1]
    linked = job / "window"
    linked.mkdir(parents=True, exist_ok=True)
    for day in window:
        link = linked / f"day={day}.parquet"
        if not link.is_symlink():
            link.symlink_to((folder / "store" / f"day={day}.parquet").resolve())
    champion = _champion(cfg, job) if cfg.retrain.warm_start else None
    job_cfg = job_config(cfg, job, None if champion is None else Path(champion.trained().features))
    ingest_logs(job_cfg)
    run = RunFolder(job_cfg.paths.run_dir)
    if not run.is_trained():
        train_run(job_cfg, init=None if champion is None else warm_start_from(champion))
    if run.metrics() is None:
        evaluate_run(job_cfg)
    return publish(job_cfg, run, str(folder / "store" / f"day={window[-1]}.parquet"))


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


def _champion(cfg: Config, job: Path) -> RunFolder | None:
    """The champion's run (weights, model config, feature artifacts), downloaded into the
    job once: the first download pins a job's champion, even if the alias moves later."""
    pinned = RunFolder(job / "champion")
    if pinned.is_trained():
        return pinned
    c = registry.client(cfg)
    version = registry.alias_version(c, cfg.registry.model_name, registry.CHAMPION)
    if version is None:
        return None
    return RunFolder.download(c, version.run_id, str(version.version), pinned.path)


def warm_start_from(champion: RunFolder) -> Callable[[MultiTaskRanker], None]:
    """An `init` for train_run: copy the champion's weights into a fresh model."""
    state = champion.trained()
    info = FeatureInfo.load(Path(state.features))
    old = champion.load_multi_task_model(lambda cfg, index: build_ranker(cfg, info, index), len(info.tasks))

    def init(model: MultiTaskRanker) -> None:
        warm_start(model, old)
        log.info("retrain: warm-started from champion version %s", state.registered_version)
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
    """The manifest (empty before the first run); unreadable is an error naming it, since
    guessing would take days in twice or publish a job again."""
    if not path.is_file():
        return {"days": {}, "jobs": {}}
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("days"), dict) or not isinstance(manifest.get("jobs"), dict):
            raise ValueError("no 'days' and 'jobs' records")
    except ValueError as exc:
        raise DataError(f"the retrain manifest {path} is unreadable ({exc}): restore it from a "
                        "backup, or remove it to take every landed day in again") from None
    return manifest


def _write_parquet(frame: pl.DataFrame, path: Path) -> None:
    with files.atomic_file(path) as tmp:
        frame.write_parquet(tmp)

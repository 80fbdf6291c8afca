"""`mtlrec retrain`: scheduled retraining from a landing folder of day partitions.

One run: take the lock → ingest every new day partition once into the day store →
for the newest day, build the window (the last `retrain.window_days` days: the newest
is the holdout, the day before validation, the rest training) → ingest the window with
the champion's vocabularies as base (stable ids) → train warm-started from the
champion → evaluate → export → register → gate → promote (`pipeline.export.publish`).

State (`retrain.dir`):
```
retrain.lock              flock: a second run exits at once while one is running
manifest.json             each landed day's status (taken | rejected | drifted | waiting |
                          accepted), files, rows, quarantine, drift; the jobs and their outcome
store/day=D.parquet       the good rows of day D (original values), written once
store/day=D.quarantine.parquet
store/day=D.stats.json    the day's statistics (features.stats)
store/drift/day=D-vs-*    its drift reports (JSON, Markdown, plots) against the day before
                          and the champion's training window
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

Drift: each day's statistics are compared with the day before it and with the champion's
training window (shipped in its bundle) by `features.drift`, with the data conf's limits.
A drifted day (`retrain.drift_action`) is kept out of training (quarantine: status
drifted, its rows kept in the store), or trained on while it blocks promotion (block: the
new version stays challenger until the day is accepted), or only reported (record). A day
whose columns are not the data conf's cannot be read: it is drifted whatever the action.
`retrain.accept_day=D` accepts a drifted day as it accepts a rejected one. Every new day's
drift goes into an MLflow run of its own (`retrain-drift-<day>`), and into the job's gate
report and run when a job follows.

Late labels: with `retrain.label_delay_days=N`, a day D is complete once a partition of
day D + N has landed; before, it is stored and checked for feature drift but waits
(status waiting: not trained on, no label drift). Once complete it is read again (its
labels have arrived by then) and judged in full.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from functools import cached_property
from pathlib import Path

import polars as pl
import torch

from mtlrec import files
from mtlrec.features import drift, raw, stats
from mtlrec.features.errors import DataError
from mtlrec.features.folder import FeatureInfo
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline import drift_report, registry, tracking
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
TAKEN, REJECTED, ACCEPTED, DRIFTED, WAITING = "taken", "rejected", "accepted", "drifted", "waiting"
HELD = (REJECTED, DRIFTED)  # what retrain.accept_day takes in


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
        stored_now = _take_new_days(cfg, folder, manifest)
        records = dict(sorted(manifest["days"].items()))
        _record_drift(cfg, {d: records[d]["drift"] for d in stored_now if "drift" in records[d]})
        taken = [d for d in stored_now if records[d]["status"] in (TAKEN, DRIFTED)]
        result = {"new_days": taken,
                  "rejected": {d: e for d, e in records.items() if e.get("status") == REJECTED},
                  "drifted": {d: e for d, e in records.items() if e.get("status") == DRIFTED},
                  "waiting": {d: e for d, e in records.items() if e.get("status") == WAITING},
                  "job": None}
        days = [d for d, e in records.items() if _trainable(e)]
        if len(days) < MIN_DAYS:
            return result | {"message": f"{len(days)} day(s) ready to train on, a job needs "
                                        f"{MIN_DAYS}: waiting for more"}
        window = days[-cfg.retrain.window_days:]
        newest = window[-1]
        blocked = [d for d in window if records[d].get("status") == DRIFTED]
        job = manifest["jobs"].get(newest)
        if job and job.get("status") == "done" and not (job.get("blocked_by") and not blocked):
            return result | {"job": newest, "message":
                             f"up to date: day {newest} already published as version {job['version']} "
                             f"({job['action']})"}
        drift = {d: records[d]["drift"] for d in (taken or window) if "drift" in records[d]}
        summary = _run_job(cfg, folder, window, drift, blocked)
        manifest["jobs"][newest] = {"status": "done", "version": summary["version"],
                                    "action": summary["action"], "window": window,
                                    "blocked_by": blocked}
        files.write_json(folder / MANIFEST, manifest)
        return result | {"job": newest, "publish": summary,
                         "message": f"day {newest}: version {summary['version']} is {summary['action']}"}


def _record_drift(cfg: Config, drift: dict[str, dict]) -> None:
    """The new days' drift in an MLflow run of its own (`retrain-drift-<newest day>`: its
    metrics and reports), also when no job follows (a quarantined day)."""
    if not drift:
        return
    with tracking.run(cfg.paths.work_dir, cfg.data.name, f"retrain-drift-{max(drift)}") as active:
        client = registry.client(cfg)
        tracking.log_drift(client, active.info.run_id, drift)
        for record in drift.values():
            for paths in record["reports"].values():
                for path in paths.values():
                    client.log_artifact(active.info.run_id, path, "drift")


def _trainable(record: dict) -> bool:
    """Taken or accepted; a drifted day only when its action was to block promotion."""
    status = record.get("status", TAKEN)
    return status in (TAKEN, ACCEPTED) or (status == DRIFTED and record.get("action") == "block")


def _take_new_days(cfg: Config, folder: Path, manifest: dict) -> list[str]:
    """Validate each day partition not yet in the manifest into the store, once (a day
    waiting for its labels again once they are complete): taken in, rejected for too many
    bad rows, drifted, or waiting. Returns the days validated."""
    stored = []
    partitions = _partitions(cfg)
    references = _References(cfg, folder, manifest)
    for day, pattern in partitions.items():
        complete = _labels_complete(day, max(partitions), cfg.retrain.label_delay_days)
        known = manifest["days"].get(day)
        if known is not None and not (known.get("status") == WAITING and complete):
            continue
        record = _store_day(cfg, folder, day, pattern, accept=False, complete=complete,
                            references=references)
        manifest["days"][day] = record
        files.write_json(folder / MANIFEST, manifest)
        stored.append(day)
    return stored


def _labels_complete(day: str, newest: str, delay: int) -> bool:
    return date.fromisoformat(day) + timedelta(days=delay) <= date.fromisoformat(newest)


def _accept(cfg: Config, folder: Path, manifest: dict, day: str) -> None:
    """`retrain.accept_day`: take a rejected or drifted day in as it is now."""
    record = manifest["days"].get(day)
    if record is None or record.get("status") not in HELD:
        held = [d for d, e in sorted(manifest["days"].items()) if e.get("status") in HELD]
        status = "not landed yet" if record is None else record.get("status", TAKEN)
        raise DataError(f"retrain.accept_day={day}: day {day} is not rejected or drifted ({status}); "
                        f"rejected or drifted days: {held or 'none'}")
    pattern = _partitions(cfg).get(day)
    if pattern is None:
        raise DataError(f"retrain.accept_day={day}: no day={day} partition matches "
                        f"data.source.train={cfg.data.source.train!r} any more")
    manifest["days"][day] = _store_day(cfg, folder, day, pattern, accept=True, complete=True,
                                       references=_References(cfg, folder, manifest))
    files.write_json(folder / MANIFEST, manifest)


def _partitions(cfg: Config) -> dict[str, str]:
    partitions = raw.day_partitions(cfg.data.source.train)
    if not partitions:
        raise DataError(f"no day=YYYY-MM-DD partitions match data.source.train="
                        f"{cfg.data.source.train!r}")
    return partitions


def _store_file(folder: Path, day: str, suffix: str) -> Path:
    """store/day=D<suffix>: the day's good rows (.parquet), quarantine, statistics."""
    return folder / "store" / f"day={day}{suffix}"


class _References:
    """What a new day is compared with: the day before it that was trained on (its
    statistics in the store) and the champion's training window (its bundle's statistics;
    loaded once per run, on first use)."""

    def __init__(self, cfg: Config, folder: Path, manifest: dict) -> None:
        self.cfg, self.folder, self.manifest = cfg, folder, manifest

    def previous(self, day: str) -> tuple[str, stats.SliceStats] | None:
        for d in sorted(self.manifest["days"], reverse=True):
            path = _store_file(self.folder, d, ".stats.json")
            if d < day and _trainable(self.manifest["days"][d]) and path.is_file():
                return d, stats.SliceStats.load(path)
        return None

    @cached_property
    def champion(self) -> tuple[str, stats.SliceStats | None, dict] | None:
        """(version, its training window's statistics, its vocabularies), or None before the
        first champion."""
        found = registry.champion(self.cfg)
        return None if found is None else (found[0], found[1].reference, found[1].transform.vocabularies)


def _store_day(cfg: Config, folder: Path, day: str, pattern: str, *, accept: bool, complete: bool,
               references: _References) -> dict:
    """Validate one day into the store and judge its drift: its quarantine always, its good
    rows unless it has more bad rows than data.checks.max_reject_ratio (and is not being
    accepted). Returns the day's manifest record."""
    previous = references.previous(day)
    columns = raw.columns_of(cfg.data, pattern)
    if set(columns) != set(cfg.data.expected_columns):
        return _unreadable(cfg, folder, day, columns, previous, accept)
    good = _store_file(folder, day, ".parquet")
    rows = raw.read(cfg.data, pattern, good)
    quarantine = _store_file(folder, day, ".quarantine.parquet")
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
    champion = references.champion
    day_stats = rows.statistics(cfg.data, champion[2] if champion else None)
    day_stats.save(_store_file(folder, day, ".stats.json"))
    reports = drift.against_day_and_champion(day, day_stats, cfg.data, previous=previous,
                                             champion=champion and champion[:2], labels=complete)
    record["drift"] = _drift_record(folder, day, reports, cfg.retrain.drift_action)
    log.info("retrain: day %s: %d good, %d quarantined; drift: %s", day, rows.rows_good,
             rows.quarantine.height, "; ".join(record["drift"]["reasons"]) or "none")
    if accept:
        return {"status": ACCEPTED, "reason": "retrain.accept_day: its bad rows stay quarantined"} | record
    if not complete:
        return {"status": WAITING, "reason": f"labels complete {cfg.retrain.label_delay_days} day(s) "
                                             "after the day (retrain.label_delay_days)"} | record
    if record["drift"]["reasons"] and cfg.retrain.drift_action != "record":
        return {"status": DRIFTED, "action": cfg.retrain.drift_action,
                "reason": "; ".join(record["drift"]["reasons"])} | record
    return {"status": TAKEN} | record


def _drift_record(folder: Path, day: str, reports: dict[str, drift.DriftReport], action: str) -> dict:
    """The day's drift reports written to store/drift/; what the manifest keeps of them."""
    written = {key: drift_report.write(r, folder / "store" / "drift", f"day={day}-vs-{key}")
               for key, r in reports.items()}
    reasons = [f"vs {r.reference}: {reason}" for r in reports.values() for reason in r.reasons()]
    return {"reasons": reasons, "action": action,
            "reports": {key: {k: str(p) for k, p in paths.items()} for key, paths in written.items()},
            "max": {key: _largest(r) for key, r in reports.items()}}


def _largest(report: drift.DriftReport) -> dict[str, float]:
    """Each field's largest share of a limit (for MLflow metrics and the charts)."""
    out: dict[str, float] = {}
    for f in report.findings:
        if f.limit and f.value is not None:
            out[f.field] = max(out.get(f.field, 0.0), f.value / f.limit)
    return out


def _unreadable(cfg: Config, folder: Path, day: str, columns: dict[str, str],
                previous: tuple[str, stats.SliceStats] | None, accept: bool) -> dict:
    """A day whose columns are not the data conf's: schema drift; nothing can be stored."""
    expected = cfg.data.expected_columns
    before = previous[1].columns if previous and previous[1].columns else \
        {c: columns.get(c, "string") for c in expected}
    report = drift.DriftReport(f"day {day}", f"day {previous[0]}" if previous else "the data conf",
                               0, previous[1].rows if previous else 0,
                               drift.schema_changes(columns, before))
    record = {"drift": _drift_record(folder, day, {"previous": report}, "quarantine")}
    reason = "; ".join(report.reasons()) or "its columns are not the data conf's"
    if accept:
        raise DataError(f"retrain.accept_day={day}: day {day} cannot be read with the data conf "
                        f"({reason}): declare the new columns (e.g. under `ignore`) or restore the "
                        "removed ones upstream, then accept it again")
    log.warning("retrain: day %s drifted: %s", day, reason)
    return {"status": DRIFTED, "action": "quarantine", "reason": f"cannot be read: {reason}",
            "files": [], "rows_good": 0, "rows_quarantined": 0} | record


def _run_job(cfg: Config, folder: Path, window: list[str], drift_of: dict[str, dict],
             blocked: list[str]) -> dict:
    job = folder / "jobs" / window[-1]
    linked = job / "window"
    linked.mkdir(parents=True, exist_ok=True)
    for day in window:
        link = linked / f"day={day}.parquet"
        if not link.is_symlink():
            link.symlink_to(_store_file(folder, day, ".parquet").resolve())
    champion = _champion(cfg, job) if cfg.retrain.warm_start else None
    job_cfg = job_config(cfg, job, None if champion is None else Path(champion.trained().features))
    ingest_logs(job_cfg)
    run = RunFolder(job_cfg.paths.run_dir)
    if not run.is_trained():
        train_run(job_cfg, init=None if champion is None else warm_start_from(champion))
    if run.metrics() is None:
        evaluate_run(job_cfg)
    block = [f"day {d} drifted ({_reason_of(drift_of.get(d))}): accept it with "
             f"`mtlrec retrain retrain.accept_day={d}` to promote" for d in blocked]
    return publish(job_cfg, run, str(_store_file(folder, window[-1], ".parquet")),
                   drift=drift_of, blocked=block)


def _reason_of(record: dict | None) -> str:
    return "; ".join((record or {}).get("reasons", [])) or "see its drift report"


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

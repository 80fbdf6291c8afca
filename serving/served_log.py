"""A bounded sample of the rows a server scores, written to Parquet for `mtlrec skew`.

Off the request path: the scoring thread draws a row sample of each request's checked raw
columns (`sample` of the rows) and hands it to a bounded queue without waiting; when the
queue is full the sample is dropped and counted (the log never slows or queues scoring).
A writer thread gathers samples into files of up to `file_rows` rows, written whole under a
temporary name and renamed (a reader never sees half a file), also after `flush_s` seconds
with rows waiting. Files are `served-<pid>-<time ns>.parquet` in one folder, which worker
processes share; after each write the oldest files are removed until the folder holds at
most `max_mb` (a file that alone exceeds the cap is not kept).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.features.online import RawBatch
from mtlrec.features.transform import FeatureTransform

log = logging.getLogger(__name__)
PATTERN = "served-*.parquet"
SERVED_AT, VERSION = "__served_at", "__model_version"
_STOP = object()  # tells the writer to write what waits and end


@dataclass(frozen=True)
class LogSettings:
    folder: str | None = None  # None: no log
    sample: float = 0.01
    max_mb: float = 256.0
    file_rows: int = 10_000
    flush_s: float = 60.0
    queue_batches: int = 256


class ServedLog:
    """See the module docstring. `offer` from the scoring thread; `close` at shutdown."""

    def __init__(self, settings: LogSettings, seed: int | None = None) -> None:
        if settings.folder is None:
            raise ValueError("LogSettings.folder is needed")
        self.settings = settings
        self.folder = Path(settings.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dropped = 0
        self._rng = np.random.default_rng(seed)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=settings.queue_batches)
        self._thread = threading.Thread(target=self._run, name="mtlrec-served-log", daemon=True)
        self._thread.start()

    def offer(self, batch: RawBatch, transform: FeatureTransform, version: str) -> None:
        """Sample the batch's rows into the log (never blocks; drops when the writer lags)."""
        keep = np.flatnonzero(self._rng.random(len(batch)) < self.settings.sample)
        if not keep.size:
            return
        columns = {name: pa.array([values[i] for i in keep],
                                  pa.list_(pa.string()) if self._multi(transform, name) else pa.string())
                   for name, values in batch.categorical.items()}
        numeric = batch.numeric[keep]
        columns |= {name: pa.array(numeric[:, j], pa.float64(), mask=np.isnan(numeric[:, j]))
                    for j, name in enumerate(transform.numeric_names)}
        columns[SERVED_AT] = pa.array(np.full(keep.size, time.time_ns(), np.int64), pa.timestamp("ns"))
        columns[VERSION] = pa.array([version] * keep.size, pa.string())
        try:
            self._queue.put_nowait(pa.table(columns))
        except queue.Full:
            self.dropped += keep.size

    @staticmethod
    def _multi(transform: FeatureTransform, name: str) -> bool:
        return any(f.name == name and f.multi for f in transform.spec.categorical)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is waiting and stop the writer."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        waiting: list[pa.Table] = []
        rows, since = 0, time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=max(0.05, self.settings.flush_s / 4))
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if isinstance(item, pa.Table):
                waiting.append(item)
                rows += item.num_rows
            if rows >= self.settings.file_rows or (waiting and time.monotonic() - since >= self.settings.flush_s):
                self._write(waiting)
                waiting, rows, since = [], 0, time.monotonic()
        if waiting:
            self._write(waiting)

    def _write(self, tables: list[pa.Table]) -> None:
        try:
            name = f"served-{os.getpid()}-{time.time_ns()}.parquet"
            tmp = self.folder / f".{name}.tmp"
            pq.write_table(pa.concat_tables(tables, promote_options="permissive"), tmp, compression="zstd")
            os.replace(tmp, self.folder / name)
            prune(self.folder, int(self.settings.max_mb * 2**20))
        except OSError as exc:  # a full disk must not stop serving: the sample is lost, said once
            log.warning("served-row log: cannot write to %s (%s); these rows are not logged", self.folder, exc)


def prune(folder: Path, max_bytes: int) -> None:
    """Remove the oldest log files until the folder holds at most `max_bytes` of them."""
    found = []
    for path in folder.glob(PATTERN):
        try:
            found.append((path.stat().st_mtime_ns, path.name, path.stat().st_size, path))
        except FileNotFoundError:  # another worker removed it
            continue
    total = sum(size for _, _, size, _ in found)
    for _, _, size, path in sorted(found):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size


def files(folder: Path) -> list[Path]:
    """The log's complete files, oldest first."""
    return sorted(Path(folder).glob(PATTERN), key=lambda p: p.name.rsplit("-", 1)[-1])

"""A bounded sample of the rows a server scores, written to Parquet for `mtlrec skew`.

Off the request path: the scoring thread draws a row sample of each request's checked raw
columns (`sample` of the rows) and appends it to a bounded buffer without waiting or waking
anyone; when the buffer is full the sample is dropped and counted (the log never slows or
queues scoring). A writer thread takes the buffer every POLL_S and gathers samples into
files of up to `file_rows` rows, written whole under a temporary name and renamed (a reader
never sees half a file), also after `flush_s` seconds with rows waiting. Files are `served-<pid>-<time ns>.parquet` in one folder, which worker
processes share; after each write the oldest files are removed until the folder holds at
most `max_mb` (a file that alone exceeds the cap is not kept).
"""

from __future__ import annotations

import logging
import os
import random
import collections
import itertools
import math
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
POLL_S = 0.5  # how often the writer takes the waiting samples


@dataclass(frozen=True)
class LogSettings:
    folder: str | None = None  # None: no log
    sample: float = 0.01
    max_mb: float = 256.0
    file_rows: int = 10_000
    flush_s: float = 60.0
    queue_batches: int = 4096  # requests' samples waiting for the writer; more are dropped


@dataclass(frozen=True)
class _Sample:
    """Sampled rows of one request, as the scoring thread hands them over."""

    categorical: dict[str, list]
    numeric: np.ndarray
    version: str
    served_at: int
    transform: FeatureTransform  # the serving model's (its numeric fields, its list fields)


class ServedLog:
    """See the module docstring. `offer` from the scoring thread; `close` at shutdown."""

    def __init__(self, settings: LogSettings, seed: int | None = None) -> None:
        if settings.folder is None:
            raise ValueError("LogSettings.folder is needed")
        self.settings = settings
        self.folder = Path(settings.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dropped = 0
        self._random = random.Random(seed)
        self._skip: float = self._gap()  # rows before the next kept one
        # a plain deque, not a queue.Queue: handing a sample over must not wake the writer
        # (each wake-up took the GIL from the scoring thread: -13 % requests/s at 1 %)
        self._pending: collections.deque[_Sample] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mtlrec-served-log", daemon=True)
        self._thread.start()

    def offer(self, batch: RawBatch, transform: FeatureTransform, version: str) -> None:
        """Sample the batch's rows into the log (never blocks; drops when the writer lags).

        Each row is kept with probability `sample`, drawn as geometric gaps between kept
        rows, so a request without a kept row costs two integer operations (a draw per
        request cost 20 µs on a loaded scoring thread). Only the kept values are copied
        here; the writer builds the Arrow columns, once per file."""
        n = len(batch)
        if self._skip >= n:
            self._skip -= n
            return
        keep, i = [], self._skip
        while i < n:
            keep.append(i)
            i += 1 + self._gap()
        self._skip = i - n
        if len(self._pending) >= self.settings.queue_batches:
            self.dropped += len(keep)
            return
        self._pending.append(_Sample({name: [values[j] for j in keep] for name, values in batch.categorical.items()},
                                     batch.numeric[keep], version, time.time_ns(), transform))

    def _gap(self) -> float:
        """Rows passed over before the next kept one: geometric with success `sample`."""
        rate = self.settings.sample
        if rate >= 1.0:
            return 0
        if rate <= 0.0:
            return math.inf
        return int(math.log(1.0 - self._random.random()) / math.log(1.0 - rate))

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is waiting and stop the writer."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        """Every POLL_S (or flush_s, if shorter) take what waits: a file is written each
        time `file_rows` rows have gathered, and for fewer once the oldest waited flush_s."""
        waiting: list[_Sample] = []
        rows, since = 0, time.monotonic()
        while not self._stop.wait(min(POLL_S, self.settings.flush_s)):
            while self._pending:
                if not waiting:
                    since = time.monotonic()
                sample = self._pending.popleft()
                waiting.append(sample)
                rows += len(sample.numeric)
                if rows >= self.settings.file_rows:
                    self._write(waiting)
                    waiting, rows = [], 0
            if waiting and time.monotonic() - since >= self.settings.flush_s:
                self._write(waiting)
                waiting, rows = [], 0
        waiting += list(self._pending)
        if waiting:
            self._write(waiting)

    @staticmethod
    def _table(samples: list[_Sample]) -> pa.Table:
        """Samples of one model as one table: the request's columns, when it was served and
        by which model version."""
        spec = samples[0].transform.spec
        multi = {f.name for f in spec.multi_fields}
        columns = {name: pa.array([v for s in samples for v in s.categorical[name]],
                                  pa.list_(pa.string()) if name in multi else pa.string())
                   for name in samples[0].categorical}
        numeric = np.concatenate([s.numeric for s in samples])
        columns |= {f.name: pa.array(numeric[:, j], pa.float64(), mask=np.isnan(numeric[:, j]))
                    for j, f in enumerate(spec.numeric)}
        sizes = [len(s.numeric) for s in samples]
        columns[SERVED_AT] = pa.array(np.repeat([s.served_at for s in samples], sizes), pa.timestamp("ns"))
        columns[VERSION] = pa.array(np.repeat([s.version for s in samples], sizes).tolist(), pa.string())
        return pa.table(columns)

    def _write(self, samples: list[_Sample]) -> None:
        """One file per run of samples scored by one model (a hot reload may change the
        fields between two samples)."""
        for _, run in itertools.groupby(samples, key=lambda sample: id(sample.transform)):
            self._write_file(self._table(list(run)))
        prune(self.folder, int(self.settings.max_mb * 2**20))

    def _write_file(self, table: pa.Table) -> None:
        try:
            name = f"served-{os.getpid()}-{time.time_ns()}.parquet"
            tmp = self.folder / f".{name}.tmp"
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, self.folder / name)
        except OSError as exc:  # a full disk must not stop serving: these rows are lost, and said
            log.warning("served-row log: cannot write to %s (%s); these rows are not logged", self.folder, exc)


def prune(folder: Path, max_bytes: int) -> None:
    """Remove the oldest log files until the folder holds at most `max_bytes` of them."""
    found = []
    for path in folder.glob(PATTERN):
        try:
            stat = path.stat()
        except FileNotFoundError:  # another worker removed it
            continue
        found.append((stat.st_mtime_ns, path.name, stat.st_size, path))
    total = sum(size for _, _, size, _ in found)
    for _, _, size, path in sorted(found):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size


def files(folder: Path) -> list[Path]:
    """The log's complete files, oldest first."""
    return sorted(Path(folder).glob(PATTERN), key=lambda p: p.name.rsplit("-", 1)[-1])

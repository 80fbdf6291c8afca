"""Dynamic micro-batching: the rows of concurrent requests scored in one transform +
onnxruntime call, off the event loop, each request answered with its own rows.

A request hands `score` its typed frame and the bundle it was read with, and waits. One
scoring thread takes the oldest request and every other one queued behind it for the same
bundle (a hot swap never mixes two models in a batch), up to `max_batch_rows` rows; with
`max_wait_ms` > 0 it first waits that long after the oldest request arrived for more to
come. While a batch is being scored the next requests queue, so under load batches grow
by themselves and at concurrency 1 nothing waits. The batch is concatenated, scored once,
and each request gets its slice; a row whose score is not finite fails only its own
request (`rows.check_scores` on the request's rows, naming its row).

Backpressure: at most `max_queue_rows` rows wait; a request that would go past that is
refused at once with `Overloaded` (the server answers 503 + Retry-After) rather than queued
without bound. A caller that stops waiting (a request timeout) leaves its rows unscored
if they were not taken yet. `close` lets the queued requests finish first.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mtlrec.serving import rows as rows_mod
from mtlrec.serving.bundle import Bundle


class Overloaded(Exception):
    """The queue is full (or the server is shutting down): answer 503 and Retry-After."""


@dataclass
class _Request:
    bundle: Bundle
    typed: pl.DataFrame
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchLimits:
    max_batch_rows: int = 2048
    max_wait_ms: float = 0.0
    max_queue_rows: int = 16_384


class MicroBatcher:
    """Requests in, one scoring thread, scores out (module docstring). `on_batch(bundle,
    rows, requests, oov)` is told of every batch scored (metrics)."""

    def __init__(self, limits: BatchLimits,
                 on_batch: Callable[[Bundle, int, int, np.ndarray], None] | None = None) -> None:
        self.limits, self.on_batch = limits, on_batch
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_rows = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="mtlrec-score", daemon=True)
        self._thread.start()

    async def score(self, bundle: Bundle, typed: pl.DataFrame) -> np.ndarray:
        """Probabilities [len(typed), K] of these rows; raises Overloaded, or RowError for a
        row whose score is not finite."""
        loop = asyncio.get_running_loop()
        request = _Request(bundle, typed, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if self._queue and self._queued_rows + len(typed) > self.limits.max_queue_rows:
                raise Overloaded(f"{self._queued_rows:,} rows are waiting to be scored; the limit is "
                                 f"{self.limits.max_queue_rows:,} (serve.max_queue_rows)")
            self._queue.append(request)
            self._queued_rows += len(typed)
            self._cond.notify()
        return await request.future

    def close(self, timeout_s: float = 30.0) -> None:
        """Score what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._score(batch)

    def _next_batch(self) -> list[_Request] | None:
        """Wait for requests, then take the oldest and those behind it for the same bundle
        (None: closed and nothing left)."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].arrived + self.limits.max_wait_ms / 1000
            while self._queued_rows < self.limits.max_batch_rows and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._queue.popleft()]
            rows = len(batch[0].typed)
            while (self._queue and self._queue[0].bundle is batch[0].bundle
                   and rows + len(self._queue[0].typed) <= self.limits.max_batch_rows):
                batch.append(self._queue.popleft())
                rows += len(batch[-1].typed)
            self._queued_rows -= rows
            return batch

    def _score(self, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.future.done()]  # a request that timed out is not scored
        if not live:
            return
        bundle = live[0].bundle
        try:
            typed = live[0].typed if len(live) == 1 else pl.concat([r.typed for r in live])
            scores, oov = bundle.score(typed)
        except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
            for r in live:
                _answer(r, exception=exc)
            return
        if self.on_batch is not None:
            self.on_batch(bundle, len(typed), len(live), oov)
        start = 0
        for r in live:
            mine = scores[start:start + len(r.typed)]
            start += len(r.typed)
            try:
                rows_mod.check_scores(mine, r.typed, bundle.transform, 0)
            except rows_mod.RowError as exc:
                _answer(r, exception=exc)
                continue
            _answer(r, result=mine)


def _answer(request: _Request, result: np.ndarray | None = None, exception: Exception | None = None) -> None:
    """Resolve the request's future on its event loop (unless the caller stopped waiting)."""
    def resolve() -> None:
        if request.future.done():
            return
        if exception is not None:
            request.future.set_exception(exception)
        else:
            request.future.set_result(result)

    request.loop.call_soon_threadsafe(resolve)

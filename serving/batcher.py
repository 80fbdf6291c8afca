"""Dynamic micro-batching: the whole CPU work of concurrent requests on one scoring thread,
off the event loop, their rows scored in one onnxruntime call, each request answered
with its own rows.

A request hands `run` the bundle it was read with and a `Prepare`: a function that reads
the request's body into model inputs and returns them with a `Finish`, the function that
turns the request's slice of the scores into its answer. Both run on the scoring thread,
so a request costs the event loop nothing but its HTTP, and crosses threads once each way
(each crossing costs ~0.3 ms of CPU on this 2-core machine, as much as the checks). The
thread takes the oldest request and every other one queued behind it for the same bundle
(a hot swap never mixes two models in a batch); with `max_wait_ms` > 0 it first waits
that long after the oldest arrived for more to come. It prepares each, scores their rows
together in batches of at most `max_batch_rows`, and finishes each with its slice. While
it works the next requests queue, so under load batches grow by themselves, and at
concurrency 1 nothing waits. A request whose Prepare or Finish raises gets that error and
no other request notices.

Backpressure: at most `max_queue_requests` requests wait; one more is refused at once with
`Overloaded` (the server answers 503 + Retry-After) rather than queued without bound. It
counts requests, not rows: a request's rows are known only once it is read, which is the
scoring thread's work (and `serve.max_rows` bounds each). A caller that stops waiting (a
request timeout) is dropped unread if it was not taken yet. `close` lets the queued
requests finish first.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtlrec.features.transform import ModelInputs
from mtlrec.serving.bundle import Bundle, oov_per_field

Finish = Callable[[np.ndarray], Any]  # the request's scores [its rows, K] → its answer
Prepare = Callable[[], tuple[ModelInputs, Finish]]  # its body → its model inputs, and the rest


class Overloaded(Exception):
    """The queue is full (or the server is shutting down): answer 503 and Retry-After."""


@dataclass
class _Request:
    bundle: Bundle
    prepare: Prepare
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchLimits:
    max_batch_rows: int = 256
    max_wait_ms: float = 0.0
    max_queue_requests: int = 256


class MicroBatcher:
    """Requests in, one scoring thread, answers out (module docstring). `on_batch(bundle,
    rows, requests, oov)` is told of every batch scored (metrics)."""

    def __init__(self, limits: BatchLimits,
                 on_batch: Callable[[Bundle, int, int, np.ndarray], None] | None = None) -> None:
        self.limits, self.on_batch = limits, on_batch
        self._queue: collections.deque[_Request] = collections.deque()
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="mtlrec-score", daemon=True)
        self._thread.start()

    async def run(self, bundle: Bundle, prepare: Prepare) -> Any:
        """The request's answer (what its Finish returns); raises Overloaded, or what its
        Prepare or Finish raised."""
        loop = asyncio.get_running_loop()
        request = _Request(bundle, prepare, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if len(self._queue) >= self.limits.max_queue_requests:
                raise Overloaded(f"{len(self._queue):,} requests are waiting to be scored; the limit is "
                                 f"{self.limits.max_queue_requests:,} (serve.max_queue_requests)")
            self._queue.append(request)
            self._cond.notify()
        return await request.future

    def close(self, timeout_s: float = 30.0) -> None:
        """Answer what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            batch: list[tuple[_Request, ModelInputs, Finish]] = []
            rows = 0
            for item in filter(None, map(_prepared, taken)):
                if batch and rows + len(item[1]) > self.limits.max_batch_rows:
                    self._score(batch)
                    batch, rows = [], 0
                batch.append(item)
                rows += len(item[1])
            if batch:
                self._score(batch)

    def _take(self) -> list[_Request] | None:
        """Wait for requests, then take the oldest and those behind it for the same bundle
        (None: closed and nothing left)."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].arrived + self.limits.max_wait_ms / 1000
            while not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken = [self._queue.popleft()]
            while self._queue and self._queue[0].bundle is taken[0].bundle:
                taken.append(self._queue.popleft())
            return taken

    def _score(self, batch: list[tuple[_Request, ModelInputs, Finish]]) -> None:
        bundle = batch[0][0].bundle
        try:
            inputs = batch[0][1] if len(batch) == 1 else ModelInputs.concat([i for _, i, _ in batch])
            scores = bundle.predict(inputs)
            if self.on_batch is not None:
                self.on_batch(bundle, len(inputs), len(batch), oov_per_field(inputs, bundle.transform))
        except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
            for request, _, _ in batch:
                _answer(request, exception=exc)
            return
        start = 0
        for request, mine, finish in batch:
            try:
                _answer(request, result=finish(scores[start:start + len(mine)]))
            except Exception as exc:  # noqa: BLE001 - this request's own error (a bad score)
                _answer(request, exception=exc)
            start += len(mine)


def _prepared(request: _Request) -> tuple[_Request, ModelInputs, Finish] | None:
    """The request read into model inputs, or None once it is answered (its error, or its
    caller stopped waiting)."""
    if request.future.done():
        return None
    try:
        inputs, finish = request.prepare()
    except Exception as exc:  # noqa: BLE001 - a bad request's error goes to it alone
        _answer(request, exception=exc)
        return None
    return request, inputs, finish


def _answer(request: _Request, result: Any = None, exception: Exception | None = None) -> None:
    """Resolve the request's future on its event loop (unless the caller stopped waiting)."""
    def resolve() -> None:
        if request.future.done():
            return
        if exception is not None:
            request.future.set_exception(exception)
        else:
            request.future.set_result(result)

    request.loop.call_soon_threadsafe(resolve)

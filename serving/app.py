"""The HTTP server: Starlette on uvicorn over onnxruntime and the features/ transform.

POST /predict  {"rows": [{field: value, …}, …]} → per-row scores for every task + version
GET  /health   liveness (always 200 while the process runs) with the served version
GET  /ready    200 once a model is loaded, 503 before
GET  /metrics  Prometheus text: requests, latency histogram, rows, OOV values per field,
               served model version, reloads
and the KServe Open Inference Protocol v2 (`serving.v2`; {name} is the model's registered
name, `Source.model_name`): GET /v2/health/live, /v2/health/ready, /v2/models/{name},
/v2/models/{name}/ready and POST /v2/models/{name}/infer (JSON or binary tensors). Its
errors are the protocol's {"error": message}; "not ready" is a 400, as the protocol asks.

Faults: a body that cannot be scored, however hostile (huge integers, lone surrogates,
deep nesting), gets a 4xx naming the row and field (the contract of `serving.rows`) or
the body, never a 5xx. An exception no handler expects is logged with its traceback and
answered with a generic 500; the connection and the process carry on.
Every response is counted in `mtlrec_requests{endpoint, status}` (endpoint: predict,
health, ready, metrics, or "other" for any other path): the app's own, a 404 or 405, a
500, and those the HTTP protocol sends itself (400 for malformed HTTP, 408). A client that
leaves before its request is complete gets no answer and is not counted.

Slow clients: a request's headers and body must arrive within `request_timeout_s`
(serve.request_timeout_s), counted from the connection or, on a kept-alive connection,
from the request's first byte (the idle wait before it is uvicorn's keep-alive timeout).
A slower client is answered 408 (or, when its answer has begun, just disconnected). This
lives in the HTTP protocol (`TimedH11Protocol`): uvicorn has no such limit, and an ASGI
middleware first runs once the headers are complete, too late for a client trickling them.

Concurrency: the event loop does HTTP only. A request's CPU work (parsing, the checks,
the numpy transform of `bundle.online`, the answer's encoding) runs on the micro-batcher's
scoring thread (`serving.batcher`: concurrent requests' rows in one onnxruntime call, each
request answered with its own rows). A full queue is answered 503 with Retry-After
(`serve.max_queue_requests`), a request not answered within `request_timeout_s` 504.
On SIGTERM uvicorn stops accepting, lets the requests under way finish (within
`request_timeout_s`), then the batcher answers what is queued and stops.

Served rows: with `Settings.log.folder`, a sample of the checked raw rows goes to Parquet
files there (`serving.served_log`: off the request path, rotated, size-capped), which
`mtlrec skew` compares with the model's training data.

Hot reload: a background thread polls the registry every `poll_seconds`; when the alias
moves it downloads and fully verifies the new bundle (checksums, signature, parity)
*beside* the serving one, then swaps a single reference. A request reads that reference
once, so it is scored entirely by the old or entirely by the new model, and no request
waits for or fails during a swap. A bundle that fails to load is refused, counted and
logged; the old model keeps serving and the refused version is not retried until the
alias moves again. No torch is imported here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import h11
import numpy as np
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mtlrec.features.errors import DataError
from mtlrec.features.online import RawBatch
from mtlrec.features.transform import ModelInputs
from mtlrec.serving import bundle as bundle_mod
from mtlrec.serving import jsonio
from mtlrec.serving import rows as rows_mod
from mtlrec.serving import v2
from mtlrec.serving.batcher import BatchLimits, Finish, MicroBatcher, Overloaded, Prepare
from mtlrec.serving.served_log import LogSettings, ServedLog
from mtlrec.serving.source import Source

log = logging.getLogger(__name__)
_LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                    0.1, 0.25, 0.5, 1.0, 2.5)
ENDPOINTS = ("predict", "health", "ready", "metrics")  # the routes' paths, without the "/"


@dataclass(frozen=True)
class Settings:
    max_rows: int = 1000
    max_body_bytes: int = 8 * 2**20
    poll_seconds: float = 30.0
    threads: int = 1
    request_timeout_s: float = 10.0
    batch: BatchLimits = BatchLimits()
    log: LogSettings = LogSettings()


@dataclass(frozen=True)
class Served:
    """What one request is scored with: never changes after creation."""

    version: str
    bundle: bundle_mod.Bundle


class Metrics:
    """Prometheus metrics of one app (its own registry, so apps in one process don't clash)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mtlrec_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("mtlrec_request_seconds", "request latency", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.rows = Counter("mtlrec_rows_scored", "rows scored", registry=r)
        self.batch_rows = Histogram("mtlrec_batch_rows", "rows per micro-batch scored",
                                    buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 5000), registry=r)
        self.batch_requests = Histogram("mtlrec_batch_requests", "requests per micro-batch scored",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.oov = Counter("mtlrec_oov_values", "categorical values outside the vocabulary",
                           ["field"], registry=r)
        self.version = Gauge("mtlrec_model_version", "registered model version served "
                             "(0: a bundle folder)", registry=r, multiprocess_mode="liveall")
        self.reloads = Counter("mtlrec_reloads", "model loads by result", ["result"], registry=r)

    @staticmethod
    def endpoint(path: str | None) -> str:
        """A request path's endpoint label: a route's name or "other" (a fixed set; a label
        per path a client makes up would grow the metric without bound)."""
        name = (path or "").removeprefix("/")
        if name.startswith("v2/"):  # v2_health, v2_infer, v2_ready or v2_metadata
            parts = name.split("/")
            return ("v2_health" if parts[1] == "health" else "v2_infer" if parts[-1] == "infer" else
                    "v2_ready" if parts[-1] == "ready" else "v2_metadata")
        return name if name in ENDPOINTS else "other"

    def count(self, path: str | None, status: int) -> None:
        """One response to a request for `path` (None: a request too incomplete to have one)."""
        self.requests.labels(self.endpoint(path), str(status)).inc()


class _Counted:
    """ASGI middleware: counts every response the app sends, with its latency, and turns an
    exception no handler expected into a logged, counted 500 (a bug must cost one request,
    not the connection or the process)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), None

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.count(scope["path"], status)  # before it is sent: a later /metrics sees it
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except ClientDisconnect:
            return  # the client left mid-request: nobody to answer (a 408 is the protocol's)
        except Exception:  # a bug must not take the connection down
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            if status is None:
                await _error(500, "internal error")(scope, receive, counted)
        if status is not None:
            self.metrics.latency.labels(self.metrics.endpoint(scope["path"])).observe(
                time.perf_counter() - start)


class ModelHolder:
    """The served model and the poller that replaces it."""

    def __init__(self, source: Source, settings: Settings, metrics: Metrics) -> None:
        self.source, self.settings, self.metrics = source, settings, metrics
        self.current: Served | None = None
        self.refused: str | None = None  # the version whose bundle failed to load
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Load the version the source points at, if it is new and not already refused.
        Whatever goes wrong (registry unreachable, download, checks), the served model stays."""
        version = None
        try:
            version = self.source.version()
            if (self.current and self.current.version == version) or version == self.refused:
                return
            loaded = self.source.load(version, self.settings.threads)
        except Exception as exc:  # noqa: BLE001 - a failed reload must never stop serving
            self._fail(version, str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}")
            return
        self.current = Served(version, loaded)  # the swap: one reference assignment
        self.refused, self.last_error = None, None
        self.metrics.reloads.labels("ok").inc()
        self.metrics.version.set(float(version) if version.isdigit() else 0.0)
        log.warning("serving %s version %s", self.source.uri, version)

    def _fail(self, version: str | None, message: str) -> None:
        self.refused, self.last_error = version, message
        self.metrics.reloads.labels("refused").inc()
        log.error("model %s version %s refused, %s: %s", self.source.uri, version,
                  "keeping version " + self.current.version if self.current else "nothing served",
                  message)

    def start(self) -> None:
        self.refresh()
        if self.settings.poll_seconds > 0 and (self.source.follows_alias or self.current is None):
            self._thread = threading.Thread(target=self._poll, name="mtlrec-reload", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            self.refresh()


def create_app(source: Source, settings: Settings = Settings()) -> Starlette:
    metrics = Metrics()
    holder = ModelHolder(source, settings, metrics)

    def on_batch(bundle: bundle_mod.Bundle, rows: int, requests: int, oov: np.ndarray) -> None:
        metrics.rows.inc(rows)
        metrics.batch_rows.observe(rows)
        metrics.batch_requests.observe(requests)
        for j in np.flatnonzero(oov):
            metrics.oov.labels(bundle.transform.categorical_names[j]).inc(int(oov[j]))

    batcher = MicroBatcher(settings.batch, on_batch)
    served_log = ServedLog(settings.log) if settings.log.folder else None

    async def answered(bundle: bundle_mod.Bundle, prepare: Prepare) -> Any:
        """The request's answer from the micro-batcher, or the response when it has none:
        503 + Retry-After when its queue is full, 504 past the request timeout. What the
        request's Prepare or Finish raised is raised."""
        try:
            return await asyncio.wait_for(batcher.run(bundle, prepare), settings.request_timeout_s)
        except Overloaded as exc:
            return _error(503, str(exc), headers={"Retry-After": "1"})
        except TimeoutError:
            return _error(504, f"not scored within {settings.request_timeout_s:g} s (serve.request_timeout_s)")

    async def predict(request: Request) -> Response:
        served = holder.current  # read once: this request is scored by one model throughout
        if served is None:
            return _error(503, "no model loaded yet")
        try:
            body = await _read_body(request, settings.max_body_bytes)
            answer = await answered(served.bundle, functools.partial(
                _predict_work, body, served, settings.max_rows, source.uri, served_log))
        except _TooLarge as exc:
            return _error(413, str(exc))
        except _BadBody as exc:
            return _error(400, str(exc))
        except rows_mod.RowError as exc:
            return _error(422, str(exc), row=exc.row, field=exc.field)
        if isinstance(answer, Response):
            return answer
        return Response(answer, media_type="application/json")

    async def v2_live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def v2_ready(request: Request) -> Response:
        if holder.current is None:
            return _error(400, f"no model loaded: {holder.last_error}")
        return JSONResponse({"ready": True})

    def v2_model(request: Request) -> Served | Response:
        """The served model if the path names it and it is loaded, else the error to send."""
        name = request.path_params["name"]
        if name != source.model_name:
            return _error(404, f"model '{name}' is not served here (this server serves '{source.model_name}')")
        version = request.path_params.get("version")
        served = holder.current
        if served is None:
            return _error(400, f"model '{name}' is not loaded yet")
        if version is not None and version != served.version:
            return _error(404, f"model '{name}' version {version} is not served (version {served.version} is)")
        return served

    async def v2_metadata(request: Request) -> Response:
        served = v2_model(request)
        if isinstance(served, Response):
            return served
        return JSONResponse(v2.metadata(source.model_name, [served.version], served.bundle.transform))

    async def v2_model_ready(request: Request) -> Response:
        served = v2_model(request)
        return served if isinstance(served, Response) else JSONResponse(
            {"name": source.model_name, "ready": True})

    async def v2_infer(request: Request) -> Response:
        served = v2_model(request)  # read once: one model scores the whole request
        if isinstance(served, Response):
            return served
        header = request.headers.get("inference-header-content-length")
        try:
            body = await _read_body(request, settings.max_body_bytes)
            answer = await answered(served.bundle, functools.partial(
                _v2_work, body, header, served, settings.max_rows, source.model_name, served_log))
        except _TooLarge as exc:
            return _error(413, str(exc))
        except ValueError as exc:  # v2.ProtocolError, a RowError from check_scores
            return _error(400, str(v2.row_error(exc) if isinstance(exc, rows_mod.RowError) else exc))
        if isinstance(answer, Response):
            return answer
        body, header_length = answer
        if header_length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(header_length)})

    async def health(request: Request) -> Response:
        served = holder.current
        return JSONResponse({"status": "ok", "model": source.uri,
                             "model_version": served.version if served else None,
                             "last_reload_error": holder.last_error})

    async def ready(request: Request) -> Response:
        served = holder.current
        if served is None:
            return _error(503, f"no model loaded: {holder.last_error}")
        return JSONResponse({"ready": True, "model_version": served.version})

    async def prometheus(request: Request) -> Response:
        registry = metrics.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers (serving.workers): all of them
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        holder.start()
        yield
        holder.stop()
        await asyncio.to_thread(batcher.close)  # uvicorn has drained the requests by now
        if served_log is not None:
            await asyncio.to_thread(served_log.close)

    v2_routes = [Route("/v2/health/live", v2_live), Route("/v2/health/ready", v2_ready)]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        v2_routes += [Route(prefix, v2_metadata), Route(prefix + "/ready", v2_model_ready),
                      Route(prefix + "/infer", v2_infer, methods=["POST"])]
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]),
                            Route("/health", health), Route("/ready", ready),
                            Route("/metrics", prometheus), *v2_routes],
                    middleware=[Middleware(_Counted, metrics=metrics)], lifespan=lifespan)
    app.state.holder, app.state.metrics = holder, metrics
    return app


def serve(source: Source, settings: Settings, host: str = "127.0.0.1", port: int = 8000,
          sock: socket.socket | None = None) -> None:
    """Serve until interrupted (SIGINT/SIGTERM stop it cleanly), on host:port or on a
    listening socket already bound (a worker of `serving.workers`)."""
    app = create_app(source, settings)
    protocol = functools.partial(TimedH11Protocol, timeout_s=settings.request_timeout_s,
                                 on_response=app.state.metrics.count)
    # ws="none": no websocket routes, so an upgrade request is plain HTTP, under the timeout
    config = uvicorn.Config(app, host=host, port=port, http=protocol, ws="none", log_level="warning",
                            access_log=False, timeout_graceful_shutdown=int(settings.request_timeout_s) + 1)
    uvicorn.Server(config).run(sockets=None if sock is None else [sock])


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for receiving each request (see the module
    docstring): armed when a connection opens and when a request's first byte arrives on a
    kept-alive one, disarmed once the request's body is complete. `on_response(path,
    status)` counts the answers this class sends itself."""

    def __init__(self, *args, timeout_s: float, on_response: Callable[[str | None, int], None],
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._timeout_s, self._on_response = timeout_s, on_response
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()  # a pipelined request buffered meanwhile may now be under way

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        super().send_400_response(msg)
        self._on_response(None, 400)

    def _follow(self) -> None:
        """Arm the deadline while a request is partly received (h11 holds part of its head,
        or its body is under way), disarm it once the request is complete. Between requests
        (idle, nothing buffered) it stays as it is: armed on a new connection, off on a
        kept-alive one."""
        state = self.conn.their_state
        if state is h11.SEND_BODY or (state is h11.IDLE and self.conn.trailing_data[0]):
            self._arm()
        elif state is not h11.IDLE:
            self._disarm()

    def _arm(self) -> None:
        """Start the deadline, unless it runs already (it covers the whole request)."""
        if self._deadline is None:
            self._deadline = self.loop.call_later(self._timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        """Too slow: answer 408 unless an answer has begun, and close the connection. The
        app, if it was reading the body, sees the client leave."""
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(_timeout_answer(self._timeout_s))
            self._on_response(self.scope["path"] if self.conn.their_state is h11.SEND_BODY else None,
                              408)
        self.transport.close()


@functools.cache
def _timeout_answer(timeout_s: float) -> bytes:
    """The 408, as bytes: h11 sends no response to a request whose head it has not parsed."""
    body = json.dumps({"error": f"request not received within {timeout_s:g} s "
                                "(serve.request_timeout_s)"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"body of {int(declared):,} bytes; the limit is {limit:,} (serve.max_body_mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"body over {limit:,} bytes (serve.max_body_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class _BadBody(ValueError):
    """A body that is not the row format's JSON object (answered 400)."""


def _predict_work(body: bytes, served: Served, max_rows: int, model_uri: str,
                  served_log: ServedLog | None = None) -> tuple[ModelInputs, Finish]:
    """A /predict body → its model inputs, and how its scores become the JSON answer (the
    micro-batcher's Prepare: runs on the scoring thread)."""
    try:
        payload = jsonio.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise _BadBody(f"invalid JSON: {exc}") from None
    rows = payload.get("rows") if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        raise _BadBody('expected a JSON object {"rows": [...]}')
    if len(rows) > max_rows:
        raise _TooLarge(f"{len(rows)} rows in one request; the limit is {max_rows} (serve.max_rows)")
    batch = rows_mod.from_json(rows, served.bundle.transform)
    inputs = served.bundle.online.encode(batch)
    if served_log is not None:
        served_log.offer(batch, served.bundle.transform, served.version)
    tasks = served.bundle.tasks

    def finish(scores: np.ndarray) -> bytes:
        _check_scores(scores, batch, inputs, served.bundle)
        return jsonio.dumps({"model": model_uri, "model_version": served.version, "tasks": tasks,
                             "scores": served.bundle.answers(scores)})

    return inputs, finish


def _v2_work(body: bytes, header: str | None, served: Served, max_rows: int, model_name: str,
             served_log: ServedLog | None = None) -> tuple[ModelInputs, Finish]:
    """A v2 infer body → its model inputs, and how its scores become the infer response (body,
    JSON header length) (the micro-batcher's Prepare: runs on the scoring thread)."""
    parsed = v2.parse(body, None if header is None else v2.header_length(header))
    rows = max((t.shape[0] for t in parsed.inputs.values()), default=0)
    if rows > max_rows:
        raise _TooLarge(f"a batch of {rows} rows; the limit is {max_rows} (serve.max_rows)")
    batch = v2.to_batch(parsed, served.bundle.transform)
    inputs = served.bundle.online.encode(batch)
    if served_log is not None:
        served_log.offer(batch, served.bundle.transform, served.version)

    def finish(scores: np.ndarray) -> tuple[bytes, int | None]:
        _check_scores(scores, batch, inputs, served.bundle)
        return v2.response(model_name, served.version, parsed, served.bundle.task_info, scores)

    return inputs, finish


def _check_scores(scores: np.ndarray, batch: RawBatch, inputs: ModelInputs, bundle: bundle_mod.Bundle) -> None:
    """Every row's score is finite (rows.check_scores), quoting the request's own value."""
    names = bundle.transform.numeric_names
    rows_mod.check_scores(scores, inputs, bundle.transform,
                          lambda r, field: batch.numeric[r, names.index(field)], 0)

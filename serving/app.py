"""The HTTP server: Starlette on uvicorn over onnxruntime and the features/ transform.

POST /predict  {"rows": [{field: value, …}, …]} → per-row scores for every task + version
GET  /health   liveness (always 200 while the process runs) with the served version
GET  /ready    200 once a model is loaded, 503 before
GET  /metrics  Prometheus text: requests, latency histogram, rows, OOV values per field,
               served model version, reloads

Hot reload: a background thread polls the registry every `poll_seconds`; when the alias
moves it downloads and fully verifies the new bundle (checksums, signature, parity)
*beside* the serving one, then swaps a single reference. A request reads that reference
once, so it is scored entirely by the old or entirely by the new model, and no request
waits for or fails during a swap. A bundle that fails to load is refused, counted and
logged; the old model keeps serving and the refused version is not retried until the
alias moves again. No torch is imported here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mtlrec.features.errors import DataError
from mtlrec.serving import bundle as bundle_mod
from mtlrec.serving import rows as rows_mod
from mtlrec.serving.source import Source

log = logging.getLogger(__name__)
_LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                    0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Settings:
    max_rows: int = 1000
    max_body_bytes: int = 8 * 2**20
    poll_seconds: float = 30.0
    threads: int = 1


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
        self.oov = Counter("mtlrec_oov_values", "categorical values outside the vocabulary",
                           ["field"], registry=r)
        self.version = Gauge("mtlrec_model_version", "registered model version served "
                             "(0: a bundle folder)", registry=r)
        self.reloads = Counter("mtlrec_reloads", "model loads by result", ["result"], registry=r)


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
            loaded = bundle_mod.load(self.source.fetch(version), self.settings.threads)
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

    def finish(endpoint: str, start: float, response: Response) -> Response:
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        served = holder.current  # read once: this request is scored by one model throughout
        if served is None:
            return finish("predict", start, _error(503, "no model loaded yet"))
        try:
            body = await _read_body(request, settings.max_body_bytes)
            payload = json.loads(body, parse_constant=_reject_constant)
        except _TooLarge as exc:
            return finish("predict", start, _error(413, str(exc)))
        except ValueError as exc:
            return finish("predict", start, _error(400, f"invalid JSON: {exc}"))
        rows = payload.get("rows") if isinstance(payload, dict) else None
        if not isinstance(rows, list):
            return finish("predict", start, _error(400, 'expected a JSON object {"rows": [...]}'))
        if len(rows) > settings.max_rows:
            return finish("predict", start, _error(
                413, f"{len(rows)} rows in one request; the limit is {settings.max_rows} (serve.max_rows)"))
        try:
            typed = rows_mod.from_json(rows, served.bundle.transform)
        except rows_mod.RowError as exc:
            return finish("predict", start, _error(422, str(exc), row=exc.row, field=exc.field))
        scores, oov = served.bundle.score(typed)
        metrics.rows.inc(len(rows))
        for j in np.flatnonzero(oov):
            metrics.oov.labels(served.bundle.transform.categorical_names[j]).inc(int(oov[j]))
        tasks = served.bundle.tasks
        return finish("predict", start, JSONResponse({
            "model": source.uri, "model_version": served.version, "tasks": tasks,
            "scores": [dict(zip(tasks, row)) for row in scores.tolist()],
        }))

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
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        holder.start()
        yield
        holder.stop()

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]),
                            Route("/health", health), Route("/ready", ready),
                            Route("/metrics", prometheus)], lifespan=lifespan)
    app.state.holder = holder
    return app


def run(source: Source, settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    uvicorn.run(create_app(source, settings), host=host, port=port, log_level="warning",
                access_log=False)


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


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)

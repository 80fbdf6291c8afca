"""Several server processes on one port (`serve.workers`).

The parent reserves the port and starts `workers` processes (spawned: no thread or lock of
the parent is copied), each a whole server: its own event loop, micro-batcher, onnxruntime
session and hot-reload poller, with its own listening socket on the port (SO_REUSEPORT),
so the kernel deals new connections out evenly among them. (One socket shared by all is
worse under keep-alive: whichever worker is idle when a burst of clients connects accepts
most of them and keeps them, and one process's GIL then carries most of the load; the
serve bench measured 343 against 508 requests/s for the same run at concurrency 32.) Each worker polls the registry on its own and swaps as one
server does; they download a new version into the same cache at once safely
(`files.atomic_folder`: each writes its own version folder and publishes it in one
rename).

Metrics: with more than one worker, prometheus_client's multiprocess mode (its files in a
temporary folder of the parent's) makes every /metrics answer the sum over the workers of
the counters and histograms; the served version is one series per live worker (`pid`).

A worker that exits is logged and replaced. SIGTERM or SIGINT to the parent: it sends
SIGTERM to the workers, each drains its requests (`app.serve`), and it waits for them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
from multiprocessing.process import BaseProcess

from mtlrec.serving.app import Settings, serve
from mtlrec.serving.source import Source

log = logging.getLogger(__name__)


def serve_workers(source: Source, settings: Settings, host: str, port: int, workers: int) -> None:
    """One server in this process (workers = 1) or `workers` processes on host:port."""
    if workers <= 1:
        serve(source, settings, host, port)
        return
    reserved = _socket(host, port)  # bound, never listening: it gets no connection
    with tempfile.TemporaryDirectory(prefix="mtlrec-metrics-") as shared:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared  # the spawned workers inherit it
        try:
            _supervise(source, settings, host, reserved.getsockname()[1], workers)
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            reserved.close()


def _socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port in the port's SO_REUSEPORT group (a port in use by
    anyone else is an error here, in the parent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on connections from a
    # socket that says it is TCP; with Nagle on, a response waited 40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def listening(host: str, port: int) -> socket.socket:
    """One worker's own listening socket on the shared port."""
    sock = _socket(host, port)
    sock.listen(2048)
    return sock


def _worker(source: Source, settings: Settings, host: str, port: int) -> None:
    serve(source, settings, sock=listening(host, port))


def _supervise(source: Source, settings: Settings, host: str, port: int, workers: int) -> None:
    from prometheus_client import multiprocess

    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start() -> BaseProcess:
        process = context.Process(target=_worker, args=(source, settings, host, port),
                                  name="mtlrec-serve-worker")
        process.start()
        return process

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    processes = [start() for _ in range(workers)]
    log.warning("serving with %d worker processes: %s", workers, [p.pid for p in processes])
    try:
        while not stopping.wait(0.5):
            for i, process in enumerate(processes):
                if not process.is_alive():
                    log.error("worker %s exited with %s: starting another", process.pid, process.exitcode)
                    multiprocess.mark_process_dead(process.pid)
                    processes[i] = start()
    finally:
        for process in processes:
            process.terminate()  # SIGTERM: each drains its requests
        for process in processes:
            process.join(timeout=settings.request_timeout_s + 10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

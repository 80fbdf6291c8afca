"""Micro-batching, backpressure, the request timeout and a draining shutdown, against real
`mtlrec serve` processes (the committed tiny bundle): concurrent requests merged into one
batch each get exactly the scores they get alone, a full queue is a 503 with Retry-After,
rows not scored in time a 504, and SIGTERM lets a request under way finish."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from helpers import FIXTURES, Server

BUNDLE = FIXTURES / "legacy_champion" / "bundle"
V2_INFER = f"/v2/models/{BUNDLE.name}/infer"


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [{"shop": f"s{(i + offset) % 4}", "item": f"i{(i * 7 + offset) % 11}", "price": 0.5 + i % 13,
             "age": 18 + (i * 3 + offset) % 50} for i in range(n)]


def _v2(rows: list[dict]) -> dict:
    return {"inputs": [{"name": f, "datatype": "BYTES" if f in ("shop", "item") else "FP32",
                        "shape": [len(rows)], "data": [r[f] for r in rows]} for f in ("shop", "item", "price", "age")]}


def _metric(client: httpx.Client, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith(name))


def _server(tmp_path, *options: str) -> Server:
    return Server(["serve", f"serve.model={BUNDLE}", "serve.poll_seconds=0", f"paths.work_dir={tmp_path}",
                   *options])


def test_concurrent_requests_are_merged_and_each_gets_exactly_its_own_scores(tmp_path):
    server = _server(tmp_path, "serve.max_wait_ms=300")
    try:
        c = httpx.Client(base_url=server.url, timeout=30)
        requests = [("/predict", {"rows": _rows(1, 0)}), ("/predict", {"rows": _rows(7, 1)}),
                    ("/predict", {"rows": _rows(100, 2)}), (V2_INFER, _v2(_rows(7, 3)))]
        alone = [c.post(path, json=body).json() for path, body in requests]
        batches_before, rows_before = _metric(c, "mtlrec_batch_requests_count"), _metric(c, "mtlrec_batch_rows_sum")
        with ThreadPoolExecutor(len(requests) * 2) as pool:  # each request twice, all at once
            together = list(pool.map(lambda pb: httpx.post(server.url + pb[0], json=pb[1], timeout=30).json(),
                                     requests * 2))
        for i, got in enumerate(together):
            want = alone[i % len(requests)]
            key = "scores" if "scores" in want else "outputs"
            assert got[key] == want[key]  # exactly: the same floats, in the request's own order
        batches = _metric(c, "mtlrec_batch_requests_count") - batches_before
        assert batches < len(together)  # merged: fewer batches than requests
        assert _metric(c, "mtlrec_batch_rows_sum") - rows_before == 2 * (1 + 7 + 100 + 7)  # each row once
    finally:
        server.stop()


def test_a_full_queue_is_answered_503_with_retry_after_and_the_queued_request_still_scores(tmp_path):
    server = _server(tmp_path, "serve.max_wait_ms=1500", "serve.max_queue_requests=1")
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, server.url + "/predict", json={"rows": _rows(8)}, timeout=30)
            time.sleep(0.5)  # the first request waits in the queue
            r = httpx.post(server.url + "/predict", json={"rows": _rows(8)}, timeout=30)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "the limit is 1 (serve.max_queue_requests)" in r.json()["error"]
            assert first.result().status_code == 200
    finally:
        server.stop()


def test_rows_not_scored_within_the_request_timeout_get_a_504(tmp_path):
    server = _server(tmp_path, "serve.max_wait_ms=4000", "serve.request_timeout_s=1")
    try:
        r = httpx.post(server.url + "/predict", json={"rows": _rows(3)}, timeout=30)
        assert r.status_code == 504 and "not scored within 1 s" in r.json()["error"]
    finally:
        server.stop()


def test_sigterm_lets_a_request_under_way_finish(tmp_path):
    server = _server(tmp_path, "serve.max_wait_ms=1500")
    result: dict = {}

    def send() -> None:
        result["response"] = httpx.post(server.url + "/predict", json={"rows": _rows(5)}, timeout=30)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.5)  # the request is queued, its batch waiting
    log = server.stop()  # SIGTERM
    sender.join(timeout=30)
    assert result["response"].status_code == 200, log[-2000:]
    assert len(result["response"].json()["scores"]) == 5
    with pytest.raises(httpx.TransportError):  # and the server is gone
        httpx.get(server.url + "/health", timeout=2)


def test_two_worker_processes_share_the_port_and_metrics_sum_over_them(tmp_path):
    server = _server(tmp_path, "serve.workers=2")
    try:
        statuses = [httpx.post(server.url + "/predict", json={"rows": _rows(3, i)}, timeout=30).status_code
                    for i in range(30)]  # a new connection each: the kernel spreads them
        assert statuses == [200] * 30
        c = httpx.Client(base_url=server.url, timeout=30)
        assert _metric(c, 'mtlrec_requests_total{endpoint="predict",status="200"}') == 30  # both workers'
        versions = [line for line in c.get("/metrics").text.splitlines() if line.startswith("mtlrec_model_version{")]
        assert len(versions) == 2 and all('pid="' in line for line in versions)  # one per live worker
    finally:
        log = server.stop()
    assert "serving with 2 worker processes" in log and "Traceback" not in log, log[-3000:]


def test_the_workers_socket_gives_connections_without_nagle():
    """asyncio turns Nagle off only on connections from a socket that says it is TCP; with
    Nagle on, every response waited 40 ms for the client's delayed ACK (2 workers, c1:
    20 requests/s)."""
    import asyncio
    import socket

    from mtlrec.serving.workers import listening

    async def accepted_nodelay() -> int:
        listener = listening("127.0.0.1", 0)
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        value = await asyncio.wait_for(seen, 10)
        writer.close()
        server.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0

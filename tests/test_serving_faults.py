"""Faults and hostile input against a real `mtlrec serve` process (the committed tiny
bundle, no training): valid JSON (the row format, and v2 tensors as JSON or binary) never
gets a 5xx, every response is counted, a slow client is cut off while keep-alive still
works, an unexpected error is a counted 500, and `mtlrec score` refuses an unreadable
input with one line and no output file."""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import select
import socket
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import FIXTURES, Server
from mtlrec.pipeline.cli import main
from mtlrec.serving.app import Served, Settings, create_app
from mtlrec.serving.source import Source

BUNDLE = FIXTURES / "legacy_champion" / "bundle"
FIELDS = ["shop", "item", "price", "age"]  # shop, item categorical; price (log1p), age numeric
GOOD = {"shop": "s1", "item": "i3", "price": 12.5, "age": 30}
TIMEOUT_S = 1  # serve.request_timeout_s of the shared server
DEEP = "[" * 5000 + "]" * 5000


def _rows(*rows: dict) -> bytes:
    return json.dumps({"rows": list(rows)}).encode()


def _with(**values) -> dict:
    return GOOD | values


# (name, body, status, field named by the error: a name, None for a body error, or
# "ok" for a 200 whose scores must be finite probabilities)
CORPUS = [
    ("categorical 2**64", _rows(_with(shop=2**64)), 422, "shop"),
    ("categorical 2**63", _rows(_with(shop=2**63)), 422, "shop"),
    ("categorical -2**63-1", _rows(_with(shop=-2**63 - 1)), 422, "shop"),
    ("categorical 2**63-1", _rows(_with(shop=2**63 - 1)), 200, "ok"),
    ("categorical 4000 digits", _rows(_with(item=10**3999)), 422, "item"),
    ("numeric 10**400", _rows(_with(price=10**400)), 422, "price"),
    ("numeric -10**400", _rows(_with(age=-10**400)), 422, "age"),
    ("numeric 2**70", _rows(_with(price=2**70)), 200, "ok"),
    ("numeric 2**130 overflows float32", _rows(_with(price=2**130)), 422, "price"),
    ("numeric 1e300 overflows the model", _rows(GOOD, _with(age=1e300)), 422, "age"),
    ("numeric 1e308*10 is inf", b'{"rows": [{"shop": "s1", "item": "i3", "price": 1e309, "age": 3}]}',
     422, "price"),
    ("numeric -0.0", _rows(_with(price=-0.0, age=-0.0)), 200, "ok"),
    ("lone surrogate", _rows(_with(item="\ud800")), 422, "item"),
    ("lone surrogate inside, row 2", _rows(GOOD, GOOD, _with(shop="a\udfffb")), 422, "shop"),
    ("surrogates in ignored keys and values", _rows(_with(**{"\ud800": "\udc00", "x": ["\ud800"]})),
     200, "ok"),
    ("unicode names and values", _rows(_with(shop="магазин😀") | {"é\u0301": {"k": [1]}}), 200,
     "ok"),
    ("very long string", _rows(_with(shop="x" * 1_000_000)), 200, "ok"),
    ("duplicate keys", b'{"rows": [{"shop": 1, "shop": "s1", "item": "i3", "price": 1, "age": 2}]}',
     200, "ok"),
    ("empty rows", _rows(), 200, "ok"),
    ("1000 rows", _rows(*[GOOD] * 1000), 200, "ok"),
    ("1001 rows", _rows(*[GOOD] * 1001), 413, None),
    ("1000 empty objects", _rows(*[{}] * 1000), 422, "shop"),
    ("boolean numeric", _rows(_with(age=True)), 422, "age"),
    ("fractional categorical", _rows(_with(shop=1.5)), 422, "shop"),
    ("nested 5000 deep", DEEP.encode(), 400, None),
    ("nested 5000 deep in a row", _rows(_with(x=0)).replace(b'"x": 0', b'"x": ' + DEEP.encode()),
     400, None),
    ("integer of 5000 digits", b'{"rows": [{"shop": "s", "item": "i", "price": ' + b"7" * 5000
     + b', "age": 1}]}', 400, None),
    ("NaN", b'{"rows": [{"shop": "s", "item": "i", "price": NaN, "age": 1}]}', 400, None),
    ("invalid UTF-8", b'{"rows": [{"shop": "\xff\xfe", "item": "i", "price": 1, "age": 1}]}', 400, None),
    ("empty body", b"", 400, None),
    ("a list", b"[]", 400, None),
    ("rows an object", b'{"rows": {}}', 400, None),
    ("rows a string with a surrogate", b'{"rows": "\\ud800"}', 400, None),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    work = tmp_path_factory.mktemp("faults")
    s = Server(["serve", f"serve.model={BUNDLE}", "serve.poll_seconds=0",
                f"serve.request_timeout_s={TIMEOUT_S}", f"paths.work_dir={work}"])
    yield s
    log = s.stop()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]  # nothing unexpected


def _requests_total(client: httpx.Client, **labels: str) -> float:
    """mtlrec_requests_total summed over the series that carry `labels`."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("mtlrec_requests_total{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _check(response: httpx.Response, status: int, field: str | None) -> None:
    assert response.status_code == status, response.text[:300]
    body = response.json()
    if status == 200:
        assert all(0 <= s <= 1 for row in body["scores"] for s in row.values())
        return
    assert len(body["error"]) < 400  # echoed values are cut at 200 characters
    if status == 422:
        assert body["field"] == field and f"field '{field}'" in body["error"]
    elif status == 400:
        assert body["error"].startswith(("invalid JSON", "expected a JSON object"))


def test_hostile_json_is_a_4xx_naming_row_and_field_and_every_response_is_counted(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        before = _requests_total(c)
        for name, body, status, field in CORPUS:
            r = c.post("/predict", content=body, headers={"content-type": "application/json"})
            _check(r, status, field)
            if name == "lone surrogate inside, row 2":
                assert r.json()["row"] == 2
        others = [c.get("/health"), c.get("/ready"), c.get("/nowhere"), c.get("/predict")]
        assert [r.status_code for r in others] == [200, 200, 404, 405]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"NOT HTTP\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 400")  # uvicorn's own answer
        # every request above plus the /metrics read that took `before` (a /metrics
        # response is counted once it is sent, so it never counts itself)
        assert _requests_total(c) - before == len(CORPUS) + len(others) + 1 + 1
        assert _requests_total(c, endpoint="predict", status="422") >= 10


_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats()
            | st.sampled_from([2**63, -2**63 - 1, 2**64, 10**400, -10**400, 2**1024, 1e308, -0.0])
            | st.text(st.characters(codec=None, exclude_categories=()), max_size=8))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=12)
_BODIES = st.one_of(
    _VALUES,                                                         # any document
    st.builds(lambda v: {"rows": v}, _VALUES),                       # any rows
    st.builds(lambda f, v: {"rows": [GOOD | {f: v}]},                # one field of a valid row
              st.sampled_from([*FIELDS, "extra"]), _VALUES),
    st.lists(st.fixed_dictionaries({f: _SCALARS for f in FIELDS}), max_size=5).map(
        lambda rows: {"rows": rows}),                                # rows of any scalars
)


@settings(max_examples=150, deadline=None, database=None)
@given(body=_BODIES)
def test_fuzzed_json_never_gets_a_5xx(server, body):
    r = httpx.post(server.url + "/predict", content=json.dumps(body).encode(), timeout=30)
    assert r.status_code < 500, (body, r.text[:300])
    assert r.status_code in (200, 400, 413, 422) and isinstance(r.json(), dict)


V2_INFER = f"/v2/models/{BUNDLE.name}/infer"  # a bundle folder is served under its folder's name
_V2_TENSORS = st.fixed_dictionaries({
    "name": st.sampled_from([*FIELDS, "extra", "shop_lengths"]),
    "datatype": st.sampled_from(["BYTES", "FP32", "FP64", "INT32", "INT64", "INT8", 3]),
    "shape": st.one_of(st.lists(st.integers(-1, 3) | st.just(10**12), max_size=3), _SCALARS),
}, optional={"data": _VALUES, "parameters": _VALUES | st.fixed_dictionaries(
    {"binary_data_size": st.integers(-1, 40) | _SCALARS})})
_GOOD_V2 = [{"name": f, "datatype": "BYTES" if f in ("shop", "item") else "FP32", "shape": [1],
             "data": [GOOD[f]]} for f in FIELDS]


def _v2_bodies() -> st.SearchStrategy:
    """(body, Inference-Header-Content-Length or None): any JSON, any tensors, one field of
    a valid request changed, and JSON headers followed by any bytes."""
    changed = st.builds(lambda i, key, v: {"inputs": [dict(t, **{key: v}) if j == i else t
                                                      for j, t in enumerate(_GOOD_V2)]},
                        st.integers(0, 3), st.sampled_from(["data", "shape", "datatype"]), _VALUES)
    documents = st.one_of(_VALUES, st.builds(lambda ts: {"inputs": ts}, st.lists(_V2_TENSORS, max_size=5)),
                          changed).map(lambda d: (json.dumps(d).encode(), None))
    binary = st.builds(lambda ts, blob: (json.dumps({"inputs": ts}).encode() + blob,
                                         len(json.dumps({"inputs": ts}).encode())),
                       st.lists(_V2_TENSORS, max_size=4), st.binary(max_size=48))
    return documents | binary


@settings(max_examples=150, deadline=None, database=None)
@given(case=_v2_bodies())
def test_fuzzed_v2_requests_never_get_a_5xx(server, case):
    body, header = case
    headers = {} if header is None else {"Inference-Header-Content-Length": str(header)}
    r = httpx.post(server.url + V2_INFER, content=body, headers=headers, timeout=30)
    assert r.status_code < 500, (body[:300], r.content[:300])
    if r.status_code != 200:
        assert r.status_code in (400, 413) and isinstance(r.json()["error"], str)


def test_the_fuzzers_valid_v2_request_scores_as_predict_does_and_an_empty_batch_is_answered(server):
    """The fixture the fuzzer mutates is itself valid (so mutations test the checks, not a
    request that fails anyway)."""
    v2 = httpx.post(server.url + V2_INFER, json={"inputs": _GOOD_V2}, timeout=30)
    rows = httpx.post(server.url + "/predict", content=_rows(GOOD), timeout=30).json()["scores"][0]
    assert v2.status_code == 200, v2.text
    assert {o["name"]: o["data"][0] for o in v2.json()["outputs"]} == pytest.approx(rows, abs=1e-6)
    empty = httpx.post(server.url + V2_INFER, json={"inputs": [dict(t, shape=[0], data=[]) for t in _GOOD_V2]},
                       timeout=30)
    assert empty.status_code == 200 and all(o["data"] == [] for o in empty.json()["outputs"]), empty.text


def _trickle(port: int, head: bytes, data: bytes, limit_s: float) -> tuple[bytes, float]:
    """Connect, send `head` at once and then `data` one byte a second, until the server
    answers or closes or `limit_s` passes; returns what it sent back and when."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head)
        for byte in data:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(bytes([byte]))
            except OSError:  # closed by the server
                break
            remaining = limit_s - (time.monotonic() - start)
            if remaining <= 0 or select.select([s], [], [], min(1.0, remaining))[0]:
                break
        elapsed = time.monotonic() - start
        s.settimeout(1)
        try:
            reply = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            reply = b"" if elapsed < limit_s else b"<still open>"
    return reply, elapsed


def test_slow_clients_are_cut_off_and_keep_alive_is_not(server):
    limit = 3 * TIMEOUT_S
    reply, elapsed = _trickle(server.port, b"", b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n", limit + 1)
    assert elapsed < limit and (reply == b"" or reply.startswith(b"HTTP/1.1 408")), (reply, elapsed)

    with httpx.Client(base_url=server.url) as c:
        timeouts = _requests_total(c, endpoint="predict", status="408")
    body = _rows(GOOD)
    head = (b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body))
    reply, elapsed = _trickle(server.port, head, body, limit + 1)
    assert elapsed < limit and reply.startswith(b"HTTP/1.1 408"), (reply, elapsed)
    assert b"serve.request_timeout_s" in reply
    with httpx.Client(base_url=server.url) as c:
        assert _requests_total(c, endpoint="predict", status="408") == timeouts + 1

    # a keep-alive connection idle between requests for longer than the request timeout
    # (but within uvicorn's keep-alive) stays open: the same socket answers every request
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    sockets = set()
    for i in range(3):
        time.sleep(1.2 * TIMEOUT_S if i else 0)
        conn.request("POST", "/predict", body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["scores"]) == 1
        sockets.add(conn.sock.getsockname())
    conn.close()
    assert len(sockets) == 1


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_an_unexpected_error_is_a_counted_500_with_a_logged_traceback(tmp_path, caplog):
    from starlette.testclient import TestClient

    app = create_app(Source(str(BUNDLE), None, tmp_path), Settings(poll_seconds=0))
    with TestClient(app) as client, caplog.at_level(logging.ERROR):
        served = app.state.holder.current
        # a fault inside scoring (a session that is gone), not a property of the request
        app.state.holder.current = Served(served.version, dataclasses.replace(served.bundle, session=None))
        r = client.post("/predict", json={"rows": [GOOD]})
        assert r.status_code == 500 and r.json() == {"error": "internal error"}
        assert "NoneType" not in r.text  # no internals in the answer
        metrics = client.get("/metrics").text
        assert 'mtlrec_requests_total{endpoint="predict",status="500"} 1.0' in metrics
        assert client.get("/health").status_code == 200  # still serving
    logged = [rec for rec in caplog.records if rec.exc_info]
    assert len(logged) == 1 and logged[0].exc_info[0] is AttributeError


def _parquet(path: Path, rows: int = 20_000) -> Path:
    """A valid input of the bundle's fields in 4 zstd row groups."""
    pl.DataFrame({"rid": range(rows), "shop": [f"s{i % 12}" for i in range(rows)],
                  "item": [f"i{i % 40}" for i in range(rows)],
                  "price": [float(i % 50) for i in range(rows)],
                  "age": [20 + i % 50 for i in range(rows)]}).write_parquet(
        path, row_group_size=rows // 4, compression="zstd")
    return path


def _truncated(path: Path) -> None:
    data = _parquet(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_third_row_group(path: Path) -> None:
    """Readable footer, garbage page header in a later row group: the failure comes after
    the first chunks were scored and written."""
    import pyarrow.parquet as pq

    data = bytearray(_parquet(path).read_bytes())
    offset = pq.ParquetFile(path).metadata.row_group(2).column(1).data_page_offset
    data[offset:offset + 40] = b"\0" * 40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make", [
    _truncated,
    _corrupt_third_row_group,
    lambda p: p.write_text("rid,shop,item,price,age\n1,s1,i1,2.5,30\n"),  # a CSV named .parquet
    lambda p: p.write_bytes(b""),
    lambda p: p.mkdir(),                                                  # a folder named .parquet
], ids=["truncated", "corrupt-page", "csv", "empty", "folder"])
def test_score_refuses_an_unreadable_input_in_one_line(tmp_path, capsys, make):
    bad = tmp_path / "in.parquet"
    make(bad)
    out = tmp_path / "out" / "scores.parquet"
    code = main(["score", f"serve.model={BUNDLE}", f"score.input={bad}", f"score.output={out}",
                 "score.chunk_rows=3000", "score.id_column=rid", f"paths.work_dir={tmp_path / 'work'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"mtlrec score: error: {bad}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []



def test_score_refuses_a_row_whose_score_is_not_finite(tmp_path, capsys):
    """A number far outside the training data overflows the model's float32 input: the
    run stops naming the row and field instead of writing a NaN score."""
    frame = pl.read_parquet(_parquet(tmp_path / "ok.parquet"))
    frame.with_columns(pl.when(pl.col("rid") == 12_345).then(1e300).otherwise(pl.col("age"))
                       .alias("age")).write_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out" / "scores.parquet"
    assert main(["score", f"serve.model={BUNDLE}", f"score.input={tmp_path / 'in.parquet'}",
                 f"score.output={out}", "score.chunk_rows=3000", "score.id_column=rid",
                 f"paths.work_dir={tmp_path / 'work'}"]) == 2
    assert "in.parquet: row 12345, field 'age': value 1e+300 is too far outside the training " \
           "data" in capsys.readouterr().err
    assert not out.exists()

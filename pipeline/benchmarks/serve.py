"""`mtlrec bench serve`: serving latency and throughput.

1. Model only: onnxruntime (the exported bundle) vs torch eager (the trained model) on the
   same model-ready rows, batch 1 / 100 / 1,000, one thread each (serving's setting):
   p50/p99 latency and rows/s.
2. One request's path in-process (100 rows): JSON parse, row checks, feature transform,
   onnxruntime, response encoding: where a request's time goes.
3. The real HTTP server (`mtlrec serve`, its own process) under a real client (stdlib
   http.client, keep-alive, one connection per concurrent caller, in this process) at
   concurrency 1, 8 and 32 with 100-row requests: p50/p99, requests/s, errors.

The model is the main job's MMoE (default sizes), trained for one epoch on
`bench.serve_rows_per_day` synthetic rows per day in `<work_dir>/bench/serve` (built on
first use). Client and server share the machine's cores, as they would on a 2-core box.
Writes reports/serve.json and reports/serve.md.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mtlrec.features.folder import FeaturesFolder
from mtlrec.features.synth import generate
from mtlrec.features.transform import ModelInputs
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks.measure import machine, write_report
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.export import export_run, first_rows, load_ranker
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.targets import ingest_logs
from mtlrec.pipeline.train import train_run
from mtlrec.serving import bundle as bundle_mod
from mtlrec.serving import rows as rows_mod
from mtlrec.serving.export import reference_scores

BATCHES = (1, 100, 1000)
CONCURRENCY = (1, 8, 32)
REQUEST_ROWS = 100
GOAL_P99_MS = 10.0


def run(cfg: Config, overrides: list[str]) -> dict:
    work = Path(cfg.paths.work_dir) / "bench" / "serve"
    job = config_mod.load([f"paths.work_dir={work}", "synth.days=4",
                           f"synth.rows_per_day={cfg.bench.serve_rows_per_day}",
                           "trainer.max_epochs=1", f"seed={cfg.seed}"])
    run, model = _exported_run(job)  # loaded with one onnxruntime thread, serving's setting
    features = FeaturesFolder(Path(job.paths.features)).require(job.data.name)
    ranker = load_ranker(run, features)
    valid = first_rows(features, "valid", max(BATCHES), job.trainer.memory_budget_mb)
    raw_rows = _raw_rows(job, model, REQUEST_ROWS)
    result = {
        "machine": machine(), "overrides": overrides, "model": job.model.model_dump(),
        "request_rows": REQUEST_ROWS,
        "model_only": _model_only(model, ranker, valid),
        "request_path": _request_path(model, raw_rows),
        "http": _http(run.bundle, json.dumps({"rows": raw_rows}).encode(), cfg.bench.serve_requests),
    }
    c8 = next(r for r in result["http"] if r["concurrency"] == 8)
    result["goal"] = {"p99_ms_at_concurrency_8": GOAL_P99_MS, "measured_p99_ms": c8["p99_ms"],
                      "met": c8["p99_ms"] <= GOAL_P99_MS and c8["errors"] == 0}
    js, md = write_report(Path(cfg.paths.reports), "serve", result, _markdown(result))
    print(f"bench serve: wrote {js} and {md}")
    return result


def _exported_run(job: Config) -> tuple[RunFolder, bundle_mod.Bundle]:
    """The bench's model: the main job's MMoE trained on its synthetic logs and exported
    (built on first use, reused after), and its verified bundle."""
    run = RunFolder(job.paths.run_dir)
    if not run.is_trained():
        generate(job.synth, Path(job.synth.out_dir))
        ingest_logs(job)
        train_run(job)
    return run, export_run(job, run)


def _raw_rows(cfg: Config, model: bundle_mod.Bundle, n: int) -> list[dict]:
    """Raw rows as a client sends them (newest day's logs: categorical ids as strings)."""
    t = model.transform
    path = max(Path(cfg.synth.out_dir).glob("day=*.csv"))
    frame = pl.read_csv(path, n_rows=n, schema_overrides={c: pl.String for c in t.categorical_names})
    return frame.select(*t.categorical_names, *t.numeric_names).to_dicts()


def _timed(fn, repeats: int) -> np.ndarray:
    fn()  # warm-up
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out


def _summary(seconds: np.ndarray, rows: int) -> dict:
    return {"p50_ms": 1e3 * float(np.percentile(seconds, 50)),
            "p99_ms": 1e3 * float(np.percentile(seconds, 99)),
            "rows_per_s": rows * len(seconds) / float(seconds.sum()), "calls": len(seconds)}


def _model_only(model: bundle_mod.Bundle, ranker, inputs: ModelInputs) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = []
        for batch in BATCHES:
            repeats = max(30, min(2000, 20_000 // batch))
            x = inputs.head(batch)

            def eager(x=x):
                reference_scores(ranker, model.transform, x)
            onnx = _summary(_timed(lambda x=x: model.predict(x), repeats), batch)
            torch_ = _summary(_timed(eager, repeats), batch)
            out.append({"batch": batch, "onnxruntime": onnx, "torch_eager": torch_,
                        "speedup_p50": torch_["p50_ms"] / onnx["p50_ms"]})
        return out
    finally:
        torch.set_num_threads(threads)


def _request_path(model: bundle_mod.Bundle, raw_rows: list[dict]) -> dict:
    body = json.dumps({"rows": raw_rows}).encode()
    typed = rows_mod.from_json(raw_rows, model.transform)
    inputs = model.transform.to_numpy(typed)
    scores = model.predict(inputs)
    steps = {
        "json_parse": lambda: json.loads(body),
        "row_checks": lambda: rows_mod.from_json(raw_rows, model.transform),
        "feature_transform": lambda: model.transform.to_numpy(typed),
        "onnxruntime": lambda: model.predict(inputs),
        "response_json": lambda: json.dumps({"scores": [dict(zip(model.tasks, r))
                                                        for r in scores.tolist()]}),
    }
    return {name: 1e3 * float(np.median(_timed(fn, 300))) for name, fn in steps.items()} | {
        "body_bytes": len(body)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(bundle: Path, body: bytes, requests: int) -> list[dict]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mtlrec.pipeline.cli", "serve", f"serve.model={bundle}",
         f"serve.port={port}", "serve.poll_seconds=0", "serve.threads=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(server, port)
        return [_load(port, body, c, requests) for c in CONCURRENCY]
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_ready(server: subprocess.Popen, port: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"bench serve: the server exited: {server.stderr.read()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("bench serve: the server did not become ready in 120 s")


def _load(port: int, body: bytes, concurrency: int, requests: int) -> dict:
    """`requests` POSTs spread over `concurrency` keep-alive connections, after a warm-up."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    per_caller = max(1, requests // concurrency)
    headers = {"Content-Type": "application/json"}

    def caller() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, failed = [], []
        for i in range(per_caller + 5):
            start = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failed.append(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException) as exc:
                failed.append(repr(exc))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if i >= 5:  # the first requests of a connection are warm-up
                mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies)
    return {"concurrency": concurrency, "requests": len(lat), "errors": len(errors),
            "p50_ms": 1e3 * float(np.percentile(lat, 50)), "p99_ms": 1e3 * float(np.percentile(lat, 99)),
            "requests_per_s": len(threads) * (per_caller + 5) / wall,
            "rows_per_s": len(threads) * (per_caller + 5) * REQUEST_ROWS / wall,
            "first_errors": errors[:3]}


def _markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Serving benchmark (`mtlrec bench serve`)", "",
             f"{m['cpus']} CPU cores, Python {m['python']}, torch {m['torch']}; model "
             f"{r['model']['arch']} ({r['model']['n_experts']} experts of {r['model']['expert_hidden']}, "
             f"towers {r['model']['tower_hidden']}, embedding dim {r['model']['embedding_dim']}); "
             f"{m['time']}.", "",
             "## Model only: onnxruntime vs torch eager (1 thread each, same rows)", "",
             "| batch | ORT p50 ms | ORT p99 ms | ORT rows/s | torch p50 ms | torch p99 ms "
             "| torch rows/s | ORT speed-up (p50) |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in r["model_only"]:
        o, t = row["onnxruntime"], row["torch_eager"]
        lines.append(f"| {row['batch']:,} | {o['p50_ms']:.3f} | {o['p99_ms']:.3f} | {o['rows_per_s']:,.0f} "
                     f"| {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | {t['rows_per_s']:,.0f} "
                     f"| {row['speedup_p50']:.2f}× |")
    p = r["request_path"]
    lines += ["", f"## One request in-process ({r['request_rows']} rows, {p['body_bytes']:,} bytes of JSON)",
              "", "| step | median ms |", "| --- | ---: |"]
    lines += [f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in p.items() if k != "body_bytes"]
    lines += ["", f"## HTTP server under load ({r['request_rows']}-row requests, keep-alive)", "",
              "| concurrency | requests | errors | p50 ms | p99 ms | requests/s | rows/s |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for h in r["http"]:
        lines.append(f"| {h['concurrency']} | {h['requests']:,} | {h['errors']} | {h['p50_ms']:.2f} "
                     f"| {h['p99_ms']:.2f} | {h['requests_per_s']:,.0f} | {h['rows_per_s']:,.0f} |")
    g = r["goal"]
    lines += ["", f"Goal: p99 ≤ {g['p99_ms_at_concurrency_8']:.0f} ms at concurrency 8 with zero errors: "
              f"**{'met' if g['met'] else 'not met'}** (measured p99 {g['measured_p99_ms']:.2f} ms)."]
    return "\n".join(lines) + "\n"

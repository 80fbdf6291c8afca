"""`mtlrec bench serve`: serving latency and throughput.

1. Model only: onnxruntime (the exported bundle) vs torch eager (the trained model) on the
   same model-ready rows, batch 1 / 100 / 1,000, one thread each (serving's setting):
   p50/p99 latency and rows/s.
2. One request's path in-process (100 rows): JSON parse, row checks, feature transform
   (the served numpy one, and training's polars one for comparison), onnxruntime, response
   encoding: where a request's time goes.
3. The real HTTP server (`mtlrec serve`, its own processes) under an external load
   generator (`hey`, keep-alive, one connection per concurrent caller) at concurrency 1, 8
   and 32 with 100-row requests, for the row JSON, v2 JSON and v2 binary formats, with
   each worker count of `bench.serve_workers`: p50/p99, requests/s, rows/s, errors, and
   the server's CPU time per request (all its processes).

The model is the main job's MMoE (default sizes), trained for one epoch on
`bench.serve_rows_per_day` synthetic rows per day in `<work_dir>/bench/serve` (built on
first use). Client and server share the machine's cores, as they would on a 2-core box.
Writes reports/serve.json and reports/serve.md.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import torch

from mtlrec.features.folder import FeaturesFolder
from mtlrec.features.synth import generate
from mtlrec.features.transform import ModelInputs
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks.measure import machine, write_report
from mtlrec.pipeline.config import Config, ConfigError
from mtlrec.pipeline.export import export_run, first_rows, load_ranker
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.targets import ingest_logs
from mtlrec.pipeline.train import train_run
from mtlrec.serving import bundle as bundle_mod
from mtlrec.serving import jsonio, v2
from mtlrec.serving import rows as rows_mod
from mtlrec.serving.export import reference_scores

BATCHES = (1, 100, 1000)
CONCURRENCY = (1, 8, 32)
REQUEST_ROWS = 100
GOAL_P99_MS = 20.0  # at concurrency 8, every format
GOAL_ROWS_PER_S = 60_000  # at concurrency 32, the v2 binary format
BINARY = "v2 binary"


def run(cfg: Config, overrides: list[str]) -> dict:
    _hey()  # before minutes of training: say at once when the load generator is missing
    work = Path(cfg.paths.work_dir) / "bench" / "serve"
    job = config_mod.load([f"paths.work_dir={work}", "synth.days=4",
                           f"synth.rows_per_day={cfg.bench.serve_rows_per_day}",
                           "trainer.max_epochs=1", f"seed={cfg.seed}"])
    run, model = _exported_run(job)  # loaded with one onnxruntime thread, serving's setting
    features = FeaturesFolder(Path(job.paths.features)).require(job.data.name)
    ranker = load_ranker(run, features)
    valid = first_rows(features, "valid", max(BATCHES), job.trainer.memory_budget_mb)
    raw_rows = _raw_rows(job, model, REQUEST_ROWS)
    bodies = request_bodies(model, raw_rows, run.bundle.name)
    model_only = _model_only(model, ranker, valid)
    http_levels = []
    for workers in cfg.bench.serve_workers:
        with tempfile.TemporaryDirectory() as folder:
            http_levels += [{"workers": workers, **level} for level in
                            _http(run.bundle, bodies, cfg.bench.serve_requests, workers, Path(folder))]
    result = {
        "machine": machine(), "overrides": overrides, "model": job.model.model_dump(),
        "request_rows": REQUEST_ROWS, "workers": cfg.bench.serve_workers, "load_generator": "hey",
        "model_only": model_only, "request_path": _request_path(model, raw_rows, bodies),
        "http": http_levels,
    }
    result["goals"] = _goals(result)
    js, md = write_report(Path(cfg.paths.reports), "serve", result, _markdown(result))
    print(f"bench serve: wrote {js} and {md}")
    return result


def _goals(r: dict) -> dict:
    """The issue's goals against the measured levels; onnxruntime's own cost per row is its
    batch-100 p50 from the model-only section, measured in the same run."""
    ort_ms = next(m["onnxruntime"]["p50_ms"] for m in r["model_only"] if m["batch"] == REQUEST_ROWS)
    level = {(h["format"], h["concurrency"]): h for h in r["http"] if h["workers"] == r["workers"][-1]}
    p99 = {fmt: level[(fmt, 8)]["p99_ms"] for fmt, _ in level}
    overhead_ms = level[(BINARY, 32)]["server_cpu_ms_per_request"] - ort_ms
    return {
        "p99_ms_at_8": {"goal": GOAL_P99_MS, "measured": p99, "met": max(p99.values()) <= GOAL_P99_MS},
        "rows_per_s_at_32_binary": {"goal": GOAL_ROWS_PER_S, "measured": level[(BINARY, 32)]["rows_per_s"],
                                    "met": level[(BINARY, 32)]["rows_per_s"] >= GOAL_ROWS_PER_S},
        "errors": {"measured": sum(h["errors"] for h in r["http"]),
                   "met": all(h["errors"] == 0 for h in r["http"])},
        "binary_overhead_per_row": {"ort_us_per_row": 1e3 * ort_ms / REQUEST_ROWS,
                                    "server_overhead_us_per_row": 1e3 * overhead_ms / REQUEST_ROWS,
                                    "met": overhead_ms <= ort_ms},
    }


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


def _request_path(model: bundle_mod.Bundle, raw_rows: list[dict], bodies: dict[str, dict]) -> dict:
    """Where one request's time goes, in-process, step by step (median ms)."""
    body = bodies["row JSON"]["body"]
    batch = rows_mod.from_json(raw_rows, model.transform)
    typed = rows_mod.from_frame(pl.DataFrame(raw_rows), model.transform, 0)
    inputs = model.online.encode(batch)
    scores = model.predict(inputs)
    binary = bodies[BINARY]
    header = int(binary["headers"]["Inference-Header-Content-Length"])
    parsed = v2.parse(binary["body"], header)
    steps = {
        "row JSON: parse": lambda: jsonio.loads(body),
        "row JSON: row checks": lambda: rows_mod.from_json(raw_rows, model.transform),
        "v2 binary: parse": lambda: v2.parse(binary["body"], header),
        "v2 binary: tensor checks": lambda: v2.to_batch(parsed, model.transform),
        "feature transform (served: numpy)": lambda: model.online.encode(batch),
        "feature transform (polars, as in training)": lambda: model.transform.to_numpy(typed),
        "onnxruntime": lambda: model.predict(inputs),
        "row JSON: response": lambda: jsonio.dumps({"scores": model.answers(scores)}),
        "v2 binary: response": lambda: v2.response("m", "1", parsed, model.task_info, scores),
    }
    return {name: 1e3 * float(np.median(_timed(fn, 300))) for name, fn in steps.items()} | {
        "body_bytes": {fmt: len(b["body"]) for fmt, b in bodies.items()}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hey() -> str:
    """The external load generator, or a clear error saying how to install it."""
    found = shutil.which("hey")
    if found is None:
        raise ConfigError("bench serve drives the server with the `hey` load generator, which is not "
                          "installed: apt-get install hey (Debian/Ubuntu; or go install "
                          "github.com/rakyll/hey@latest)")
    return found


def request_bodies(model: bundle_mod.Bundle, raw_rows: list[dict], name: str) -> dict[str, dict]:
    """The same rows in each format the bench drives: path, body, headers."""
    import tritonclient.http as triton  # the v2 client's own binary encoding

    t = model.transform
    columns = {f: [r[f] for r in raw_rows] for f in [*t.categorical_names, *t.numeric_names]}
    v2_json = {"inputs": [{"name": f, "datatype": "FP32" if f in t.numeric_names else "BYTES",
                           "shape": [len(raw_rows)], "data": v} for f, v in columns.items()]}
    tensors = []
    for f, values in columns.items():
        numeric = f in t.numeric_names
        tensor = triton.InferInput(f, [len(raw_rows)], "FP32" if numeric else "BYTES")
        tensor.set_data_from_numpy(np.asarray(values, dtype=np.float32) if numeric else
                                   np.asarray([v or "" for v in values], dtype=object))
        tensors.append(tensor)
    outputs = [triton.InferRequestedOutput(task) for task in model.tasks]
    binary, header = triton.InferenceServerClient.generate_request_body(tensors, outputs=outputs)
    infer = f"/v2/models/{name}/infer"
    return {
        "row JSON": {"path": "/predict", "body": json.dumps({"rows": raw_rows}).encode(), "headers": {}},
        "v2 JSON": {"path": infer, "body": json.dumps(v2_json).encode(), "headers": {}},
        "v2 binary": {"path": infer, "body": binary,
                      "headers": {"Inference-Header-Content-Length": str(header)}},
    }


def _http(bundle: Path, bodies: dict[str, dict], requests: int, workers: int, folder: Path) -> list[dict]:
    """Each format at each concurrency, driven by `hey` against `mtlrec serve` in its own
    processes; the server's CPU seconds (all its processes) read around every level."""
    hey = _hey()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mtlrec.pipeline.cli", "serve", f"serve.model={bundle}",
         f"serve.port={port}", "serve.poll_seconds=0", "serve.threads=1", f"serve.workers={workers}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(server, port)
        out = []
        for fmt, spec in bodies.items():
            body_file = folder / f"body-{fmt.replace(' ', '-')}"
            body_file.write_bytes(spec["body"])
            url = f"http://127.0.0.1:{port}{spec['path']}"
            args = [hey, "-m", "POST", "-T", "application/json", "-D", str(body_file),
                    *[x for k, v in spec["headers"].items() for x in ("-H", f"{k}: {v}")]]
            subprocess.run([*args, "-n", "64", "-c", "4", url], capture_output=True, check=True)  # warm-up
            for concurrency in CONCURRENCY:
                cpu = _cpu_seconds(server.pid)
                done = subprocess.run([*args, "-n", str(requests), "-c", str(concurrency), "-o", "csv", url],
                                      capture_output=True, text=True, check=True)
                cpu = _cpu_seconds(server.pid) - cpu
                out.append({"format": fmt, "concurrency": concurrency, **_hey_summary(done.stdout),
                            "server_cpu_ms_per_request": 1e3 * cpu / requests})
                print(f"bench serve: {fmt}, concurrency {concurrency}: p99 {out[-1]['p99_ms']:.1f} ms, "
                      f"{out[-1]['rows_per_s']:,.0f} rows/s, {out[-1]['errors']} errors", file=sys.stderr)
        return out
    finally:
        server.terminate()
        server.wait(timeout=60)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (the worker processes)."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _hey_summary(csv_text: str) -> dict:
    """hey's per-request CSV (response-time, …, status-code, offset) → the level's figures."""
    frame = pl.read_csv(io.StringIO(csv_text))
    latency = frame["response-time"].to_numpy()
    wall = float((frame["offset"] + frame["response-time"]).max())
    errors = int((frame["status-code"] != 200).sum())
    return {"requests": frame.height, "errors": errors,
            "statuses": {str(k): int(v) for k, v in zip(*np.unique(frame["status-code"], return_counts=True))},
            "p50_ms": 1e3 * float(np.percentile(latency, 50)), "p99_ms": 1e3 * float(np.percentile(latency, 99)),
            "requests_per_s": frame.height / wall, "rows_per_s": frame.height * REQUEST_ROWS / wall}


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


def _where_the_time_goes(r: dict) -> list[str]:
    """A v2 binary request's server CPU at concurrency 32 split into the in-process steps
    measured in the same run and the rest (HTTP on the event loop, thread crossings, metrics)."""
    p = r["request_path"]
    level = next(h for h in r["http"] if h["workers"] == r["workers"][-1] and h["format"] == BINARY
                 and h["concurrency"] == 32)
    steps = {"parse (JSON header, cutting the BYTES elements)": p[f"{BINARY}: parse"],
             "tensor checks": p[f"{BINARY}: tensor checks"],
             "feature transform (numpy)": p["feature transform (served: numpy)"],
             "onnxruntime": p["onnxruntime"], "response": p[f"{BINARY}: response"]}
    total = level["server_cpu_ms_per_request"]
    steps["the rest: HTTP (h11, Starlette), thread crossings, metrics"] = total - sum(steps.values())
    lines = ["", f"## Where a {BINARY} request's CPU goes (concurrency 32, {r['workers'][-1]} server "
             f"process(es): {total:.2f} ms per request)", "", "| part | ms | share |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v:.3f} | {v / total:.0%} |" for k, v in steps.items()]
    return lines


def _markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Serving benchmark (`mtlrec bench serve`)", "",
             f"{m['cpus']} CPU cores shared by the server and the load generator, Python {m['python']}, "
             f"torch {m['torch']}; model {r['model']['arch']} ({r['model']['n_experts']} experts of "
             f"{r['model']['expert_hidden']}, towers {r['model']['tower_hidden']}, embedding dim "
             f"{r['model']['embedding_dim']}); {m['time']}.", "",
             "## Model only: onnxruntime vs torch eager (1 thread each, same rows)", "",
             "| batch | ORT p50 ms | ORT p99 ms | ORT rows/s | torch p50 ms | torch p99 ms "
             "| torch rows/s | ORT speed-up (p50) |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in r["model_only"]:
        o, t = row["onnxruntime"], row["torch_eager"]
        lines.append(f"| {row['batch']:,} | {o['p50_ms']:.3f} | {o['p99_ms']:.3f} | {o['rows_per_s']:,.0f} "
                     f"| {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | {t['rows_per_s']:,.0f} "
                     f"| {row['speedup_p50']:.2f}× |")
    p = r["request_path"]
    sizes = ", ".join(f"{fmt} {n:,} bytes" for fmt, n in p["body_bytes"].items())
    lines += ["", f"## One request in-process ({r['request_rows']} rows; {sizes})", "",
              "| step | median ms |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in p.items() if k != "body_bytes"]
    lines += ["", f"## HTTP server under load: `hey`, {r['request_rows']}-row requests, keep-alive", "",
              "| server processes | format | concurrency | requests | errors | p50 ms | p99 ms | requests/s "
              "| rows/s | server CPU ms/request |",
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for h in r["http"]:
        lines.append(f"| {h['workers']} | {h['format']} | {h['concurrency']} | {h['requests']:,} | {h['errors']} "
                     f"| {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | {h['requests_per_s']:,.0f} "
                     f"| {h['rows_per_s']:,.0f} | {h['server_cpu_ms_per_request']:.2f} |")
    lines += _where_the_time_goes(r)
    g = r["goals"]

    def mark(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    o = g["binary_overhead_per_row"]
    lines += ["", f"Goals (issue 15), with {r['workers'][-1]} server process(es):", "",
              f"- p99 ≤ {g['p99_ms_at_8']['goal']:.0f} ms at concurrency 8, every format: "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in g["p99_ms_at_8"]["measured"].items())
              + f": {mark(g['p99_ms_at_8']['met'])}",
              f"- ≥ {g['rows_per_s_at_32_binary']['goal']:,} rows/s at concurrency 32, v2 binary: "
              f"{g['rows_per_s_at_32_binary']['measured']:,.0f}: {mark(g['rows_per_s_at_32_binary']['met'])}",
              f"- zero errors: {g['errors']['measured']}: {mark(g['errors']['met'])}",
              f"- v2 binary server overhead per row (server CPU per request at concurrency 32 minus "
              f"onnxruntime's batch-{r['request_rows']} cost, per row) ≤ onnxruntime's own: "
              f"{o['server_overhead_us_per_row']:.1f} µs vs {o['ort_us_per_row']:.1f} µs: {mark(o['met'])}", ""]
    return "\n".join(lines)

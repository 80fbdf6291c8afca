"""Running a measured job (a worker in its own process, so its peak memory is its own; or
a train + evaluate through the pipeline stages) and writing the JSON + Markdown report."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch


def run_worker(module: str, args: list[str]) -> dict:
    """Run `python -m module args…`; the worker prints one JSON line last on stdout."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {module} {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


BENCH_FILE = "bench.json"  # in a run folder: its training wall time, written when it finished


def train_and_evaluate(overrides: list[str], reuse: bool = False) -> dict:
    """Train from scratch and evaluate on test through the pipeline stages: {"metrics":
    evaluate's metrics, "samples_per_s": median over epochs, "epochs": per model,
    "train_s": training wall time}. With `reuse`, a run of this exact configuration that
    already finished is evaluated as it is (a bench stopped half-way resumes)."""
    from mtlrec.pipeline import config as config_mod
    from mtlrec.pipeline import stages

    run_cfg = config_mod.load([*overrides, "train.force=true"])
    run_dir = Path(run_cfg.paths.run_dir)
    timing = run_dir / BENCH_FILE
    if reuse and timing.is_file() and (run_dir / "config.yaml").read_text() == config_mod.to_yaml(run_cfg):
        train_s = json.loads(timing.read_text())["train_s"]
        print(f"bench: reusing the finished run {run_dir}", file=sys.stderr)
    else:
        start = time.perf_counter()
        stages.run_train(run_cfg)
        train_s = time.perf_counter() - start
        timing.write_text(json.dumps({"train_s": train_s}))
    metrics = stages.run_evaluate(run_cfg)
    history = json.loads((run_dir / "history.json").read_text())
    return {"metrics": metrics, "train_s": train_s, "epochs": {g: len(h) for g, h in history.items()},
            "samples_per_s": float(np.median([h["samples_per_s"] for rows in history.values() for h in rows]))}


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(__import__("os").sched_getaffinity(0)),
        "torch": torch.__version__,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_report(folder: Path, name: str, result: dict, markdown: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / f"{name}.json", folder / f"{name}.md"
    js.write_text(json.dumps(result, indent=2))
    md.write_text(markdown)
    return js, md

"""Running a measured job (a worker in its own process, so its peak memory is its own; or
a train + evaluate through the pipeline stages) and writing the JSON + Markdown report."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from mtlrec import files
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.evaluate import evaluate_run
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.train import train_run


def run_worker(module: str, args: list[str]) -> dict:
    """Run `python -m module args…`; the worker prints one JSON line last on stdout."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {module} {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_and_evaluate(overrides: list[str], reuse: bool = False) -> dict:
    """Train from scratch and evaluate on test through the pipeline's own functions:
    {"metrics": evaluate's metrics, "samples_per_s": median over epochs, "epochs": per
    model, "train_s": training wall time}. With `reuse`, a finished run of the same training
    configuration (`config.training_settings`: more seeds or another report folder do not
    count) is evaluated as it is (a bench stopped half-way resumes)."""
    run_cfg = config_mod.load([*overrides, "train.force=true"])
    run = RunFolder(run_cfg.paths.run_dir)
    saved, wanted = run.config_text(), config_mod.to_yaml(run_cfg)
    same = config_mod.training_settings(saved) == config_mod.training_settings(wanted)
    train_s = run.train_seconds() if reuse and same else None
    if train_s is not None:
        print(f"bench: reusing the finished run {run.path}", file=sys.stderr)
    else:
        start = time.perf_counter()
        train_run(run_cfg)
        train_s = time.perf_counter() - start
        run.save_train_seconds(train_s)
    metrics = evaluate_run(run_cfg)
    history = run.history()
    return {"metrics": metrics, "train_s": train_s, "epochs": {g: len(h) for g, h in history.items()},
            "samples_per_s": float(np.median([h["samples_per_s"] for rows in history.values() for h in rows]))}


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_report(folder: Path, name: str, result: dict, markdown: str) -> tuple[Path, Path]:
    js, md = folder / f"{name}.json", folder / f"{name}.md"
    files.write_json(js, result)
    files.write_text(md, markdown)
    return js, md

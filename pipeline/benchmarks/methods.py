"""`mtlrec bench methods`: what each multi-task method costs per step, relative to EW.

Same model (census-income MMoE in the anchor's setting: 8 experts of [128], towers [64],
16-dim embeddings), same batches (batch 1024, fixed order), one run per method: median
wall time of `train_batch` over the measured steps after a warm-up, and peak resident
memory added during the steps, each divided by EW's. Every method runs in a fresh
process (peak RSS cannot be reset within one). Goals (issue #4): loss-level ≤ 1.1×,
gradient-level ≤ 1.5×, DTJS ≤ 1.8×; grouped updates reported per group count.
Also measured: per-task gradients by K backward passes vs one vectorised VJP, and on
the shared representation instead of the parameters. Writes reports/methods.json, .md.
"""

from __future__ import annotations

import itertools
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mtlrec.features.stream import make_loader
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks.census import SETTING
from mtlrec.pipeline.benchmarks.measure import machine, run_worker, write_report
from mtlrec.progress import peak_rss_mb
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.targets import ingest_logs, load_target
from mtlrec.training.loop import Trainer, seed_everything
from mtlrec.training.mtl.step import make_step

# (label, level, command-line parts); the label names what ran
CASES = [
    ("ew", "loss", ["method=ew"]),
    ("uw", "loss", ["method=uw"]), ("dwa", "loss", ["method=dwa"]), ("rlw", "loss", ["method=rlw"]),
    ("gls", "loss", ["method=gls"]), ("famo", "loss", ["method=famo"]),
    ("log transform", "loss", ["method=ew", "loss=log"]),
    ("pcgrad", "gradient", ["method=pcgrad"]), ("gradvac", "gradient", ["method=gradvac"]),
    ("cagrad", "gradient", ["method=cagrad"]), ("mgda", "gradient", ["method=mgda"]),
    ("mgda_ub", "gradient", ["method=mgda_ub"]), ("imtl_g", "gradient", ["method=imtl_g"]),
    ("nash_mtl", "gradient", ["method=nash_mtl"]), ("aligned_mtl", "gradient", ["method=aligned_mtl"]),
    ("graddrop", "gradient", ["method=graddrop"]), ("gradnorm", "gradient", ["method=gradnorm"]),
    ("dbmtl", "gradient", ["method=dbmtl"]), ("mocograd", "gradient", ["method=mocograd"]),
    ("log+mocograd", "gradient", ["method=mocograd", "loss=log"]),
    ("adatask", "optimizer", ["method=adatask"]),
    ("adatask+pcgrad", "optimizer", ["method=adatask", "aggregate=pcgrad"]),
    ("adatask+cagrad", "optimizer", ["method=adatask", "aggregate=cagrad"]),
    ("dtjs", "dtjs", ["method=dtjs"]),
    ("grouped, 1 group", "schedule", ["method=grouped", "method.grouped.initial=[[0,1]]",
                                      "method.grouped.warmup_steps=100000"]),
    ("grouped, 2 groups", "schedule", ["method=grouped", "method.grouped.warmup_steps=100000"]),
    ("pcgrad, one vectorised VJP", "vectorisation", ["method=pcgrad", "method.batched_grads=true"]),
    ("pcgrad, on the representation", "vectorisation", ["method=pcgrad", "grad_on=representation"]),
]
GOALS = {"loss": 1.1, "gradient": 1.5, "optimizer": 1.5, "dtjs": 1.8}
MODEL = ["model=mmoe"]  # conf/model/mmoe.yaml: the anchor's 8 experts of [128], towers [64]


def run(cfg: Config, overrides: list[str], warmup: int = 5, steps: int = 40,
        cases: list[tuple[str, str, list[str]]] = CASES) -> dict:
    base = [*SETTING, *MODEL, f"paths.work_dir={Path(cfg.paths.work_dir) / 'bench' / 'census'}",
            "method.diagnostics_every=0", *overrides]
    ingest_logs(config_mod.load(base))
    result = {"machine": machine(), "setting": [*base], "warmup": warmup, "steps": steps,
              "runs": measure_cases(base, cases, warmup, steps), "goals": GOALS}
    js, md = write_report(Path(cfg.paths.reports), "methods", result, _markdown(result))
    print(f"bench methods: wrote {js} and {md}")
    return result


def measure_cases(base: list[str], cases: list[tuple[str, str, list[str]]], warmup: int,
                  steps: int) -> list[dict]:
    """Each case's step time and added memory in a fresh process, with its ratios to the
    first case's (the EW baseline, measured in the same run)."""
    rows = []
    for label, level, parts in cases:
        print(f"bench: step cost of {label}", file=sys.stderr)
        measured = run_worker(__name__, [str(warmup), str(steps), *base, *parts])
        rows.append({"method": label, "level": level, **measured})
    ew = rows[0]
    for r in rows:
        r["time_ratio"] = r["median_step_ms"] / ew["median_step_ms"]
        r["memory_ratio"] = r["peak_added_mb"] / max(ew["peak_added_mb"], 1e-9)
    return rows


def _worker(warmup: int, steps: int, overrides: list[str]) -> dict:
    """In a fresh process: build the data set's model and step, time `train_batch` on the
    split's first batches (fixed order). Any data kind: `mtlrec bench qm9_steps` uses it too."""
    cfg = config_mod.load(overrides)
    torch.set_num_threads(cfg.trainer.threads or torch.get_num_threads())
    target = load_target(cfg)
    valid, n = target.split("valid"), len(target.tasks)
    seed_everything(cfg.seed)
    model = target.model(cfg.model, list(range(n)))
    step = make_step(cfg.method, model, cfg.trainer, n, cfg.seed)
    trainer = Trainer(model, step, cfg.trainer, target.tasks, list(range(n)), cfg.seed, kind=target.kind)
    loader = make_loader(target.split("train"), cfg.trainer.batch_size, shuffle=False)
    batches = list(itertools.islice(loader.iterate(0), warmup + steps))
    times = []
    rss_before = _rss_mb()
    for i, batch in enumerate(batches):
        forward, dev = trainer.batch_forward(batch), trainer.dev_forward(valid, i)
        start = time.perf_counter()
        step.train_batch(forward, 0, dev, epoch_batches=len(loader))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = peak_rss_mb()
    return {"median_step_ms": 1000 * float(np.median(times)), "p90_step_ms": 1000 * float(np.percentile(times, 90)),
            "peak_rss_mb": peak, "peak_added_mb": max(peak - rss_before, 0.0)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _markdown(r: dict) -> str:
    lines = ["# Step cost of each multi-task method (`mtlrec bench methods`)", "",
             f"Census-income MMoE (8 experts [128], towers [64]), batch 1024, median of {r['steps']} "
             f"steps after {r['warmup']} warm-up steps, each method in a fresh process; ratios to EW "
             "in the same run. Memory: peak RSS added during the steps.", "",
             "| method | level | step ms | × EW time | goal | peak added MB | × EW memory |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in r["runs"]:
        goal = r["goals"].get(row["level"])
        verdict = "" if goal is None else (f"≤ {goal} ✓" if row["time_ratio"] <= goal else f"≤ {goal} ✗")
        lines.append(f"| {row['method']} | {row['level']} | {row['median_step_ms']:.1f} | "
                     f"{row['time_ratio']:.2f} | {verdict} | {row['peak_added_mb']:.0f} | "
                     f"{row['memory_ratio']:.2f} |")
    lines += ["", f"Machine: {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, {r['machine']['time']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])))

"""`mtlrec bench census_methods`: every multi-task method on census-income MMoE, several
seeds — test AUC per task, Δm% vs STL, and training throughput relative to EW.

The census setting of `bench census` (anchor split, MMoE 8 experts of [128], towers [64],
batch 1024, Adam 1e-3) with a shorter schedule by default (`trainer.max_epochs=2`,
override it for the full one): 25 configurations × 3 seeds must fit a CPU session. STL
(one MLP per task) runs first for each seed; it is the Δm% baseline.
Writes reports/census_methods.json and .md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks import paired
from mtlrec.pipeline.benchmarks.census import SETTING, cell, census_row
from mtlrec.pipeline.benchmarks.measure import machine, write_report
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.targets import ingest_logs

# (label, command-line parts)
METHODS = [
    ("STL", ["model=hps", "method=stl"]), ("EW", ["method=ew"]),
    ("UW", ["method=uw"]), ("DWA", ["method=dwa"]), ("RLW", ["method=rlw"]), ("GLS", ["method=gls"]),
    ("FAMO", ["method=famo"]), ("GradNorm", ["method=gradnorm"]), ("PCGrad", ["method=pcgrad"]),
    ("GradVac", ["method=gradvac"]), ("GradDrop", ["method=graddrop"]), ("CAGrad", ["method=cagrad"]),
    ("MGDA", ["method=mgda"]), ("MGDA-UB", ["method=mgda_ub"]), ("IMTL-G", ["method=imtl_g"]),
    ("Nash-MTL", ["method=nash_mtl"]), ("Aligned-MTL", ["method=aligned_mtl"]),
    ("DB-MTL", ["method=dbmtl"]), ("MoCoGrad", ["method=mocograd"]),
    ("log + MoCoGrad", ["method=mocograd", "loss=log"]), ("AdaTask", ["method=adatask"]),
    ("AdaTask + PCGrad", ["method=adatask", "aggregate=pcgrad"]),
    ("AdaTask + CAGrad", ["method=adatask", "aggregate=cagrad"]),
    ("DTJS", ["method=dtjs"]), ("Grouped updates", ["method=grouped"]),
]
SCHEDULE = ["trainer.max_epochs=2"]


def run(cfg: Config, overrides: list[str]) -> dict:
    base = [*SETTING, *SCHEDULE,
            f"paths.work_dir={Path(cfg.paths.work_dir) / 'bench' / 'census'}", *overrides]
    ingest_logs(config_mod.load(base))
    rows = []
    for seed in range(cfg.bench.seeds):
        for label, parts in METHODS:
            print(f"bench census_methods: seed {seed}, {label}", file=sys.stderr)
            row = census_row([*base, *parts, f"seed={seed}"])
            rows.append({"method": label, "seed": seed, **row})
    result = {"machine": machine(), "setting": base, "seeds": cfg.bench.seeds, "runs": rows,
              "summary": _summary(rows)}
    js, md = write_report(Path(cfg.paths.reports), "census_methods", result, _markdown(result))
    print(f"bench census_methods: wrote {js} and {md}")
    return result


def _summary(rows: list[dict]) -> list[dict]:
    ew_speed = np.mean([r["samples_per_s"] for r in rows if r["method"] == "EW"])
    vs_ew = paired.to_baseline(rows, "delta_m_pct")
    out = []
    for label, _ in METHODS:
        sel = [r for r in rows if r["method"] == label]
        entry: dict = {"method": label}
        for key in ("income_auc", "marital_auc", "mean_auc", "delta_m_pct"):
            vals = [r[key] for r in sel if r[key] is not None]
            entry[key] = (float(np.mean(vals)), float(np.std(vals))) if vals else None
        entry["delta_m_vs_ew"] = vs_ew.get(label)
        entry["time_vs_ew"] = float(ew_speed / np.mean([r["samples_per_s"] for r in sel]))
        out.append(entry)
    return out


def _markdown(r: dict) -> str:
    lines = ["# Census-income MMoE: every multi-task method (`mtlrec bench census_methods`)", "",
             f"Test AUC, mean ± std over {r['seeds']} seeds; Δm% vs STL per seed, then averaged; "
             "its difference to EW's paired by seed (✓: beyond seed noise, paired t-test at 5%); "
             "step time relative to EW = EW's training samples/s ÷ the method's. "
             f"Setting: `{' '.join(r['setting'])}`.", "",
             "| method | income AUC | marital AUC | mean AUC | Δm% vs STL | Δm% − EW's, paired | time × EW |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in r["summary"]:
        lines.append(f"| {s['method']} | {cell(s['income_auc'])} | {cell(s['marital_auc'])} | "
                     f"{cell(s['mean_auc'])} | {cell(s['delta_m_pct'], '+.3f')} | "
                     f"{paired.cell(s.get('delta_m_vs_ew'), '+.3f')} | "
                     f"{s['time_vs_ew']:.2f} |")
    lines += ["", paired.verdict(r["summary"]),
              "", f"Machine: {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, "
              f"{r['machine']['time']}.", ""]
    return "\n".join(lines)

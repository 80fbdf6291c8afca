"""`mtlrec bench conflict`: do the methods help when the tasks really conflict?

Synthetic AliExpress-schema logs (`data=synth_conflict`: tasks click and buy, the purchase
label drawn whether or not the row was clicked) at `synth.conflict_rho` ∈ {0, −0.5, −0.9},
the correlation of the buy effects with the click effects. On the logs' own
click/conversion labels the knob barely moves the tasks apart: conversion = click AND buy
keeps CTCVR's effects aligned with CTR's even at ρ = −0.9 (an EW-only table measures it),
and an EW-only control at ρ = +0.9 shows how far the sign of ρ reaches the shared
gradients (see also `synth.conflict_on=ctcvr`, README).
MMoE; STL, EW, the five methods, PCGrad and CAGrad at `bench.seeds` seeds; the 4-task
variant (`data=synth_conflict4`: {click, like} vs {buy, share}) at one seed. Per setting:
test AUC per task, Δm% vs STL, training samples/s, and the mean gradient cosine between the
tasks from EW's conflict diagnostics. Runs that finished are reused. Writes
reports/conflict.json and .md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks import paired
from mtlrec.pipeline.benchmarks.measure import machine, write_report
from mtlrec.pipeline.benchmarks.paper_tables import PaperTable, run_table
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.diagnostics import read
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.stages import run_synth
from mtlrec.pipeline.targets import ingest_logs

RHOS = (0.0, -0.5, -0.9)
SCHEDULE = ["synth.days=4", "synth.rows_per_day=50000", "model=mmoe",
            "trainer.batch_size=1024", "trainer.lr=0.001", "trainer.max_epochs=8", "trainer.patience=2",
            "method.diagnostics_every=20",
            "evaluate.stl_run=${paths.work_dir}/runs/${data.name}/${model.arch}-stl-seed${seed}"]
METHODS = [("STL", ["method=stl"]), ("EW", ["method=ew"]), ("AdaTask", ["method=adatask"]),
           ("DB-MTL", ["method=dbmtl"]), ("MoCoGrad", ["method=mocograd"]), ("DTJS", ["method=dtjs"]),
           ("Grouped updates", ["method=grouped"]), ("PCGrad", ["method=pcgrad"]),
           ("CAGrad", ["method=cagrad"])]
# (title, data, ρ, methods, seeds: None = bench.seeds)
SETTINGS = [(f"2 tasks, ρ = {rho:g}", "synth_conflict", rho, METHODS, None) for rho in RHOS] + [
    ("4 tasks, ρ = −0.9", "synth_conflict4", -0.9, METHODS, 1),
    ("the logs' click / CTCVR (conversion = click AND buy), ρ = −0.9", "synth", -0.9,
     [("EW", ["method=ew"])], 1),
    ("control: 2 tasks, ρ = +0.9 (does the sign of ρ reach the shared gradients?)", "synth_conflict", 0.9,
     [("EW", ["method=ew"])], 1)]


def run(cfg: Config, overrides: list[str]) -> dict:
    root = Path(cfg.paths.work_dir) / "bench" / "conflict"
    # run_table works in <work_dir>/bench/<name> and reports there too: one folder per setting
    inner = cfg.model_copy(update={"paths": cfg.paths.model_copy(
        update={"work_dir": str(root), "reports": str(root / "reports")})})
    # where each setting works is set here (its own folder); the rest of the overrides apply
    overrides = [o for o in overrides if not o.startswith(("paths.work_dir=", "paths.reports="))]
    tables = []
    for title, data, rho, methods, seeds in SETTINGS:
        name = f"{data}_rho{rho:g}"
        base = [f"data={data}", f"synth.conflict_rho={rho}", *SCHEDULE,
                f"paths.work_dir={root / 'bench' / name}", *overrides]
        setting_cfg = config_mod.load(base)
        print(f"bench conflict: {title}", file=sys.stderr)
        run_synth(setting_cfg)
        ingest_logs(setting_cfg)
        table = PaperTable(name=name, title=title, setting=base, methods=methods,
                           columns=[label.name for label in setting_cfg.data.labels], fmt=".4f",
                           scale=1.0, mean=("mean_auc", "mean AUC", 1.0), paper="", seeds=seeds)
        result = run_table(table, inner, overrides)
        result["title"], result["cosine"] = title, _ew_cosine(base, result["seeds"])
        tables.append(result)
    result = {"machine": machine(), "schedule": SCHEDULE, "tables": tables}
    js, md = write_report(Path(cfg.paths.reports), "conflict", result, _markdown(result))
    print(f"bench conflict: wrote {js} and {md}")
    return result


def _ew_cosine(base: list[str], seeds: int) -> float:
    """Mean over EW's diagnostics samples and task pairs of the gradient cosine (all seeds)."""
    values = []
    for seed in range(seeds):
        run = RunFolder(config_mod.load([*base, "method=ew", f"seed={seed}"]).paths.run_dir)
        _, records = read(run.diagnostics("all"))
        values += [r["cosine"][i][j] for r in records for i in range(len(r["cosine"]))
                   for j in range(i + 1, len(r["cosine"]))]
    return float(np.mean(values)) if values else float("nan")  # a run shorter than one sample


def _markdown(r: dict) -> str:
    lines = ["# Conflicting tasks on synthetic recommender logs (`mtlrec bench conflict`)", "",
             f"MMoE, schedule `{' '.join(r['schedule'])}`; test AUC per task (mean ± std over the "
             "seeds), Δm% vs STL per seed then averaged, its difference to EW's paired by seed (✓: "
             "beyond seed noise, paired t-test at 5%), training samples/s; the gradient cosine is "
             "the mean over EW's diagnostics samples (every 20 steps) and task pairs.", ""]
    for t in r["tables"]:
        lines += [f"## {t['title']} (seeds: {t['seeds']}; EW gradient cosine {t['cosine']:+.3f})", "",
                  "| method | " + " | ".join(t["summary"][0]["tasks"])
                  + " | mean AUC | Δm% vs STL | Δm% − EW's, paired | samples/s |",
                  "| --- |" + " ---: |" * (len(t["summary"][0]["tasks"]) + 4)]
        for s in t["summary"]:
            cells = [f"{v[0]:.4f} ± {v[1]:.4f}" for v in s["tasks"].values()]
            mean = s["means"].get("mean_auc")
            delta = s["delta_m_pct"]
            lines.append(f"| {s['method']} | " + " | ".join(cells) +
                         f" | {mean[0]:.4f} | " + ("–" if delta is None else f"{delta[0]:+.2f} ± {delta[1]:.2f}") +
                         f" | {paired.cell(s.get('delta_m_vs_ew'))} | {s['samples_per_s']:,.0f} |")
        lines.append("")
    lines += [f"Machine: {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, {r['machine']['time']}.", ""]
    return "\n".join(lines)

"""`mtlrec bench conflict`: do the methods help when the tasks really conflict?

Synthetic AliExpress-schema logs (`data=synth_conflict`: tasks click and buy, the purchase
label drawn whether or not the row was clicked). The features' effects on the two agree;
each row's unobserved intent pulls them apart with correlation `synth.conflict_rho` ∈
{0, −0.5, −0.9} (`synth.conflict_on=intent`, features/synth.py). Correlating the
features' effects instead does not make the gradients conflict (each task's tower flips a
shared feature's sign for free): two EW-only settings measure that, at ρ = −0.9 and +0.9.
MMoE; STL, EW, the five methods, PCGrad and CAGrad at `bench.seeds` seeds; the 4-task
variant (`data=synth_conflict4`: {click, like} vs {buy, share}) at one seed. Per setting:
test AUC per task, Δm% vs STL, training samples/s, and the mean gradient cosine between the
tasks from EW's conflict diagnostics. Runs that finished are reused. Writes
reports/conflict.json and .md.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks import paired
from mtlrec.pipeline.benchmarks.measure import machine, write_report
from mtlrec.pipeline.benchmarks.paper_tables import PaperTable, run_table, table_overrides
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.diagnostics import read
from mtlrec.pipeline.run_folder import MULTI_TASK, RunFolder
from mtlrec.pipeline.stages import run_synth
from mtlrec.pipeline.targets import ingest_logs

RHOS = (0.0, -0.5, -0.9)
SCHEDULE = ["synth.days=4", "synth.rows_per_day=50000", "model=mmoe",
            "trainer.batch_size=1024", "trainer.lr=0.001", "trainer.max_epochs=6", "trainer.patience=2",
            "method.diagnostics_every=10",
            "evaluate.stl_run=${paths.work_dir}/runs/${data.name}/${model.arch}-stl-seed${seed}"]
METHODS = [("STL", ["method=stl"]), ("EW", ["method=ew"]), ("AdaTask", ["method=adatask"]),
           ("DB-MTL", ["method=dbmtl"]), ("MoCoGrad", ["method=mocograd"]), ("DTJS", ["method=dtjs"]),
           ("Grouped updates", ["method=grouped"]), ("PCGrad", ["method=pcgrad"]),
           ("CAGrad", ["method=cagrad"])]
EW_ONLY = [("EW", ["method=ew"])]
# (title, folder, overrides of the setting, methods, seeds: None = bench.seeds)
SETTINGS = [(f"2 tasks, intents ρ = {rho:g}", f"intent_rho{rho:g}",
             ["data=synth_conflict", f"synth.conflict_rho={rho}"], METHODS, None) for rho in RHOS] + [
    ("4 tasks, intents ρ = −0.9", "intent4_rho-0.9", ["data=synth_conflict4", "synth.conflict_rho=-0.9"],
     METHODS, 1),
    *[(f"control: the features' effects correlated instead, ρ = {rho:+g} (the towers absorb the sign)",
       f"effects_rho{rho:g}", ["data=synth_conflict", "synth.conflict_on=cvr", f"synth.conflict_rho={rho}"],
       EW_ONLY, 1) for rho in (-0.9, 0.9)]]


def run(cfg: Config, overrides: list[str]) -> dict:
    root = Path(cfg.paths.work_dir) / "bench" / "conflict"
    # run_table works in <work_dir>/bench/<name> and reports there too: one folder per setting
    inner = cfg.model_copy(update={"paths": cfg.paths.model_copy(
        update={"work_dir": str(root), "reports": str(root / "reports")})})
    # each setting works in its own folder (table_overrides); the rest of the overrides apply
    overrides = [o for o in overrides if not o.startswith(("paths.work_dir=", "paths.reports="))]
    tables = []
    for title, name, setting, methods, seeds in SETTINGS:
        table = PaperTable(name=name, title=title, setting=[*setting, *SCHEDULE], methods=methods,
                           columns=[], fmt=".4f", scale=1.0, mean=("mean_auc", "mean AUC", 1.0), paper="",
                           seeds=seeds)
        base = table_overrides(table, inner, overrides)
        setting_cfg = config_mod.load(base)
        table = replace(table, columns=[label.name for label in setting_cfg.data.labels])
        print(f"bench conflict: {title}", file=sys.stderr)
        run_synth(setting_cfg)
        ingest_logs(setting_cfg)
        result = run_table(table, inner, overrides)
        result["title"], result["cosine"] = title, _ew_cosine(base, result["seeds"])
        tables.append(result)
        # after every setting, so a stopped bench leaves the settings it finished
        report = {"machine": machine(), "schedule": SCHEDULE, "tables": tables,
                  "settings_planned": len(SETTINGS)}
        js, md = write_report(Path(cfg.paths.reports), "conflict", report, _markdown(report))
    print(f"bench conflict: wrote {js} and {md}")
    return report


def _ew_cosine(base: list[str], seeds: int) -> dict[str, float]:
    """EW's gradient cosine between the tasks, over its diagnostics samples and task pairs
    (all seeds): the mean and the share below 0 over the whole run, and over the epochs up
    to the best one (the weights evaluated; the epochs after it, overfitting until early
    stopping, are discarded and pull the cosine towards 0)."""
    every, best = [], []
    for seed in range(seeds):
        run = RunFolder(config_mod.load([*base, "method=ew", f"seed={seed}"]).paths.run_dir)
        _, records = read(run.diagnostics("all"))
        if not records:
            continue
        epochs = run.history()[MULTI_TASK]
        kept = run.best_row()["epoch"]
        steps_per_epoch = records[-1]["step"] / len(epochs)  # within one sampling interval
        for r in records:
            pairs = [r["cosine"][i][j] for i in range(len(r["cosine"])) for j in range(i + 1, len(r["cosine"]))]
            every += pairs
            if r["step"] <= (kept + 1) * steps_per_epoch:
                best += pairs

    def summary(values: list[float]) -> dict[str, float]:
        if not values:  # a run shorter than one sample
            return {"mean": float("nan"), "negative": float("nan")}
        return {"mean": float(np.mean(values)), "negative": float(np.mean(np.asarray(values) < 0))}

    return {"whole run": summary(every), "to the best epoch": summary(best)}


def _markdown(r: dict) -> str:
    lines = ["# Conflicting tasks on synthetic recommender logs (`mtlrec bench conflict`)", "",
             f"MMoE, schedule `{' '.join(r['schedule'])}`; test AUC per task (mean ± std over the "
             "seeds), Δm% vs STL per seed then averaged, its difference to EW's paired by seed (✓: "
             "beyond seed noise, paired t-test at 5%), training samples/s; the gradient cosine is "
             "the mean over EW's diagnostics samples (every 10 steps) and task pairs, over the whole "
             "run and over the epochs up to the best one (the weights that are evaluated).", ""]
    if len(r["tables"]) < r.get("settings_planned", len(r["tables"])):
        lines += [f"**Partial: {len(r['tables'])} of {r['settings_planned']} settings finished** "
                  "(`mtlrec bench conflict` again reuses their runs and goes on).", ""]
    for t in r["tables"]:
        cos = t["cosine"]
        lines += [f"## {t['title']}", "",
                  f"Seeds: {t['seeds']}. EW's gradient cosine between the tasks: "
                  + "; ".join(f"{span} {c['mean']:+.3f} ({c['negative']:.0%} of samples < 0)"
                              for span, c in cos.items()) + ".", "",
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
        lines += ["", paired.verdict(t["summary"]), ""]
    lines += [f"Machine: {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, {r['machine']['time']}.", ""]
    return "\n".join(lines)

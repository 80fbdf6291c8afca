"""`mtlrec bench census`: STL, HPS, MMoE and PLE with EW on census-income, several seeds.

The setting of the torch-rechub anchor (issue #3): first 90% of the train file to train,
last 10% to validate (`data.split.method=tail`), the official test file; 16-dim
embeddings; MMoE 8 experts of [128]; towers [64]; Adam 1e-3; batch 1024; early stopping
on validation mean AUC. Writes reports/census.json and reports/census.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks.measure import machine, train_and_evaluate, write_report
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.targets import ingest_logs

ANCHOR = {"income": 0.9517, "marital": 0.9947, "mean": 0.9732, "stl_income": 0.9510,
          "stl_marital": 0.9947, "samples_per_s": 10_400}
SETTING = ["data=census", "data.split.method=tail", "trainer.batch_size=1024", "trainer.lr=0.001",
           "trainer.max_epochs=20", "trainer.patience=2"]
MODELS = [("hps", "stl"), ("hps", "ew"), ("mmoe", "ew"), ("ple", "ew")]


def run(cfg: Config, overrides: list[str]) -> dict:
    seeds = list(range(cfg.bench.seeds))
    # its own work folder: features (tail split), runs and MLflow database apart from others
    base = [*SETTING, f"paths.work_dir={Path(cfg.paths.work_dir) / 'bench' / 'census'}", *overrides]
    ingest_logs(config_mod.load(base))
    rows = []
    for seed in seeds:
        for arch, method in MODELS:  # STL first: the others' Δm% needs it
            print(f"bench census: seed {seed}, {arch}/{method}", file=sys.stderr)
            row = census_row([*base, f"model={arch}", f"method={method}", f"seed={seed}"])
            rows.append({"seed": seed, "model": arch, "method": method, **row})
    result = {"machine": machine(), "setting": SETTING, "seeds": seeds, "runs": rows,
              "summary": _summary(rows), "anchor": ANCHOR}
    js, md = write_report(Path(cfg.paths.reports), "census", result, _markdown(result))
    print(f"bench census: wrote {js} and {md}")
    return result


def census_row(overrides: list[str]) -> dict:
    """One run of a census table, trained from scratch and evaluated on test: AUC per task,
    mean, Δm%, samples/s."""
    r = train_and_evaluate(overrides)
    metrics = r["metrics"]
    return {"samples_per_s": r["samples_per_s"], "epochs": r["epochs"],
            **{f"{t}_auc": m["auc"] for t, m in metrics["tasks"].items()},
            "mean_auc": metrics["mean_auc"], "delta_m_pct": metrics.get("delta_m_pct")}


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    for arch, method in MODELS:
        sel = [r for r in rows if r["model"] == arch and r["method"] == method]
        entry = {"model": arch, "method": method}
        for key in ("income_auc", "marital_auc", "mean_auc", "delta_m_pct", "samples_per_s"):
            vals = [r[key] for r in sel if r[key] is not None]
            entry[key] = (float(np.mean(vals)), float(np.std(vals))) if vals else None
        out.append(entry)
    return out


def cell(value: tuple[float, float] | None, fmt: str = ".4f") -> str:
    """mean ± std, or a dash when there is no value (Δm% of the STL row itself)."""
    if value is None:
        return "–"
    return f"{value[0]:{fmt}} ± {value[1]:{fmt.lstrip('+')}}"


def _markdown(r: dict) -> str:
    lines = ["# Census-income: STL, HPS, MMoE, PLE with EW (`mtlrec bench census`)", "",
             f"Test AUC, mean ± std over seeds {r['seeds']}; Δm% vs STL (DTJS Eq. 3-12) per seed, "
             f"then averaged. Setting: `{' '.join(r['setting'])}`.", "",
             "| model | income AUC | marital AUC | mean AUC | Δm% vs STL | train samples/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in r["summary"]:
        name = "STL (MLP per task)" if s["method"] == "stl" else f"{s['model'].upper()} (EW)"
        lines.append(f"| {name} | {cell(s['income_auc'])} | {cell(s['marital_auc'])} | "
                     f"{cell(s['mean_auc'])} | {cell(s['delta_m_pct'], '+.3f')} | "
                     f"{s['samples_per_s'][0]:,.0f} |")
    a = r["anchor"]
    lines += ["", f"Anchor (torch-rechub 0.9.0, same split, this machine): MMoE income {a['income']}, "
              f"marital {a['marital']}, mean {a['mean']}; single-task {a['stl_income']} / "
              f"{a['stl_marital']}; MMoE trained at {a['samples_per_s']:,} samples/s.",
              f"Machine: {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, {r['machine']['time']}.", ""]
    return "\n".join(lines)

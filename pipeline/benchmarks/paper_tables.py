"""The papers' benchmark tables, reproduced through the CLI's own train + evaluate stages:
`mtlrec bench multimnist` and `mtlrec bench qm9` (their settings live in `multimnist.py`
and `qm9.py`). Per seed, STL runs first (the Δm% baseline), then every method; the
report gives per-task test metrics (mean ± std over seeds), Δm% vs STL, training
throughput and wall time, next to the papers' numbers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtlrec.pipeline.benchmarks import paired
from mtlrec.pipeline.benchmarks.census import cell
from mtlrec.pipeline.benchmarks.measure import machine, train_and_evaluate, write_report
from mtlrec.pipeline.config import Config


@dataclass(frozen=True)
class PaperTable:
    name: str  # the bench name, report file stem and work folder
    title: str
    setting: list[str]  # overrides of the (reduced) schedule
    methods: list[tuple[str, list[str]]]  # (label, overrides); STL first
    columns: list[str]  # tasks shown in the Markdown table
    fmt: str  # of the per-task cells
    scale: float  # per-task metric × scale in the table (accuracy → %)
    mean: tuple[str, str, float]  # the mean-over-tasks column: (metrics key, label, scale)
    paper: str  # Markdown: the papers' rows and what differs
    seeds: int | None = None  # default number of seeds (bench.seeds on the command line wins)
    one_seed: tuple[str, ...] = ()  # methods run at the first seed only (costly baselines)


def table_overrides(table: PaperTable, cfg: Config, overrides: list[str]) -> list[str]:
    """The overrides every run of the table shares (its setting, its work folder); a run is
    these plus the method's and its seed."""
    return [*table.setting, f"paths.work_dir={Path(cfg.paths.work_dir) / 'bench' / table.name}", *overrides]


def run_table(table: PaperTable, cfg: Config, overrides: list[str]) -> dict:
    base = table_overrides(table, cfg, overrides)
    seeds = cfg.bench.seeds
    if table.seeds is not None and not any(o.startswith("bench.seeds=") for o in overrides):
        seeds = table.seeds
    planned = [(seed, label, parts) for seed in range(seeds) for label, parts in table.methods
               if seed == 0 or label not in table.one_seed]
    rows: list[dict] = []
    for seed, label, parts in planned:
        print(f"bench {table.name}: seed {seed}, {label}", file=sys.stderr)
        rows.append({"method": label, "seed": seed, **_measure([*base, *parts, f"seed={seed}"])})
        # after every run: a bench stopped half-way leaves the table of the runs it finished
        result = {"machine": machine(), "setting": base, "seeds": seeds, "runs": rows,
                  "planned_runs": len(planned), "summary": _summary(table, rows)}
        js, md = write_report(Path(cfg.paths.reports), table.name, result, markdown(table, result))
    print(f"bench {table.name}: wrote {js} and {md}")
    return result


def _measure(overrides: list[str]) -> dict:
    """One run of the table (reusing it when it already finished), in the report's terms."""
    r = train_and_evaluate(overrides, reuse=True)
    metrics = r.pop("metrics")
    metric = metrics["metric"]
    headline = metrics.get("headline") or {t: metric for t in metrics["tasks"]}  # runs before task kinds
    return {"metric": metric, "tasks": {t: m[headline[t]] for t, m in metrics["tasks"].items()},
            "means": {k: v for k, v in metrics.items() if k.startswith("mean_")},
            "delta_m_pct": metrics.get("delta_m_pct"), **r}


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    return (float(np.mean(values)), float(np.std(values))) if values else None


def _summary(table: PaperTable, rows: list[dict]) -> list[dict]:
    vs_ew = paired.to_baseline(rows, "delta_m_pct")
    out = []
    for label, _ in table.methods:
        sel = [r for r in rows if r["method"] == label]
        if not sel:  # not run yet
            continue
        out.append({
            "method": label,
            "tasks": {t: _mean_std([r["tasks"][t] for r in sel]) for t in sel[0]["tasks"]},
            "means": {k: _mean_std([r["means"][k] for r in sel]) for k in sel[0]["means"]},
            "delta_m_pct": _mean_std([r["delta_m_pct"] for r in sel if r["delta_m_pct"] is not None]),
            "delta_m_vs_ew": vs_ew.get(label),
            "samples_per_s": float(np.mean([r["samples_per_s"] for r in sel])),
            "train_s": float(np.mean([r["train_s"] for r in sel])),
        })
    return out


def _scaled(value: tuple[float, float] | None, scale: float) -> tuple[float, float] | None:
    return None if value is None else (value[0] * scale, value[1] * scale)


def markdown(table: PaperTable, r: dict) -> str:
    key, label, scale = table.mean
    lines = [f"# {table.title} (`mtlrec bench {table.name}`)", "",
             f"Test metrics, mean ± std over {r['seeds']} seed(s); Δm% vs STL (DTJS Eq. 3-12) per "
             "seed, then averaged; its difference to EW's paired by seed (✓: beyond seed noise, paired "
             "t-test at 5%); training samples/s (median over epochs) and wall time per run. "
             f"Setting: `{' '.join(r['setting'])}`.", ""]
    if len(r["runs"]) < r.get("planned_runs", len(r["runs"])):
        lines += [f"**Partial: {len(r['runs'])} of {r['planned_runs']} runs finished** (`mtlrec bench "
                  f"{table.name}` again reuses them and goes on).", ""]
    lines += ["| method | " + " | ".join(table.columns)
              + f" | {label} | Δm% vs STL | Δm% − EW's, paired | samples/s | train s |",
              "| --- | " + " | ".join("---:" for _ in table.columns) + " | ---: | ---: | ---: | ---: | ---: |"]
    for s in r["summary"]:
        cells = [cell(_scaled(s["tasks"][t], table.scale), table.fmt) for t in table.columns]
        cells.append(cell(_scaled(s["means"][key], scale), table.fmt))
        lines.append(f"| {s['method']} | " + " | ".join(cells) + f" | {cell(s['delta_m_pct'], '+.2f')} | "
                     f"{paired.cell(s.get('delta_m_vs_ew'))} | {s['samples_per_s']:,.0f} | {s['train_s']:,.0f} |")
    lines += ["", paired.verdict(r["summary"]), "", table.paper, "",
              f"Machine: {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, {r['machine']['time']}.", ""]
    return "\n".join(lines)

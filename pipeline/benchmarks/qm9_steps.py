"""`mtlrec bench qm9_steps`: the step cost of the methods at K = 11 (QM9's MPNN), against
EW in the same run and against the arithmetic estimate of per-task gradients.

With a forward pass costing 1 and a backward pass 2, EW's step costs 3; K per-task
gradients on the shared parameters cost one forward and K backward passes, 1 + 2K: a
method that needs them costs about (1 + 2K)/3 ≈ 7.7× EW at K = 11 however its K backward
passes are batched (a vectorised VJP shares the graph, not the arithmetic). It is an
estimate, not a floor: the per-task passes stop at the shared parameters, and EW's step
also pays the optimizer and the batch's overheads.
Taken on the shared representation instead (grad_on=representation: the K gradients go
through the 11 linear heads only, then one encoder backward), a method costs about one EW
step: goal ≤ 3× EW (issue 14). Methods that average gradients across batches (DB-MTL,
MoCoGrad) or keep per-parameter moments (AdaTask) or a hypergradient (DTJS) need the
shared parameters; they are reported against the estimate. Same batches for every case
(the training split's first batches, in file order), each case in a fresh process.
Writes reports/qm9_steps.json and .md.
"""

from __future__ import annotations

from pathlib import Path

from mtlrec.pipeline.benchmarks.measure import machine, write_report
from mtlrec.pipeline.benchmarks.methods import measure_cases
from mtlrec.pipeline.benchmarks.qm9 import SETTING
from mtlrec.pipeline.config import Config

K = 11
BOUND = (1 + 2 * K) / 3
REPRESENTATION_GOAL = 3.0
SHARED, REP = "shared parameters", "representation"
CASES = [
    ("ew", "loss", ["method=ew"]),
    ("grouped updates", "schedule", ["method=grouped"]),
    ("adatask", SHARED, ["method=adatask"]),
    ("dbmtl", SHARED, ["method=dbmtl"]),
    ("dbmtl, one vectorised VJP", SHARED, ["method=dbmtl", "method.batched_grads=true"]),
    ("mocograd", SHARED, ["method=mocograd"]),
    ("dtjs", SHARED, ["method=dtjs"]),
    ("pcgrad", SHARED, ["method=pcgrad"]),
    ("pcgrad", REP, ["method=pcgrad", "grad_on=representation"]),
    ("cagrad", REP, ["method=cagrad", "grad_on=representation"]),
    ("imtl_g", REP, ["method=imtl_g", "grad_on=representation"]),
    ("mgda", REP, ["method=mgda", "grad_on=representation"]),
    ("graddrop", REP, ["method=graddrop", "grad_on=representation"]),
]


def run(cfg: Config, overrides: list[str], warmup: int = 3, steps: int = 20,
        cases: list[tuple[str, str, list[str]]] = CASES) -> dict:
    base = [*SETTING, "method.diagnostics_every=0", *overrides]
    result = {"machine": machine(), "setting": base, "warmup": warmup, "steps": steps, "k": K,
              "bound": BOUND, "representation_goal": REPRESENTATION_GOAL,
              "runs": measure_cases(base, cases, warmup, steps)}
    js, md = write_report(Path(cfg.paths.reports), "qm9_steps", result, _markdown(result))
    print(f"bench qm9_steps: wrote {js} and {md}")
    return result


def _verdict(row: dict, bound: float, goal: float) -> str:
    if row["level"] == REP:
        return f"goal ≤ {goal:g}: {'✓' if row['time_ratio'] <= goal else '✗'}"
    if row["level"] == SHARED:
        return f"{row['time_ratio'] / bound:.2f} of the estimate {bound:.2f}"
    return ""


def _markdown(r: dict) -> str:
    lines = ["# Step cost at K = 11: QM9's MPNN (`mtlrec bench qm9_steps`)", "",
             f"Setting: `{' '.join(r['setting'])}`. Median of {r['steps']} steps after {r['warmup']} "
             "warm-up steps, each case in a fresh process; ratios to EW measured in the same run. "
             f"Per-task gradients on the shared parameters cost about (1 + 2K)/3 = {r['bound']:.2f}× "
             "EW in arithmetic (forward 1, backward 2: an estimate, not a floor); on the representation "
             f"the goal is ≤ {r['representation_goal']:g}× EW. Grouped updates: its first 100 steps "
             "update every task alone (11 updates a step).", "",
             "| method | per-task gradients on | step ms | × EW time | against | peak added MB |",
             "| --- | --- | ---: | ---: | --- | ---: |"]
    for row in r["runs"]:
        on = row["level"] if row["level"] in (SHARED, REP) else f"– ({row['level']}-level)"
        lines.append(f"| {row['method']} | {on} | {row['median_step_ms']:.1f} | {row['time_ratio']:.2f} | "
                     f"{_verdict(row, r['bound'], r['representation_goal'])} | {row['peak_added_mb']:.0f} |")
    lines += ["", f"Machine: {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, {r['machine']['time']}.", ""]
    return "\n".join(lines)

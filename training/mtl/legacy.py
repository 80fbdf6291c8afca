"""Step states of format 1 (one `MethodState` struct for every method, learnt task
weights as [K] tensors with a torch Adam each), as checkpoints written before the parts
kept their own state, converted to the per-part, per-task-id states of today.

Every field maps onto one entry per task: row k of a [K, …] tensor becomes task k's.
A shared count becomes each task's (every task was updated at every step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mtlrec.training.config import MethodConfig


def convert(old: dict[str, Any], method: "MethodConfig", k: int) -> dict[str, Any]:
    if "state" not in old or "weights" not in old:
        raise ValueError("unknown step state in the checkpoint: neither this version's format "
                         "nor format 1; train again with train.force=true")
    s, weights = old["state"], old["weights"]
    tasks = range(k)
    transform = {t: {"tau": s["tau"][t]} for t in tasks} if s.get("tau") is not None else {}
    weighting: dict[Any, Any] = {}
    if method.weighting in ("uw", "famo"):
        weighting = _learned(*weights[method.weighting], tasks)
    elif method.weighting == "dwa":
        weighting = _dwa(s["epoch_losses"], tasks)
    aggregator: dict[Any, Any] = {}
    match method.aggregate:
        case "dbmtl" if s["dbmtl"]["ema"] is not None:
            aggregator = {t: {"ema": s["dbmtl"]["ema"][t], "updates": s["dbmtl"]["step"]} for t in tasks}
        case "mocograd" if s["momentum"] is not None:
            aggregator = {t: {"momentum": s["momentum"][t]} for t in tasks}
        case "gradvac":
            targets = s["cosine_targets"] if s["cosine_targets"] is not None else torch.zeros(k, k)
            aggregator = {t: {"targets": targets[t].cpu().float()} for t in tasks}
        case "gradnorm":
            aggregator = _learned(*weights["gradnorm"], tasks)
            if s["initial_losses"] is not None:
                aggregator = {t: {**e, "initial": s["initial_losses"][t].cpu()} for t, e in aggregator.items()}
        case "dtjs":
            aggregator = _learned(*weights["dtjs"], tasks)
    schedule = ({"affinity": s["affinity"] if s["affinity"] is not None else torch.zeros(k, k),
                 "groups": s["groups"]} if method.schedule == "grouped" else {})
    return {"generator": old["generator"], "count": s["step"],
            "parts": {"transform": transform, "weighting": weighting, "aggregator": aggregator,
                      "schedule": schedule}}


def _learned(value: torch.Tensor, optimizer: dict[str, Any], tasks: range) -> dict[int, Any]:
    """A [K] (or [2, K] for DTJS's α) tensor and its torch Adam state → per-task entries."""
    columns = value.t() if value.dim() == 2 else value
    adam = optimizer["state"].get(0, {})
    step = int(adam["step"]) if adam else 0

    def moment(name: str, t: int) -> torch.Tensor:
        if not adam:
            return torch.zeros_like(columns[t])
        m = adam[name]
        return (m.t() if m.dim() == 2 else m)[t].clone()

    return {t: {"value": columns[t].clone(), "exp_avg": moment("exp_avg", t),
                "exp_avg_sq": moment("exp_avg_sq", t), "step": step} for t in tasks}


def _dwa(history: dict[str, Any], tasks: range) -> dict[int, Any]:
    sums = history["sums"]
    return {t: {"epoch": history["epoch"], "sum": sums[t].cpu() if sums is not None else torch.zeros(()),
                "batches": history["batches"], "finished": [f[t].cpu() for f in history["finished"]]}
            for t in tasks}

"""Task weights a method learns (UW's log-variances, FAMO's logits, GradNorm's weights,
DTJS's α), one entry per task, each with its own Adam moments and step count.

Kept per task (not as one [K] parameter with one torch optimizer) so that a group of
tasks updates only its own weights and moments, and the state sits in the part's
`TaskState` like any other. The update is torch.optim.Adam's (L2 weight decay added to
the gradient, bias corrections by the entry's own step count); tests replay it against
torch.optim.Adam.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.training.mtl.parts import TaskState


def init(values: torch.Tensor, tasks: Sequence[int]) -> TaskState:
    """values [K, …] → {task: {"value", "exp_avg", "exp_avg_sq", "step"}}."""
    return {t: {"value": v.clone(), "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v),
                "step": 0} for t, v in zip(tasks, values, strict=True)}


def values(state: TaskState, task_ids: Sequence[int]) -> torch.Tensor:
    return torch.stack([state[t]["value"] for t in task_ids])


def adam(state: TaskState, task_ids: Sequence[int], grad: torch.Tensor, lr: float,
         weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
         ) -> TaskState:
    """One Adam step of the tasks' values along grad [k, …]; returns the new state."""
    out = dict(state)
    beta1, beta2 = betas
    for t, g in zip(task_ids, grad.detach().to("cpu", torch.float32), strict=True):
        entry = state[t]
        step = entry["step"] + 1
        g = g + weight_decay * entry["value"] if weight_decay else g
        m = beta1 * entry["exp_avg"] + (1 - beta1) * g
        v = beta2 * entry["exp_avg_sq"] + (1 - beta2) * g * g
        denom = (v.sqrt() / (1 - beta2**step) ** 0.5) + eps
        value = entry["value"] - lr / (1 - beta1**step) * m / denom
        out[t] = {"value": value, "exp_avg": m, "exp_avg_sq": v, "step": step}
    return out

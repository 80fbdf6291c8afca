"""GradVac: "Gradient Vaccine" (Wang et al., ICLR 2021), the GradVac update of Sec. 3.

Each task pair keeps an EMA target φ̂_ij of its gradient cosine (φ̂ ← (1−β)φ̂ + βφ,
β = 0.01). For task i and the others j in random order, when the current cosine
φ = cos(g_i, g_j) falls below the target, g_i is moved towards g_j just enough to
reach it: g_i ← g_i + ‖g_i‖ (φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_j‖√(1−φ̂²)) · g_j.
PCGrad is the special case of a constant target 0 applied only when φ < 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.training.mtl.parts import Aggregated, Aggregator, Context, TaskState


def gradvac(grads: torch.Tensor, targets: torch.Tensor, beta: float = 0.01,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """grads [K, D], targets [K, K] → (vaccinated gradients [K, D], updated targets)."""
    k = grads.shape[0]
    out, targets = grads.clone(), targets.clone()
    norms = grads.norm(dim=1).clamp_min(1e-12)
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i:
                continue
            phi = (out[i] @ grads[j]) / (out[i].norm().clamp_min(1e-12) * norms[j])
            target = targets[i, j]
            if phi < target:
                root_phi, root_t = (1 - phi**2).clamp_min(0).sqrt(), (1 - target**2).clamp_min(1e-12).sqrt()
                out[i] = out[i] + out[i].norm() * (target * root_phi - phi * root_t) / (norms[j] * root_t) * grads[j]
            targets[i, j] = (1 - beta) * target + beta * phi
    return out, targets


class GradVac(Aggregator):
    """State: task i's cosine targets towards every task j, indexed by j's id."""

    def __init__(self, beta: float = 0.01) -> None:
        self.beta = beta

    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        return {t: {"targets": torch.zeros(max(tasks) + 1)} for t in tasks}

    def apply(self, grads: torch.Tensor, losses: torch.Tensor, state: TaskState,
              task_ids: Sequence[int], ctx: Context) -> Aggregated:
        ids = list(task_ids)
        targets = torch.stack([state[t]["targets"][ids] for t in ids]).to(grads)
        rows, targets = gradvac(grads, targets, self.beta, ctx.generator)
        new = dict(state)
        for i, t in enumerate(ids):
            row = state[t]["targets"].clone()
            row[ids] = targets[i].cpu().to(row.dtype)
            new[t] = {"targets": row}
        return Aggregated(rows, torch.ones(len(ids)), new)

"""FAMO: "Fast Adaptive Multitask Optimization" (Liu et al., NeurIPS 2023), Alg. 1.

Task weights z = softmax(ξ). The model descends Σ_k c·z_k log L_k with
c = (Σ_k z_k / L_k)⁻¹, so its gradient is Σ_k (c z_k / L_k) ∇L_k — a convex
combination of the task gradients, scaled by the loss levels. After the model's step
the same batch is evaluated again and δ_k = log L_k(before) − log L_k(after) is each
task's log-loss improvement; ξ takes an Adam step (lr 0.025, weight decay 0.001) along
Jᵀδ, J the softmax Jacobian, raising the weight of the tasks that improved least.
O(1) space and time in K: no per-task gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mtlrec.training.mtl import learned
from mtlrec.training.mtl.parts import Context, TaskState, Weighting


def famo_weights(losses: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The gradient weights c·z_k / L_k of Σ_k c·z_k·log L_k (z = softmax(ξ), c constant)."""
    z = torch.softmax(logits.detach(), dim=0)
    inverse = z / losses.detach().clamp_min(1e-8)
    return inverse / inverse.sum()


def famo_logit_gradient(logits: torch.Tensor, before: torch.Tensor, after: torch.Tensor
                        ) -> torch.Tensor:
    """Jᵀδ with δ = log L(before) − log L(after): the gradient ξ descends."""
    delta = torch.log(before.clamp_min(1e-8)) - torch.log(after.clamp_min(1e-8))
    z = torch.softmax(logits.detach(), dim=0)
    return z * (delta - (z * delta).sum())  # (diag(z) − zzᵀ) δ


class FAMO(Weighting):
    needs_losses_after = True

    def __init__(self, lr: float = 0.025, weight_decay: float = 1e-3) -> None:
        self.lr, self.weight_decay = lr, weight_decay

    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        return learned.init(torch.zeros(len(tasks)), tasks)

    def weights(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int],
                ctx: Context) -> tuple[torch.Tensor, TaskState]:
        return famo_weights(losses.cpu(), learned.values(state, task_ids)), state

    def after_update(self, before: torch.Tensor, after: torch.Tensor, state: TaskState,
                     task_ids: Sequence[int]) -> TaskState:
        grad = famo_logit_gradient(learned.values(state, task_ids), before.cpu(), after.cpu())
        return learned.adam(state, task_ids, grad, self.lr, self.weight_decay)

    def describe(self, state: TaskState, tasks: Sequence[int]) -> dict[str, Any]:
        return {"famo_weights": learned.values(state, tasks).tolist()}

"""MoCoGrad: "Towards Task-Conflicts Momentum-Calibrated Approach for Multi-task
Learning" (Chai et al.), Eq. 8 and Algorithm 1.

For each task i and each other task j in random order, when ĝ_i conflicts with g_j
(⟨ĝ_i, g_j⟩ < 0, i.e. GCD = 1 − cos > 1), calibrate with j's momentum from the
previous step: ĝ_i ← ĝ_i + λ (‖g_j‖ / ‖m_j‖) m_j (skipped while m_j is still zero).
The shared gradient is Σ_i ĝ_i. Then every momentum is updated with the raw gradient,
m_k ← β₁ m_k + (1 − β₁) g_k. Following the paper (not the released code, which derives
m_k from the optimizer's single Adam moment), each task keeps its own momentum buffer.
λ has no default in the released code; 0.1 is the paper's best in its sweep.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.training.mtl.parts import Aggregated, Aggregator, Context, TaskState


def mocograd(grads: torch.Tensor, momentum: torch.Tensor, lam: float = 0.1, beta1: float = 0.9,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """grads, momentum [K, D] → (calibrated gradients [K, D], updated momentum [K, D])."""
    k = grads.shape[0]
    calibrated = grads.clone()
    grad_norms, mom_norms = grads.norm(dim=1), momentum.norm(dim=1)
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i or mom_norms[j] == 0:
                continue
            if calibrated[i] @ grads[j] < 0:
                calibrated[i] += lam * grad_norms[j] / mom_norms[j] * momentum[j]
    return calibrated, beta1 * momentum + (1.0 - beta1) * grads


class MoCoGrad(Aggregator):
    spans_batches = True

    def __init__(self, lam: float = 0.1, beta1: float = 0.9) -> None:
        self.lam, self.beta1 = lam, beta1

    def apply(self, grads: torch.Tensor, losses: torch.Tensor, state: TaskState,
              task_ids: Sequence[int], ctx: Context) -> Aggregated:
        momentum = torch.stack([state[t]["momentum"] if t in state else torch.zeros_like(grads[0])
                                for t in task_ids])
        rows, momentum = mocograd(grads, momentum, self.lam, self.beta1, ctx.generator)
        new = dict(state) | {t: {"momentum": momentum[i]} for i, t in enumerate(task_ids)}
        return Aggregated(rows, torch.ones(len(task_ids)), new)

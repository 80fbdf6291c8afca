"""GradNorm: "Gradient Normalization for Adaptive Loss Balancing" (Chen et al., ICML
2018), Eq. 1-2 and Alg. 1.

Learnable task weights w_k (start at 1). With G_k = w_k‖g_k‖, Ḡ their mean,
r_k = L̃_k / mean(L̃), L̃_k = L_k / L_k(0): L_grad = Σ_k |G_k − Ḡ r_k^α| with the target
Ḡ r_k^α a constant; w takes a step along ∇_w L_grad and is renormalised to Σw = K (the
number of tasks updated together). Tasks that train slower get larger gradients.
α = 1.5 (the paper's). The paper measures g_k on the last shared layer; here they are
the per-task gradients the step already has (on all shared parameters, or the
representation with grad_on=representation). ∂L_grad/∂w_k = sign(G_k − target_k)·‖g_k‖.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mtlrec.training.mtl import learned
from mtlrec.training.mtl.parts import Aggregated, Aggregator, Context, TaskState


def gradnorm_weight_gradient(weights: torch.Tensor, grads: torch.Tensor, losses: torch.Tensor,
                             initial: torch.Tensor, alpha: float = 1.5) -> torch.Tensor:
    """weights [K], grads [K, D], losses and first losses [K] → ∂L_grad/∂w [K]."""
    norms = grads.norm(dim=1)
    weighted = weights * norms
    ratio = losses.detach() / initial.clamp_min(1e-12)
    target = weighted.mean() * (ratio / ratio.mean()) ** alpha
    return torch.sign(weighted - target) * norms


def renormalise(weights: torch.Tensor) -> torch.Tensor:
    """Σw = K, each w > 0."""
    w = weights.clamp_min(1e-6)
    return w * (w.shape[0] / w.sum())


class GradNorm(Aggregator):
    """State: each task's learnt weight (with its Adam moments) and its first loss."""

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        self.alpha, self.lr = alpha, lr

    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        return learned.init(torch.ones(len(tasks)), tasks)

    def apply(self, grads: torch.Tensor, losses: torch.Tensor, state: TaskState,
              task_ids: Sequence[int], ctx: Context) -> Aggregated:
        state = {**state, **{t: {**state[t], "initial": losses[i].detach().cpu()}
                             for i, t in enumerate(task_ids) if "initial" not in state[t]}}
        w = learned.values(state, task_ids).to(grads)
        initial = torch.stack([state[t]["initial"] for t in task_ids]).to(grads)
        step = gradnorm_weight_gradient(w, grads, losses, initial, self.alpha)
        new = learned.adam(state, task_ids, step, self.lr)
        normalised = renormalise(learned.values(new, task_ids))
        new = {**new, **{t: {**new[t], "value": normalised[i]} for i, t in enumerate(task_ids)}}
        return Aggregated(w.unsqueeze(1) * grads, w, new)

    def describe(self, state: TaskState, tasks: Sequence[int]) -> dict[str, Any]:
        return {"gradnorm_weights": learned.values(state, tasks).tolist()}

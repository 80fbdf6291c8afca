"""UW: "Multi-Task Learning Using Uncertainty to Weigh Losses" (Kendall et al., CVPR 2018),
Eq. 7 with s_k = log σ_k² learnt jointly with the model:
L = Σ_k ½ exp(−s_k) L_k + ½ s_k. A task with noisy (large) loss raises its s_k and
weighs less; the ½ s_k term stops every weight collapsing to 0. As a weighting: the
model descends Σ_k w_k L_k with w_k = ½ exp(−s_k), and s_k takes an Adam step (at the
model's current learning rate) along ∂L/∂s_k = ½ (1 − exp(−s_k) L_k).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mtlrec.training.mtl import learned
from mtlrec.training.mtl.parts import Context, TaskState, Weighting


class UW(Weighting):
    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        return learned.init(torch.zeros(len(tasks)), tasks)

    def weights(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int],
                ctx: Context) -> tuple[torch.Tensor, TaskState]:
        s = learned.values(state, task_ids)
        w = 0.5 * torch.exp(-s)
        grad_s = 0.5 - w * losses.detach().cpu()
        return w, learned.adam(state, task_ids, grad_s, ctx.lr)

    def describe(self, state: TaskState, tasks: Sequence[int]) -> dict[str, Any]:
        return {"uw_weights": learned.values(state, tasks).tolist()}

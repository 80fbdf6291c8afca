"""Fixed task weights (EW: all 1, or `method.task_weights`): Σ_k w_k L_k."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.training.mtl.parts import Context, TaskState, Weighting


class FixedWeights(Weighting):
    def __init__(self, task_weights: Sequence[float] | None = None) -> None:
        self.task_weights = None if task_weights is None else torch.tensor(task_weights)

    def weights(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int],
                ctx: Context) -> tuple[torch.Tensor, TaskState]:
        if self.task_weights is None:
            return torch.ones(len(task_ids)), state
        return self.task_weights[list(task_ids)], state

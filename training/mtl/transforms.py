"""The plain loss transforms: the mean of the per-sample losses over the (global) batch,
or its log (the loss-scale half of DB-MTL, usable with any method: ∇ log L_k = ∇L_k / L_k)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mtlrec.training.mtl.collective import batch_mean
from mtlrec.training.mtl.parts import TaskState, Transform


class Mean(Transform):
    def apply(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int], train: bool,
              weights: torch.Tensor | None = None) -> tuple[torch.Tensor, TaskState, dict[str, Any]]:
        return batch_mean(losses, weights), state, {}


class LogMean(Transform):
    def apply(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int], train: bool,
              weights: torch.Tensor | None = None) -> tuple[torch.Tensor, TaskState, dict[str, Any]]:
        return torch.log(batch_mean(losses, weights) + 1e-8), state, {}

"""The parts a multi-task step is composed of, and what they may remember.

A part is an object holding only its settings; what it remembers between steps is a
`TaskState` the step keeps for it (made by `init_state(tasks, generator)`): a dict keyed by task id (0..K−1 as the labels are
ordered), so a part updating the group [1, 2] reads and writes tasks 1 and 2 only,
whatever their position inside the group. Every part receives its state, the ids of the
tasks being updated and a `Context`, and returns its new state: nothing travels between
parts except through return values; `describe(state, tasks)` says what diagnostics show. Tensors, numbers, lists and dicts only, so a state
goes into a checkpoint as it is (loaded with `weights_only`).

- `Transform`: per-sample losses [B, K] → task losses ℓ [K] (mean, log, SuperLoss).
- `Weighting`: task losses ℓ [k] → task weights w [k]; the update is Σ w_k ∇ℓ_k, so no
  per-task gradients are needed (fixed, RLW, GLS, UW, DWA, FAMO).
- `Aggregator`: per-task gradients G [k, D] on the shared part → rows C [k, D] (the
  shared update is Σ_k C_k) and head weights [k] for the task-specific parameters
  (PCGrad, DB-MTL, MoCoGrad, GradVac, DTJS's φ, …).

A new method is one file defining such a class plus one line in `registry.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

TaskState = dict[Any, Any]  # per task id (a part may keep a few entries of its own)


@dataclass(frozen=True)
class Context:
    """What a part may know about the step it runs in."""
    generator: torch.Generator  # the step's seeded generator (checkpointed with it)
    step: int  # batches trained so far, this one included
    epoch: int
    lr: float  # the model's current (scheduled) learning rate


@dataclass
class Aggregated:
    """An aggregator's answer for the tasks it was given (in their order)."""
    rows: torch.Tensor  # [k, D]: the shared update is rows.sum(0)
    head_weights: torch.Tensor  # [k]: task-specific parameters descend Σ w_k ℓ_k
    state: TaskState
    record: dict[str, Any] = field(default_factory=dict)  # values for diagnostics and the outer loop


class Transform:
    """Per-sample losses → task losses."""

    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        return {}

    def apply(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int], train: bool,
              weights: torch.Tensor | None = None) -> tuple[torch.Tensor, TaskState, dict[str, Any]]:
        """losses [B, K] (rows weighted by `weights` [B, K], 0 for a missing label; None:
        all 1) → (task losses [K], state, record). Only the tasks in `task_ids` learn from
        this batch (`train`); a dev batch (`train=False`) changes nothing."""
        raise NotImplementedError

    def describe(self, state: TaskState, tasks: Sequence[int]) -> dict[str, Any]:
        return {}


class Weighting:
    """Task losses → task weights (a loss-level method)."""
    needs_losses_after: ClassVar[bool] = False  # FAMO: the batch's losses after the update

    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        return {}

    def weights(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int],
                ctx: Context) -> tuple[torch.Tensor, TaskState]:
        """losses [k] of `task_ids` (no graph) → (weights [k], state)."""
        raise NotImplementedError

    def after_update(self, before: torch.Tensor, after: torch.Tensor, state: TaskState,
                     task_ids: Sequence[int]) -> TaskState:
        """Learn from the losses [k] the update changed (when `needs_losses_after`)."""
        return state

    def describe(self, state: TaskState, tasks: Sequence[int]) -> dict[str, Any]:
        """What diagnostics show of the state."""
        return {}


class Aggregator:
    """Per-task gradients → the rows of the shared update."""
    spans_batches: ClassVar[bool] = False  # keeps an average of gradients across batches

    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        return {}

    def apply(self, grads: torch.Tensor, losses: torch.Tensor, state: TaskState,
              task_ids: Sequence[int], ctx: Context) -> Aggregated:
        """grads [k, D] and losses [k] (with graph) of `task_ids` → rows, head weights, state."""
        raise NotImplementedError

    def describe(self, state: TaskState, tasks: Sequence[int]) -> dict[str, Any]:
        return {}

"""The multi-task step: how one batch's per-task losses become a parameter update.

`Trainer` hands `step.train_batch` a `Forward` closure (the model on the batch, returning
per-sample task losses, split at the shared representation on request) and, for methods
with an outer loop, a closure over dev batches; the step computes gradients and steps its
own optimizers — some methods update several times per batch (grouped updates) or run the
batch again (FAMO). `training.mtl.step.ComposedStep` implements it; its state is saved
in checkpoints and its diagnostics samples are handed to the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class Pass:
    """One forward pass: per-sample task losses, and with a split model the shared
    representation `rep` (graph to the shared parameters) next to the detached `leaves`
    the task-specific part consumed; `weights` [B, K]: each row's weight in each task's
    loss (0 where its label is missing; None: the plain mean)."""
    losses: torch.Tensor  # [B, K]
    rep: list[torch.Tensor] = field(default_factory=list)
    leaves: list[torch.Tensor] = field(default_factory=list)
    weights: torch.Tensor | None = None


Forward = Callable[[bool], Pass]  # the argument: split at the shared representation?


class MultiTaskStep(Protocol):
    optimizers: Any  # training.mtl.optimizers.Optimizers
    diagnostics: list[dict[str, Any]]

    @property
    def dev_batch_size(self) -> int | None:
        """Batch size of the dev batches an outer loop needs (None: it needs none)."""

    def train_batch(self, forward: Forward, epoch: int = 0, dev: Forward | None = None,
                    epoch_batches: int | None = None, labelled: torch.Tensor | None = None) -> torch.Tensor:
        """One batch (`epoch_batches`: the epoch's length, for cadences set per epoch;
        `labelled`: this rank's labelled weight per task [K], None when every row has every
        label); returns the batch's mean task losses [K] before any update (0 for a task
        with no label in the batch, which the update leaves out)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

"""The multi-task step: how per-task losses become parameter gradients.

`Trainer` computes the per-task mean losses L [K] of a batch and calls
`step.backward(L)`; the step fills `.grad` of every parameter. Equal weighting is the
simplest step; the methods of the multi-task-optimizer issue implement the same
interface (plus their own state, saved in checkpoints).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class MultiTaskStep(Protocol):
    def backward(self, losses: torch.Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EqualWeighting:
    """EW: minimise Σ_k w_k · L_k (w = 1 unless configured)."""

    def __init__(self, weights: list[float] | None = None) -> None:
        self.weights = None if weights is None else torch.tensor(weights)

    def backward(self, losses: torch.Tensor) -> None:
        w = torch.ones_like(losses) if self.weights is None else self.weights.to(losses)
        (w * losses).sum().backward()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

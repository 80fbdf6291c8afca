"""The multi-task step: how per-task losses become parameter gradients.

`Trainer` computes the per-task mean losses L [K] of a batch and calls
`step.backward(L)`; the step fills `.grad` of every parameter. `training.mtl.step`
implements it (equal weighting is its simplest form); a step's own state is saved in
checkpoints.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class MultiTaskStep(Protocol):
    def backward(self, losses: torch.Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

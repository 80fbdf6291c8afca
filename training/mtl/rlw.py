"""RLW: "Reasonable Effectiveness of Random Weighting" (Lin et al., TMLR 2022).

Each step draws task weights λ = softmax(z), z ~ N(0, I_k), over the tasks being
updated, and minimises Σ_k λ_k L_k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.training.mtl.parts import Context, TaskState, Weighting


def rlw_weights(k: int, generator: torch.Generator) -> torch.Tensor:
    return torch.softmax(torch.randn(k, generator=generator), dim=0)


class RLW(Weighting):
    def weights(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int],
                ctx: Context) -> tuple[torch.Tensor, TaskState]:
        return rlw_weights(len(task_ids), ctx.generator), state

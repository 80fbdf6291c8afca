"""GLS: geometric loss strategy, "MultiNet++" (Chennupati et al., CVPRW 2019).

Minimise the geometric mean (Π_k L_k)^{1/K}; its gradient weighs each task by
GLS / (K·L_k), so tasks with small losses are not drowned by large ones. Computed in
log space: exp(mean_k log L_k).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.training.mtl.parts import Context, TaskState, Weighting


def gls(losses: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.log(losses.clamp_min(1e-12)).mean())


class GLS(Weighting):
    def weights(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int],
                ctx: Context) -> tuple[torch.Tensor, TaskState]:
        """∂GLS/∂L_k = GLS / (k·L_k)."""
        losses = losses.detach().cpu().clamp_min(1e-12)
        return gls(losses) / (len(task_ids) * losses), state

"""DWA: Dynamic Weight Average, "End-to-End Multi-Task Learning with Attention"
(Liu et al., CVPR 2019), Eq. 7.

w_k(t) = K·exp(r_k/T) / Σ_i exp(r_i/T) with r_k = L̄_k(t−1)/L̄_k(t−2), the ratio of the
task's mean training loss over the last two epochs: a task whose loss falls slowly gets
more weight. T = 2; w = 1 until two epochs have been seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class EpochLosses:
    """Mean training loss per task of the last two finished epochs, and the running one."""
    epoch: int = 0
    sums: torch.Tensor | None = None
    batches: int = 0
    finished: list[torch.Tensor] = field(default_factory=list)

    def add(self, losses: torch.Tensor, epoch: int) -> None:
        if epoch != self.epoch and self.batches:
            self.finished = [*self.finished[-1:], self.sums / self.batches]
            self.sums, self.batches = None, 0
        self.epoch = epoch
        value = losses.detach()
        self.sums = value.clone() if self.sums is None else self.sums + value
        self.batches += 1


def dwa_weights(history: EpochLosses, k: int, temperature: float = 2.0) -> torch.Tensor:
    if len(history.finished) < 2:
        return torch.ones(k)
    older, last = history.finished
    return k * torch.softmax(last / older.clamp_min(1e-12) / temperature, dim=0).cpu()

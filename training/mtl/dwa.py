"""DWA: Dynamic Weight Average, "End-to-End Multi-Task Learning with Attention"
(Liu et al., CVPR 2019), Eq. 7.

w_k(t) = K·exp(r_k/T) / Σ_i exp(r_i/T) with r_k = L̄_k(t−1)/L̄_k(t−2), the ratio of the
task's mean training loss over the last two epochs: a task whose loss falls slowly gets
more weight. T = 2; w = 1 until two epochs have been seen. Each task's state keeps the
running sum of its losses in the current epoch and the means of its last two; the
softmax runs over every task's ratio (K is the number of tasks), whichever are updated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.training.mtl.parts import Context, TaskState, Weighting


def dwa_weights(older: torch.Tensor, last: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Mean losses [K] of the epochs before last and last → weights [K] (sum K)."""
    return len(last) * torch.softmax(last / older.clamp_min(1e-12) / temperature, dim=0)


def closed(entry: dict, epoch: int) -> list[torch.Tensor]:
    """The task's finished epoch means as of `epoch` (its last epoch closes when a later
    one has begun)."""
    if epoch != entry["epoch"] and entry["batches"]:
        return [*entry["finished"][-1:], entry["sum"] / entry["batches"]]
    return list(entry["finished"])


def add_loss(entry: dict, loss: torch.Tensor, epoch: int) -> dict:
    """A task's epoch record with this batch's loss."""
    running = entry["epoch"] == epoch
    return {"epoch": epoch, "finished": closed(entry, epoch),
            "sum": (entry["sum"] if running else 0.0) + loss.detach().cpu(),
            "batches": (entry["batches"] if running else 0) + 1}


class DWA(Weighting):
    def __init__(self, temperature: float = 2.0) -> None:
        self.temperature = temperature

    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        return {t: {"epoch": 0, "sum": torch.zeros(()), "batches": 0, "finished": []} for t in tasks}

    def weights(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int],
                ctx: Context) -> tuple[torch.Tensor, TaskState]:
        every = sorted(state)
        finished = [closed(state[t], ctx.epoch) for t in every]
        if all(len(f) == 2 for f in finished):
            older, last = (torch.stack([f[i] for f in finished]) for i in (0, 1))
            w = dwa_weights(older, last, self.temperature)[[every.index(t) for t in task_ids]]
        else:
            w = torch.ones(len(task_ids))
        new = dict(state) | {t: add_loss(state[t], losses[i], ctx.epoch) for i, t in enumerate(task_ids)}
        return w, new

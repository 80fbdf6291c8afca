"""Means and sums over the ranks of a data-parallel run (torch.distributed, as `torchrun`
launches it); in one process, the plain mean and the identity.

How the multi-task step stays the single-process step on the global batch: every rank
computes the gradient of the *global* batch's objective restricted to its own samples. A
task's loss is the mean over the global batch (`batch_mean`: its value is the global mean
on every rank, its graph reaches only this rank's samples, scaled by 1 / global batch),
so a loss transformed after the mean (DB-MTL's log) is transformed at its global value,
and each rank's gradients are its share of the global gradient: their sum over the ranks
(`total`, `total_grads`) is what one process computes on the global batch. The per-task
gradient rows are summed *before* any aggregator sees them, so every rank aggregates the
same K×D matrix and takes the same step, and the parts' state and random draws stay the
same on every rank. A method that aggregated each rank's local rows and then averaged
would differ whenever the ranks' local gradients conflict and the global ones do not
(tests/test_distributed_methods.py builds such a split).

Cost: summing the K×D rows is K times the traffic of plain data parallelism's D.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """The number of ranks (1 unless a process group of several is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def batch_mean(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over dim 0 of the global batch (ranks' batches may differ in size); with
    `weights` (x's shape), Σ w·x / Σ w per column over the global batch, 0 for a column
    without weight (a task with no label in the batch)."""
    if weights is None and world_size() == 1:
        return x.mean(dim=0)
    local = x.sum(dim=0) if weights is None else (x * weights).sum(dim=0)
    count = torch.full_like(local, x.shape[0]) if weights is None else weights.sum(dim=0)
    if world_size() == 1:
        return local / count.clamp_min(1e-12)
    stats = torch.cat([local.detach().reshape(-1).double(), count.detach().reshape(-1).double()])
    dist.all_reduce(stats)
    n = local.numel()
    total = stats[n:].clamp_min(1e-12)
    mean = (stats[:n] / total).to(local.dtype).view_as(local)
    return mean + (local - local.detach()) / total.to(local.dtype).view_as(local)  # value: the global mean


def total(x: torch.Tensor) -> torch.Tensor:
    """The sum over the ranks of a tensor without graph (gradient rows, vectors)."""
    if world_size() == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out


def total_grads(params: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's `.grad` by its sum over the ranks (one flat all-reduce). A
    parameter no rank has a gradient for keeps none, as the optimizer then skips it in one
    process too; one that some rank lacks counts zero there."""
    if world_size() == 1 or not params:
        return
    if any(p.grad is not None and p.grad.is_sparse for p in params):
        raise ValueError("sparse gradients cannot be summed over ranks here: under torchrun set "
                         "model.embedding_grad=dense")
    grads = [torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.reshape(-1) for p in params]
    held = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = total(torch.cat([*grads, held]))
    offset = 0
    for p, anyone in zip(params, flat[-len(params):].tolist()):
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone() if anyone else None
        offset += p.numel()

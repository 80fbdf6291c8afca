"""Per-task gradients on the shared parameters, as the K×D matrix the methods act on."""

from __future__ import annotations

import torch


def per_task_gradients(losses: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """G[k] = ∇_θ L_k flattened over `params` (a parameter no loss reaches counts as 0).

    The graph is kept, so the caller can still backpropagate the combined loss into the
    parameters that are not in `params` (towers, gates, embeddings).
    """
    rows = []
    for k in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[k], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([
            (torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)
        ]))
    return torch.stack(rows)


def write_gradient(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Set `.grad` of params from one flat vector (the aggregated shared gradient)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n

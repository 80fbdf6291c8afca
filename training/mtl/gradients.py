"""Per-task gradients on the shared part, as the K×D matrix the methods act on.

Two ways to get the K rows: K backward passes through the retained graph, or one
vectorised vector-Jacobian product (`torch.autograd.grad(..., is_grads_batched=True)`,
vmap over the K one-hot output gradients). `mtlrec bench methods` measures both.
"""

from __future__ import annotations

import torch


def per_task_gradients(losses: torch.Tensor, inputs: list[torch.Tensor], batched: bool = False
                       ) -> torch.Tensor:
    """G[k] = ∇ L_k flattened over `inputs` (parameters or activations; one no loss
    reaches counts as 0). The graph is kept for the rest of the step."""
    if batched:
        eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(losses, inputs, grad_outputs=eye, retain_graph=True,
                                    allow_unused=True, is_grads_batched=True)
        return torch.cat([
            (torch.zeros(losses.shape[0], x.numel(), dtype=x.dtype, device=x.device) if g is None
             else g.reshape(losses.shape[0], -1)) for x, g in zip(inputs, grads)], dim=1)
    rows = []
    for k in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[k], inputs, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([
            (torch.zeros_like(x) if g is None else g).reshape(-1) for x, g in zip(inputs, grads)
        ]))
    return torch.stack(rows)


def split_like(flat: torch.Tensor, tensors: list[torch.Tensor], leading: bool = False
               ) -> list[torch.Tensor]:
    """Cut a flat vector [D] (or rows [K, D] with `leading`) into the tensors' shapes."""
    out, offset = [], 0
    for t in tensors:
        n = t.numel()
        piece = flat[..., offset:offset + n]
        out.append(piece.reshape(*flat.shape[:-1], *t.shape) if leading else piece.view_as(t))
        offset += n
    return out


def write_gradient(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Set `.grad` of params from one flat vector (the aggregated shared gradient)."""
    for p, piece in zip(params, split_like(flat, params)):
        p.grad = piece.clone()


def pairwise_similarity(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """grads [K, D] → (cosine [K, K], magnitude similarity 2‖g_i‖‖g_j‖/(‖g_i‖² + ‖g_j‖²) [K, K]).

    Magnitude similarity is 1 for equal norms and falls towards 0 as one task dominates.
    """
    norms = grads.norm(dim=1).clamp_min(1e-12)
    cos = (grads @ grads.t()) / (norms[:, None] * norms[None, :])
    sq = norms**2
    return cos, 2.0 * norms[:, None] * norms[None, :] / (sq[:, None] + sq[None, :])

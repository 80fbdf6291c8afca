"""DTJS inter-task scheduling and its bi-level update ("Dynamic Task and Joint
Scheduling", the DTJS paper in ../shared/papers; ALGORITHMS.md fixes the details).

Inter-task weights from the per-task gradients on the shared parameters:
d_k = mean_{j≠k} cos(g_k, g_j) (direction) and
m_k = mean_{j≠k} [4‖g_k‖‖g_j‖/(‖g_k‖² + ‖g_j‖²) − 1] (magnitude, in (−1, 1]);
φ_k = sigmoid(a_k d_k) + sigmoid(b_k m_k), α = {a, b} learnable. The training loss is
Σ_k φ_k ℓ_k with d, m constants.

α is learnt on dev batches (bi-level): ∇_α L_dev ≈ −(∂²L_train/∂α∂θ) · p with
p ≈ H⁻¹ ∇_θ L_dev from the Neumann series H⁻¹ ≈ η Σ_{j=0..J} (I − ηH)^j (η the model's
learning rate, H the Hessian of L_train). J = 0 is the first-order version: then the
hypergradient is exactly d/dα L_dev(θ − η ∇_θ L_train(θ, α)) to first order in η.
The released script's elementwise variant of the series is not used (ALGORITHMS.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mtlrec.training.mtl.gradients import pairwise_similarity


def inter_task_stats(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """grads [K, D] → (d [K], m [K]): mean direction and magnitude similarity to the others
    (m's pair term 4‖g_k‖‖g_j‖/(‖g_k‖² + ‖g_j‖²) − 1 is 2·magnitude similarity − 1)."""
    k = grads.shape[0]
    cos, magnitude = pairwise_similarity(grads)
    off = ~torch.eye(k, dtype=torch.bool, device=grads.device)
    return (cos * off).sum(1) / max(k - 1, 1), ((2.0 * magnitude - 1.0) * off).sum(1) / max(k - 1, 1)


def phi(alpha: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """φ_k = sigmoid(a_k d_k) + sigmoid(b_k m_k); alpha [2, K] = (a, b)."""
    return torch.sigmoid(alpha[0] * d) + torch.sigmoid(alpha[1] * m)


def hypergradient(train_loss: Callable[[torch.Tensor], torch.Tensor], dev_loss: torch.Tensor,
                  params: list[torch.nn.Parameter], alpha: torch.Tensor, lr: float,
                  terms: int) -> torch.Tensor:
    """∇_α L_dev ≈ −(∂²L_train/∂α∂θ)·p, p = η Σ_{j≤J} (I − ηH)^j ∇_θ L_dev.

    `train_loss(alpha)` must build L_train from the current graph with α as a live input.
    """
    v = [g.detach() for g in _grads(dev_loss, params, retain_graph=False)]
    grad_train = _grads(train_loss(alpha), params, create_graph=True)
    p = [t.clone() for t in v]
    for _ in range(terms):
        hv = torch.autograd.grad(grad_train, params, grad_outputs=v, retain_graph=True,
                                 allow_unused=True)
        v = [t - lr * (torch.zeros_like(t) if h is None else h.detach()) for t, h in zip(v, hv)]
        p = [a + b for a, b in zip(p, v)]
    used = [(g, q) for g, q in zip(grad_train, p) if g.requires_grad]
    mixed = torch.autograd.grad([g for g, _ in used], alpha, grad_outputs=[lr * q for _, q in used],
                                retain_graph=True, allow_unused=True)[0]
    return -(torch.zeros_like(alpha) if mixed is None else mixed)


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter], retain_graph: bool = True,
           create_graph: bool = False) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph or create_graph,
                                create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

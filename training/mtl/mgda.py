"""MGDA: "Multi-Task Learning as Multi-Objective Optimization" (Sener & Koltun,
NeurIPS 2018), Sec. 3: the min-norm point of the convex hull of the task gradients,
d = Σ_k w_k g_k with w = argmin_{w ∈ Δ} ‖Σ_k w_k g_k‖² — a direction that decreases
every task loss (or 0 at a Pareto-stationary point). Solved on the K×K Gram matrix.
"""

from __future__ import annotations

import torch

from mtlrec.training.mtl.simplex import minimize_on_simplex


def mgda_weights(grads: torch.Tensor) -> torch.Tensor:
    gram = (grads @ grads.t()).double().cpu().numpy()
    w = minimize_on_simplex(lambda w: float(w @ gram @ w), grads.shape[0])
    return torch.as_tensor(w, dtype=grads.dtype, device=grads.device)


def mgda(grads: torch.Tensor) -> torch.Tensor:
    """grads [K, D] → the weighted rows w_k g_k [K, D]; their sum is the min-norm point."""
    return mgda_weights(grads).unsqueeze(1) * grads



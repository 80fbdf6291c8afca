"""IMTL-G: "Towards Impartial Multi-task Learning" (Liu et al., ICLR 2021), Sec. 3.

Find the combination g = Σ_k α_k g_k (Σα = 1) whose projections onto every task's unit
gradient u_k are equal — no task is favoured by the shared update. With
D = [g_1 − g_k]_{k≥2} and U = [u_1 − u_k]_{k≥2}: α_{2:K} = g_1 Uᵀ (D Uᵀ)⁻¹,
α_1 = 1 − Σ α_{2:K}. Scale: a convex-like combination (mean-sized).
"""

from __future__ import annotations

import torch


def imtl_g(grads: torch.Tensor) -> torch.Tensor:
    """grads [K, D] → rows α_k g_k [K, D]; their sum is the impartial combination."""
    units = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)
    d = grads[:1] - grads[1:]
    u = units[:1] - units[1:]
    alpha_rest = torch.linalg.solve((d @ u.t()).t(), (grads[0] @ u.t()))
    alpha = torch.cat([1.0 - alpha_rest.sum(0, keepdim=True), alpha_rest])
    return alpha.unsqueeze(1) * grads

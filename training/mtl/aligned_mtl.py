"""Aligned-MTL: "Independent Component Alignment for Multi-Task Learning" (Senushkin et
al., CVPR 2023), Sec. 4, Eq. 9-10 and Alg. 1.

Make the task gradients orthogonal with equal norms, which makes the linear system they
span perfectly conditioned: with G Gᵀ = V Λ Vᵀ (K×K) and σ_min the smallest singular
value kept, the aligned rows are Ĝ = σ_min V Λ^{-1/2} Vᵀ G, and the update is Σ_k w_k Ĝ_k
with the task weights w (equal, 1/K, by default). Directions with singular value below
a relative tolerance are dropped (rank-deficient G).
"""

from __future__ import annotations

import torch


def aligned_mtl(grads: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """grads [K, D] → aligned rows w_k Ĝ_k [K, D] (w = 1/K)."""
    gram = (grads @ grads.t()).double()
    eigval, eigvec = torch.linalg.eigh(gram)
    keep = eigval > tol * eigval.max().clamp_min(1e-30)
    if not keep.any():
        return torch.zeros_like(grads)
    lam, vec = eigval[keep], eigvec[:, keep]
    sigma_min = lam.min().sqrt()
    balance = sigma_min * vec @ torch.diag(lam.rsqrt()) @ vec.t()  # [K, K]
    aligned = balance.to(grads.dtype) @ grads
    return aligned / grads.shape[0]

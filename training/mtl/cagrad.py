"""CAGrad: "Conflict-Averse Gradient Descent for Multi-task Learning" (Liu et al.,
NeurIPS 2021), the CAGrad algorithm of Sec. 3.

With g₀ the average gradient and φ = c²‖g₀‖²: w = argmin_{w ∈ Δ} g_wᵀg₀ + √φ‖g_w‖
(g_w = Σ w_k g_k), then d = g₀ + (√φ / ‖g_w‖) g_w, the update that maximises the
worst task's improvement within a ball around g₀. As in the authors' code (rescale=1),
d is divided by 1 + c². c = 0.4 is the paper's default. Scale: a mean over tasks.
d is linear in the g_k, d = Σ_k c_k g_k with c_k = (1/K + √φ w_k / ‖g_w‖) / (1 + c²);
the rows c_k g_k are returned (AdaTask + CAGrad keeps moments per row).
"""

from __future__ import annotations

import numpy as np
import torch

from mtlrec.training.mtl.simplex import minimize_on_simplex


def cagrad(grads: torch.Tensor, c: float = 0.4) -> torch.Tensor:
    """grads [K, D] → rows c_k g_k [K, D] whose sum is the conflict-averse direction."""
    k = grads.shape[0]
    gram = (grads @ grads.t()).double().cpu().numpy()
    g0_dot = gram.mean(axis=1)  # g_kᵀ g₀ for each k
    sqrt_phi = c * float(np.sqrt(max(gram.mean(), 0.0)))  # c‖g₀‖, ‖g₀‖² = mean of M

    def objective(w: np.ndarray) -> float:
        return float(w @ g0_dot + sqrt_phi * np.sqrt(max(w @ gram @ w, 1e-20)))

    w = torch.as_tensor(minimize_on_simplex(objective, k), dtype=grads.dtype, device=grads.device)
    g_w_norm = torch.sqrt((w @ torch.as_tensor(gram, dtype=grads.dtype, device=grads.device) @ w).clamp_min(1e-24))
    coef = (1.0 / k + sqrt_phi / g_w_norm.clamp_min(1e-12) * w) / (1.0 + c**2)
    return coef.unsqueeze(1) * grads

"""GradNorm: "Gradient Normalization for Adaptive Loss Balancing" (Chen et al., ICML
2018), Eq. 1-2 and Alg. 1.

Learnable task weights w_k (start at 1). With G_k = w_k‖g_k‖, Ḡ their mean,
r_k = L̃_k / mean(L̃), L̃_k = L_k / L_k(0): L_grad = Σ_k |G_k − Ḡ r_k^α| with the target
Ḡ r_k^α a constant; w takes a step along ∇_w L_grad and is renormalised to Σw = K. Tasks
that train slower get larger gradients. α = 1.5 (the paper's). The paper measures g_k on
the last shared layer; here they are the per-task gradients the step already has (on
all shared parameters, or the representation with grad_on=representation).
∂L_grad/∂w_k = sign(G_k − target_k)·‖g_k‖.
"""

from __future__ import annotations

import torch


def gradnorm_weight_gradient(weights: torch.Tensor, grads: torch.Tensor, losses: torch.Tensor,
                             initial: torch.Tensor, alpha: float = 1.5) -> torch.Tensor:
    """weights [K], grads [K, D], losses and first losses [K] → ∂L_grad/∂w [K]."""
    norms = grads.norm(dim=1)
    weighted = weights * norms
    ratio = losses.detach() / initial.clamp_min(1e-12)
    target = weighted.mean() * (ratio / ratio.mean()) ** alpha
    return torch.sign(weighted - target) * norms


def renormalise(weights: torch.Tensor) -> torch.Tensor:
    """Σw = K, each w > 0."""
    w = weights.clamp_min(1e-6)
    return w * (w.shape[0] / w.sum())

"""FAMO: "Fast Adaptive Multitask Optimization" (Liu et al., NeurIPS 2023), Alg. 1.

Task weights z = softmax(ξ). The model descends Σ_k c·z_k log L_k with
c = (Σ_k z_k / L_k)⁻¹, so its gradient is Σ_k (c z_k / L_k) ∇L_k — a convex
combination of the task gradients, scaled by the loss levels. After the model's step
the same batch is evaluated again and δ_k = log L_k(before) − log L_k(after) is each
task's log-loss improvement; ξ takes an Adam step (lr 0.025, weight decay 0.001) along
Jᵀδ, J the softmax Jacobian, raising the weight of the tasks that improved least.
O(1) space and time in K: no per-task gradients.
"""

from __future__ import annotations

import torch


def famo_loss(losses: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ_k c·z_k·log L_k with z = softmax(ξ) and c = (Σ z_k/L_k)⁻¹ as constants."""
    z = torch.softmax(logits.detach(), dim=0)
    c = 1.0 / (z / losses.detach().clamp_min(1e-8)).sum()
    return (c * z * torch.log(losses.clamp_min(1e-8))).sum()


def famo_logit_gradient(logits: torch.Tensor, before: torch.Tensor, after: torch.Tensor
                        ) -> torch.Tensor:
    """Jᵀδ with δ = log L(before) − log L(after): the gradient ξ descends."""
    delta = torch.log(before.clamp_min(1e-8)) - torch.log(after.clamp_min(1e-8))
    z = torch.softmax(logits.detach(), dim=0)
    return z * (delta - (z * delta).sum())  # (diag(z) − zzᵀ) δ

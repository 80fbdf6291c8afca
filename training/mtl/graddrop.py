"""GradDrop: "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
Dropout" (Chen et al., NeurIPS 2020), Eq. 1-3.

Per coordinate, the positive-sign purity P = ½(1 + Σ_k g_k / Σ_k |g_k|) ∈ [0, 1]; draw
U ~ Uniform(0, 1) and keep only the positive task gradients where P > U, only the
negative ones otherwise. Coordinates where tasks agree pass unchanged; conflicting ones
keep one sign, chosen with probability matching its share. Most meaningful on the
shared representation (grad_on=representation), as in the paper.
"""

from __future__ import annotations

import torch


def graddrop(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """grads [K, D] → masked gradients [K, D]."""
    purity = 0.5 * (1.0 + grads.sum(0) / grads.abs().sum(0).clamp_min(1e-20))
    u = torch.rand(purity.shape, generator=generator).to(purity)
    keep_positive = (purity > u).unsqueeze(0)
    mask = torch.where(keep_positive, grads > 0, grads < 0)
    return grads * mask

"""UW: "Multi-Task Learning Using Uncertainty to Weigh Losses" (Kendall et al., CVPR 2018),
Eq. 7 with s_k = log σ_k² learnt jointly with the model:
L = Σ_k ½ exp(−s_k) L_k + ½ s_k. A task with noisy (large) loss raises its s_k and
weighs less; the ½ s_k term stops every weight collapsing to 0.
"""

from __future__ import annotations

import torch


def uw_loss(losses: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """losses [K], log_var s [K] (learnable) → the scalar to minimise."""
    return (0.5 * torch.exp(-log_var) * losses + 0.5 * log_var).sum()

"""PCGrad: "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020), Alg. 1.

For each task i, for the other tasks j in random order: when g_i conflicts with g_j
(g_i·g_j < 0), project g_i onto the normal plane of g_j:
g_i ← g_i − (g_i·g_j / ‖g_j‖²) g_j. The shared gradient is Σ_i g_i (projected); the
projected rows are returned so per-task optimizers (AdaTask + PCGrad) can use them.
"""

from __future__ import annotations

import torch


def pcgrad(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """grads [K, D] → projected gradients [K, D]. Projections use the original g_j."""
    k = grads.shape[0]
    projected = grads.clone()
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i:
                continue
            dot = projected[i] @ grads[j]
            if dot < 0:
                projected[i] -= dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
    return projected

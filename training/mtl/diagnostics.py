"""Conflict diagnostics of the per-task gradients (sampled every N steps).

Pairwise cosine cos(g_i, g_j) (direction conflict when < 0) and magnitude similarity
2‖g_i‖‖g_j‖/(‖g_i‖² + ‖g_j‖²) ∈ (0, 1] (1: equal norms; small: one task dominates).
"""

from __future__ import annotations

import numpy as np
import torch

from mtlrec.training.mtl.gradients import pairwise_similarity


def gradient_similarity(grads: torch.Tensor) -> dict[str, list]:
    cos, magnitude = pairwise_similarity(grads)
    return {"cosine": cos.double().cpu().tolist(), "magnitude": magnitude.double().cpu().tolist(),
            "norms": grads.norm(dim=1).double().cpu().tolist()}


def histogram(values: torch.Tensor, bins: int = 20, low: float | None = None,
              high: float | None = None) -> dict[str, list[float]]:
    v = values.detach().double().cpu().numpy().ravel()
    counts, edges = np.histogram(v, bins=bins, range=None if low is None else (low, high))
    return {"counts": counts.tolist(), "edges": edges.tolist()}

"""Selective task group updates: "Selective Task Group Updates for Multi-Task
Optimization" (Jeong & Yoon), Sec. 3-4 (proximal inter-task affinity, Eq. 4-6, and the
grouping of Sec. 4; ALGORITHMS.md fixes the details).

On each batch the groups are updated one after another. The update of group G changes
every task's loss on the same batch; x_t = 1 − L_t(after)/L_t(before), divided by |G|,
is credited to every source s ∈ G: A[s, t] ← (1 − β)A[s, t] + βx. Inside the group (t ∈ G)
both losses moved together, so: s = t keeps x_t only when ≥ 0; x_s, x_t of the same sign
give x_t; otherwise −max(x_s, x_t). The change is credited to the group that caused it
(the released code credits the group about to be updated: off by one).

Regrouping clusters the tasks by affinity propagation (scikit-learn) on the affinity
with each column normalised by its diagonal and symmetrised, preference = median; when it
does not converge, or no pair of tasks differs from another, the previous groups stay.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.cluster import AffinityPropagation
from sklearn.exceptions import ConvergenceWarning


def credit(affinity: torch.Tensor, group: list[int], before: torch.Tensor,
           after: torch.Tensor, beta: float) -> torch.Tensor:
    """Fold the loss change caused by updating `group` into A [K, K] (returns a new A)."""
    x = (1.0 - after / before.clamp_min(1e-12)) / len(group)
    out = affinity.clone()
    for s in group:
        for t in range(affinity.shape[0]):
            value = _within_group(x[s], x[t], s == t) if t in group else x[t]
            if value is not None:
                out[s, t] = (1.0 - beta) * affinity[s, t] + beta * value
    return out


def _within_group(x_s: torch.Tensor, x_t: torch.Tensor, same: bool) -> torch.Tensor | None:
    if same:
        return x_t if x_t >= 0 else None
    if (x_s >= 0) == (x_t >= 0):
        return x_t
    return -torch.maximum(x_s, x_t)


def regroup(affinity: torch.Tensor, previous: list[list[int]], seed: int = 0) -> list[list[int]]:
    """Task groups by affinity propagation; `previous` when it does not converge."""
    a = affinity.double().cpu().numpy()
    diag = np.diag(a).copy()
    diag[np.abs(diag) < 1e-12] = 1e-12
    normalised = a / diag[None, :]
    similarity = 0.5 * (normalised + normalised.T)
    off_diagonal = similarity[~np.eye(len(a), dtype=bool)]
    if off_diagonal.size == 0 or np.ptp(off_diagonal) < 1e-12:
        return previous  # no preference between any two tasks: nothing to cluster
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            ap = AffinityPropagation(affinity="precomputed", preference=np.median(similarity),
                                     random_state=seed).fit(similarity)
        except ConvergenceWarning:
            return previous
    labels = ap.labels_
    if labels is None or (labels < 0).any():
        return previous
    return [np.flatnonzero(labels == c).tolist() for c in np.unique(labels)]

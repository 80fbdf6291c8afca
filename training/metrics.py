"""Offline metrics: exact AUC with ties, logloss, calibration, per-group AUC, Δm%.

Vectorised numpy; no Python loop over rows.
"""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Exact ROC AUC (Mann-Whitney U): tied scores share their average rank; with
    `weights`, each (positive, negative) pair counts the product of their weights.

    NaN when only one class is present (or carries weight).
    """
    y = np.asarray(labels, dtype=np.float64).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    if weights is not None:
        return _weighted_auc(y, s, np.asarray(weights, dtype=np.float64).ravel())
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    first = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], s.size]
    average_rank = (starts + ends + 1) / 2.0  # 1-based ranks starts+1 .. ends
    ranks = average_rank[np.cumsum(first) - 1]
    pos_rank_sum = ranks[y[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _weighted_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    """Σ over pairs of w_pos·w_neg·([s_pos > s_neg] + ½[s_pos = s_neg]) / (W_pos·W_neg),
    by groups of tied scores: a positive beats the negative weight of every lower group
    and half of its own group's."""
    w_pos, w_neg = w * y, w * ~y
    if w_pos.sum() <= 0 or w_neg.sum() <= 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    group = np.cumsum(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]) - 1
    neg_in_group = np.bincount(group, weights=w_neg[order])
    pos_in_group = np.bincount(group, weights=w_pos[order])
    neg_below = np.cumsum(neg_in_group) - neg_in_group
    wins = (pos_in_group * (neg_below + 0.5 * neg_in_group)).sum()
    return float(wins / (w_pos.sum() * w_neg.sum()))


def weighted_mean(x: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The mean of x, weighted when `weights` is given (NaN when they sum to 0)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if weights is None:
        return float(x.mean()) if x.size else float("nan")
    w = np.asarray(weights, dtype=np.float64).ravel()
    total = w.sum()
    return float((w * x).sum() / total) if total > 0 else float("nan")


def logloss_from_logits(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean binary cross-entropy (weighted with `weights`), computed stably from logits:
    softplus(z) − y·z."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    return weighted_mean(np.logaddexp(0.0, z) - y * z, weights)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def binary_metrics(y: np.ndarray, z: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """auc, logloss, mean prediction, base rate, calibration (= mean p / base rate) of
    labels y and logits z (weighted with `weights`)."""
    p_mean, base = weighted_mean(sigmoid(z), weights), weighted_mean(y, weights)
    return {"auc": auc(y, z, weights), "logloss": logloss_from_logits(y, z, weights),
            "mean_prediction": p_mean, "base_rate": base,
            "calibration": p_mean / base if base > 0 else float("nan")}


def group_auc(labels: np.ndarray, logits: np.ndarray, groups: np.ndarray, tasks: list[str]
              ) -> dict[str, dict[str, float]]:
    """AUC per task within each group (e.g. country), on the rows with the task's label."""
    out: dict[str, dict[str, float]] = {}
    present = np.isfinite(labels)
    for g in np.unique(groups):
        mask = groups == g
        out[str(g)] = {name: auc(labels[mask & present[:, k], k], logits[mask & present[:, k], k])
                       for k, name in enumerate(tasks)}
    return out


def delta_m(metrics: dict[str, float], baseline: dict[str, float],
            lower_is_better: frozenset[str] = frozenset()) -> float:
    """Δm% (DTJS paper Eq. 3-12): mean relative gain over the baseline, in percent.

    (1/K) Σ_k (−1)^δ_k (M_k − M_b,k) / M_b,k · 100, δ_k = 1 when lower is better.
    """
    terms = []
    for name, base in baseline.items():
        sign = -1.0 if name in lower_is_better else 1.0
        terms.append(sign * (metrics[name] - base) / base)
    return 100.0 * float(np.mean(terms))

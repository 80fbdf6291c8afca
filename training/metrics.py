"""Offline metrics: exact AUC with ties, logloss, calibration, per-group AUC, Δm%.

Vectorised numpy; no Python loop over rows.
"""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U): tied scores share their average rank.

    NaN when only one class is present.
    """
    y = np.asarray(labels, dtype=np.float64).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
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


def logloss_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy, computed stably from logits: softplus(z) − y·z."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def task_metrics(labels: np.ndarray, logits: np.ndarray, tasks: list[str]) -> dict[str, dict]:
    """Per task: auc, logloss, mean prediction, base rate, calibration (= mean p / base rate)."""
    out = {}
    for k, name in enumerate(tasks):
        y, z = labels[:, k], logits[:, k]
        p_mean, base = float(sigmoid(z).mean()), float(y.mean())
        out[name] = {
            "auc": auc(y, z), "logloss": logloss_from_logits(y, z),
            "mean_prediction": p_mean, "base_rate": base,
            "calibration": p_mean / base if base > 0 else float("nan"),
        }
    return out


def group_auc(labels: np.ndarray, logits: np.ndarray, groups: np.ndarray, tasks: list[str]
              ) -> dict[str, dict[str, float]]:
    """AUC per task within each group (e.g. country)."""
    out: dict[str, dict[str, float]] = {}
    for g in np.unique(groups):
        mask = groups == g
        out[str(g)] = {name: auc(labels[mask, k], logits[mask, k]) for k, name in enumerate(tasks)}
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

"""SuperLoss, DTJS's intra-task (per-sample) scheduling: "SuperLoss: A Generic Loss for
Robust Curriculum Learning" (Castells et al., NeurIPS 2020), Eq. 2-4, as used by DTJS.

Per task, with per-sample losses l_i, a running threshold τ (first batch mean, then
τ ← 0.9τ + 0.1·mean(l)) and λ > 0: β_i = (l_i − τ)/λ and
σ_i = exp(−W₀(½·max(β_i, −2/e))), the closed-form minimiser of (l_i − τ)σ + λ(log σ)².
σ ∈ (0, e]: σ = e when β ≤ −2/e (easy samples weigh most), σ → 0 as β → ∞ (hard
samples are held back early on). σ is a constant (no gradient); the task loss is
mean_i[(l_i − τ)σ_i + λ(log σ_i)²]. W₀ runs on the losses' device (Halley's method),
not through scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from mtlrec.training.mtl.collective import batch_mean
from mtlrec.training.mtl.parts import TaskState, Transform

BRANCH_POINT = -1.0 / math.e


def lambert_w0(x: torch.Tensor, iterations: int = 8) -> torch.Tensor:
    """Principal branch W₀(x) for x ≥ −1/e, solving w·eʷ = x by Halley's iteration.

    Start: the branch-point series w ≈ −1 + p − p²/3 (p = √(2(ex + 1))) near −1/e,
    log1p(x) elsewhere, log(x) − log(log(x)) for large x; Halley converges cubically.
    """
    x = x.clamp_min(BRANCH_POINT)
    p = torch.sqrt((2.0 * (math.e * x + 1.0)).clamp_min(0.0))
    near = -1.0 + p - p * p / 3.0
    big = torch.log(x.clamp_min(3.0)) - torch.log(torch.log(x.clamp_min(3.0)))
    w = torch.where(x < -0.25, near, torch.where(x > 3.0, big, torch.log1p(x)))
    for _ in range(iterations):
        ew = torch.exp(w)
        f = w * ew - x
        wp1 = w + 1.0
        denom = ew * wp1 - (w + 2.0) * f / (2.0 * wp1).clamp_min(1e-12)
        step = torch.where(wp1.abs() < 1e-9, torch.zeros_like(w), f / denom)
        w = w - step
    return w


def superloss_sigma(losses: torch.Tensor, tau: torch.Tensor | float, lam: float) -> torch.Tensor:
    """σ_i = exp(−W₀(½ max((l_i − τ)/λ, −2/e))) (no gradient)."""
    with torch.no_grad():
        beta = (losses - tau) / lam
        return torch.exp(-lambert_w0(0.5 * beta.clamp_min(2.0 * BRANCH_POINT)))


def superloss(losses: torch.Tensor, tau: torch.Tensor, lam: torch.Tensor,
              weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses [B, K], thresholds τ [K], λ [K] (rows weighted by `weights`) →
    (task losses [K], σ [B, K])."""
    sigma = superloss_sigma(losses, tau, lam)
    task = batch_mean((losses - tau) * sigma + lam * torch.log(sigma) ** 2, weights)
    return task, sigma


def update_threshold(tau: torch.Tensor | None, losses: torch.Tensor, momentum: float = 0.9,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """τ ← first batch mean, then 0.9 τ + 0.1 mean(l) (per task)."""
    mean = batch_mean(losses.detach(), weights)
    return mean if tau is None else momentum * tau + (1.0 - momentum) * mean


class SuperLoss(Transform):
    """State: each task's threshold τ. A task learns τ only from the batches it is
    updated on; a task not yet seen uses this batch's mean without keeping it."""

    def __init__(self, lam: float = 1.0, momentum: float = 0.9) -> None:
        self.lam, self.momentum = lam, momentum

    def apply(self, losses: torch.Tensor, state: TaskState, task_ids: Sequence[int], train: bool,
              weights: torch.Tensor | None = None) -> tuple[torch.Tensor, TaskState, dict[str, Any]]:
        mean = batch_mean(losses.detach(), weights)
        if train:
            state = dict(state) | {t: {"tau": update_threshold(
                state[t]["tau"] if t in state else None, losses[:, t:t + 1], self.momentum,
                None if weights is None else weights[:, t:t + 1])[0]} for t in task_ids}
        tau = torch.stack([state[t]["tau"].to(mean) if t in state else mean[t]
                           for t in range(losses.shape[1])])
        task, sigma = superloss(losses, tau, torch.full_like(tau, self.lam), weights)
        return task, state, {"superloss_sigma": sigma}

"""DB-MTL gradient balancing: "Dual-Balancing for Multi-Task Learning" (Lin et al.),
Sec. 3.2, Eq. (1) with α = max_t ‖ĝ_t‖ and Algorithm 1.

With the log transform applied to the losses (log L_k, the loss-scale half of
DB-MTL), keep an EMA of each task's gradient, ĝ_k ← β_t ĝ_k + (1 − β_t) g_k with
β_t = β / t^σ, and return (max_j ‖ĝ_j‖) · Σ_k ĝ_k / (‖ĝ_k‖ + 1e-8): every task
contributes with the same norm, the largest one. Defaults β = 0.9, σ = 0 (the
reference library's; the paper's best is σ = 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DBMTLState:
    ema: torch.Tensor | None = None  # [K, D]
    step: int = 0


def dbmtl(grads: torch.Tensor, state: DBMTLState, beta: float = 0.9, sigma: float = 0.0
          ) -> torch.Tensor:
    """grads [K, D] (of log-losses) → balanced task gradients [K, D]; updates `state`."""
    state.step += 1
    beta_t = beta / state.step**sigma
    if state.ema is None:
        state.ema = torch.zeros_like(grads)
    state.ema = beta_t * state.ema + (1.0 - beta_t) * grads
    norms = state.ema.norm(dim=1)
    return norms.max() * state.ema / (norms + 1e-8).unsqueeze(1)

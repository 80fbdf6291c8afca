"""DB-MTL gradient balancing: "Dual-Balancing for Multi-Task Learning" (Lin et al.),
Sec. 3.2, Eq. (1) with α = max_t ‖ĝ_t‖ and Algorithm 1.

With the log transform applied to the losses (log L_k, the loss-scale half of
DB-MTL), keep an EMA of each task's gradient, ĝ_k ← β_t ĝ_k + (1 − β_t) g_k with
β_t = β / t^σ (t: the task's own update count), and return
(max_j ‖ĝ_j‖) · Σ_k ĝ_k / (‖ĝ_k‖ + 1e-8): every task contributes with the same norm,
the largest one. Defaults β = 0.9, σ = 0.5, i.e. β_t = 0.9/√t: the paper's best setting
in its own ablation (Table 8, Δp +1.07), where the reference library's constant β = 0.9
(σ = 0) is the worst (Δp −2.74); σ = 0 remains available.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrec.training.mtl.parts import Aggregated, Aggregator, Context, TaskState


def dbmtl(grads: torch.Tensor, ema: torch.Tensor, beta_t: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """grads, ema [K, D] (of log-losses), beta_t [K] → (balanced rows [K, D], new ema)."""
    ema = beta_t.unsqueeze(1) * ema + (1.0 - beta_t).unsqueeze(1) * grads
    norms = ema.norm(dim=1)
    return norms.max() * ema / (norms + 1e-8).unsqueeze(1), ema


class DBMTL(Aggregator):
    spans_batches = True

    def __init__(self, beta: float = 0.9, sigma: float = 0.5) -> None:
        self.beta, self.sigma = beta, sigma

    def apply(self, grads: torch.Tensor, losses: torch.Tensor, state: TaskState,
              task_ids: Sequence[int], ctx: Context) -> Aggregated:
        entries = [state.get(t, {"ema": torch.zeros_like(grads[0]), "updates": 0}) for t in task_ids]
        updates = torch.tensor([e["updates"] + 1 for e in entries], dtype=grads.dtype)
        beta_t = (self.beta / updates**self.sigma).to(grads.device)
        rows, ema = dbmtl(grads, torch.stack([e["ema"] for e in entries]), beta_t)
        new = dict(state) | {t: {"ema": ema[i], "updates": e["updates"] + 1}
                             for i, (t, e) in enumerate(zip(task_ids, entries))}
        return Aggregated(rows, torch.ones(len(task_ids)), new)

"""Nash-MTL: "Multi-Task Learning as a Bargaining Game" (Navon et al., ICML 2022),
Sec. 3, Eq. 3.

The Nash bargaining update is d = Σ_k α_k g_k with α > 0 solving (G Gᵀ) α = 1/α
(elementwise): every task's directional derivative g_kᵀd = 1/α_k, so no task is starved
and the solution is scale invariant (‖d‖² = K). (GGᵀ)α − 1/α is the gradient of the
convex F(α) = ½ αᵀGGᵀα − Σ_k log α_k, so α is F's minimiser: one convex problem, solved
with cvxpy (the paper approximates the same point with a sequence of convex programs).
The K×K Gram matrix is scaled by its norm for the solver and α rescaled back (α scales
as 1/√s when GGᵀ scales by s).
"""

from __future__ import annotations

import numpy as np
import torch


def nash_weights(grads: torch.Tensor) -> torch.Tensor:
    """grads [K, D] → α [K] with (GGᵀ)α = 1/α."""
    # deferred on purpose: only this method needs cvxpy, which the GPU machine lacks
    import cvxpy as cp

    gram = (grads @ grads.t()).double().cpu().numpy()
    scale = float(np.linalg.norm(gram)) or 1.0
    eigval, eigvec = np.linalg.eigh(gram / scale)
    root = eigvec * np.sqrt(np.clip(eigval, 0.0, None))  # gram/scale = root rootᵀ
    alpha = cp.Variable(grads.shape[0], pos=True)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(root.T @ alpha) - cp.sum(cp.log(alpha))))
    problem.solve()
    if alpha.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise FloatingPointError(f"Nash-MTL: the solver returned {problem.status}")
    return torch.as_tensor(alpha.value / np.sqrt(scale), dtype=grads.dtype, device=grads.device)


def nash_mtl(grads: torch.Tensor) -> torch.Tensor:
    """grads [K, D] → rows α_k g_k [K, D]."""
    return nash_weights(grads).unsqueeze(1) * grads

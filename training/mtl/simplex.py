"""Small optimisation problems over the probability simplex, solved with scipy (SLSQP).

The gradient methods that solve for task weights (MGDA, CAGrad) only need the K×K Gram
matrix M = G Gᵀ of the per-task gradients, so the problem size is K, not D.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize


def minimize_on_simplex(objective: Callable[[np.ndarray], float], k: int) -> np.ndarray:
    """argmin_{w ≥ 0, Σw = 1} objective(w), started from uniform weights."""
    result = minimize(
        objective, np.full(k, 1.0 / k), method="SLSQP", bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
        options={"ftol": 1e-12, "maxiter": 200},
    )
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()

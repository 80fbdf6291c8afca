"""The parity check: reference scores vs onnxruntime's on the same inputs.

Run at export (reference = PyTorch) and again whenever a server loads a bundle
(reference = the PyTorch scores stored in the bundle), so a file that was altered or
mis-exported is refused before it serves a request. No torch here.
"""

from __future__ import annotations

import numpy as np


def compare(reference: np.ndarray, actual: np.ndarray, tasks: list[str], tolerance: float) -> dict:
    """Max difference overall and per score column (`tasks`): absolute for answers within
    [−1, 1] (probabilities), relative to the reference beyond (a value in its units, e.g.
    seconds of dwell time, carries float32's relative precision); `passed` when it is
    within tolerance."""
    if reference.shape != actual.shape:
        return {"rows": int(reference.shape[0]), "passed": False, "tolerance": tolerance,
                "error": f"output shape {list(actual.shape)} != reference {list(reference.shape)}"}
    expected = reference.astype(np.float64)
    diff = np.abs(expected - actual.astype(np.float64)) / np.maximum(1.0, np.abs(expected))
    finite = bool(np.isfinite(actual).all())
    per_task = {t: float(diff[:, k].max()) if len(diff) else 0.0 for k, t in enumerate(tasks)}
    worst = max(per_task.values(), default=0.0)
    return {"rows": int(reference.shape[0]), "max_abs_diff": worst, "per_task": per_task,
            "tolerance": tolerance, "passed": finite and worst <= tolerance}

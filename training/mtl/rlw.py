"""RLW: "Reasonable Effectiveness of Random Weighting" (Lin et al., TMLR 2022).

Each step draws task weights λ = softmax(z), z ~ N(0, I_K), and minimises Σ_k λ_k L_k.
"""

from __future__ import annotations

import torch


def rlw_weights(k: int, generator: torch.Generator) -> torch.Tensor:
    return torch.softmax(torch.randn(k, generator=generator), dim=0)

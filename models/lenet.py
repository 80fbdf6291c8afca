"""LeNet-style shared encoder with one classifier head per task, for MultiMNIST.

The model of Sener & Koltun (2018), "Multi-Task Learning as Multi-Objective
Optimization" (NeurIPS), also LibMTL's MultiMNIST setting: a shared encoder
conv(1→10, 5) → maxpool 2 → ReLU → conv(10→20, 5) → maxpool 2 → ReLU → fc(320→50)
→ ReLU (the final ReLU as in their MultiLeNetR) and per task fc(50→50) → ReLU →
fc(50→10).
Their dropout layers are left out: the benchmark compares MTL methods, which all see
the same regularisation either way.

The interface is the one the trainer's MTL methods use on the rankers:
`shared_parameters()` (θ, the encoder) and `task_parameters(k)` (ψ_k, head k), and
`representation(x)` / `heads(z)` so gradient methods can work on the shared
representation z instead of θ (`encode` / `decode` are the same split in the list form
the trainer's grad_on=representation path uses on the rankers).
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrec.models.multihead import SharedEncoderHeads

REPRESENTATION_DIM = 50


class MultiLeNet(SharedEncoderHeads):
    """x [B, 1, 28, 28] float (e.g. pixels / 255) → logits [B, K, n_classes].

    For MultiMNIST K = 2 (left digit, right digit) and n_classes = 10.
    """

    def __init__(self, n_tasks: int = 2, n_classes: int = 10) -> None:
        super().__init__()
        self.n_tasks = n_tasks
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(320, REPRESENTATION_DIM), nn.ReLU(),
        )
        self.task_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(REPRESENTATION_DIM, 50), nn.ReLU(), nn.Linear(50, n_classes))
            for _ in range(n_tasks)
        )

    def _stack(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Logits [B, K, n_classes]."""
        return torch.stack(outputs, dim=1)

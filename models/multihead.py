"""A shared encoder with one head per task — the interface the MTL step uses on every
model that is not a ranker (MultiLeNet, MPNN).

`representation(x)` is the shared z, `heads(z)` stacks the task outputs; `encode` /
`decode` are the same split as lists (the step's grad_on=representation path);
`shared_parameters()` is θ (the encoder), `task_parameters(k)` is ψ_k (head k).
Subclasses set `encoder`, `task_heads` and how head outputs stack (`_stack`).
"""

from __future__ import annotations

import torch
from torch import nn


class SharedEncoderHeads(nn.Module):
    encoder: nn.Module
    task_heads: nn.ModuleList

    def _stack(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def representation(self, x) -> torch.Tensor:
        return self.encoder(x)

    def heads(self, z: torch.Tensor) -> torch.Tensor:
        return self._stack([head(z) for head in self.task_heads])

    def forward(self, x) -> torch.Tensor:
        return self.heads(self.representation(x))

    def encode(self, x) -> list[torch.Tensor]:
        return [self.representation(x)]

    def decode(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.heads(parts[0])

    def shared_parameters(self, include_embeddings: bool = False) -> list[nn.Parameter]:
        """θ: the encoder (no embedding tables; the flag is for interface parity)."""
        return list(self.encoder.parameters())

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        return list(self.task_heads[k].parameters())

"""What a ranker's raw outputs mean to the one who asked: each task's answer.

The ranker emits logits and standardised values side by side ([B, W], `MultiTaskRanker`);
`TaskAnswers` turns them into answers of the same layout, as exported to ONNX and served:
a binary task's probability σ(z + offset) (the offset log r undoes negative downsampling
at rate r), a regression task's value in its original units (v·std + mean, then expm1
when it was learnt as log1p), a multiclass task's class probabilities (softmax).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Answer:
    """One task: kind "binary" | "regression" | "multiclass", its output width and the
    constants of its answer."""

    kind: str
    width: int = 1
    logit_offset: float = 0.0
    mean: float = 0.0
    std: float = 1.0
    log1p: bool = False


class TaskAnswers(nn.Module):
    """outputs [B, W] → answers [B, W] (see the module docstring)."""

    def __init__(self, tasks: Sequence[Answer]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.all_sigmoid = all(t.kind == "binary" and t.logit_offset == 0.0 for t in self.tasks)

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.all_sigmoid:  # every model before task kinds: one kernel
            return torch.sigmoid(outputs)
        parts, start = [], 0
        for t in self.tasks:
            z = outputs[:, start:start + t.width]
            start += t.width
            if t.kind == "binary":
                parts.append(torch.sigmoid(z + t.logit_offset))
            elif t.kind == "regression":
                v = z * t.std + t.mean
                parts.append(torch.expm1(v) if t.log1p else v)
            else:
                parts.append(torch.softmax(z, dim=1))
        return torch.cat(parts, dim=1)

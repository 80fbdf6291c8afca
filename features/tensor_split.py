"""A split held as one input tensor and one label tensor (MultiMNIST's images), with the
batch interface the trainer uses on every split (`features.batches.BatchLoader`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TensorBatch:
    x: torch.Tensor
    labels: torch.Tensor
    weights: None = None  # every row weighs 1 (the trainer's batch interface)

    @property
    def inputs(self) -> tuple[torch.Tensor]:
        return (self.x,)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TensorBatch":
        return TensorBatch(self.x.to(device, non_blocking=non_blocking),
                           self.labels.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.x.shape[0]


class TensorSplit:
    """Rows of `x` [N, …] with their `labels` [N, K]; every row weighs 1."""

    weights = None

    def __init__(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        if x.shape[0] != labels.shape[0]:
            raise ValueError(f"{x.shape[0]} inputs but {labels.shape[0]} label rows")
        self.x, self.labels = x, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, index: torch.Tensor) -> TensorBatch:
        return TensorBatch(self.x.index_select(0, index), self.labels.index_select(0, index))

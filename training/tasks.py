"""What kind of tasks a model solves: its per-sample loss, its test metrics, and the
validation score that early stopping and Δm% follow.

Three kinds cover the targets of this project:
- `BinaryTasks`: click / conversion labels (census, AliExpress, synthetic logs), log loss,
  AUC (higher is better);
- `ClassTasks`: one multi-class label per task (MultiMNIST's left and right digit),
  cross-entropy, accuracy (higher is better);
- `RegressionTasks`: one standardised real target per task (QM9's 11 properties), MSE
  (the loss of Gilmer et al. 2017 and of the MTL papers' QM9 setting), MAE in the
  target's original units (lower is better).

The trainer and the MTL step see only `loss` ([B, K] per-sample losses); metrics are
numpy, computed on a whole split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from mtlrec.features.errors import DataError
from mtlrec.training.metrics import task_metrics

log = logging.getLogger(__name__)


class TaskKind(Protocol):
    metric: str  #: the per-task metric of the results tables and of Δm%
    select: str  #: the per-task metric whose mean over tasks selects the best epoch
    higher_is_better: bool  #: for both

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-task losses [B, K]."""

    def metrics(self, labels: np.ndarray, outputs: np.ndarray, tasks: list[str]) -> dict[str, dict]:
        """Per task name: {metric name: value} on a whole split."""


def validation_score(kind: TaskKind, metrics: dict[str, dict], tasks: list[str]) -> float:
    """The mean over tasks of `kind.select`, over the tasks where it is defined: a task whose
    validation labels are all one class has no AUC, and a NaN mean would leave every epoch
    unselected (training would return its initial weights). Warns naming the tasks left
    out; raises when no task is left."""
    values = {t: metrics[t][kind.select] for t in tasks}
    undefined = [t for t, v in values.items() if not np.isfinite(v)]
    if len(undefined) == len(tasks):
        raise DataError(f"no task has a defined validation {kind.select} ({', '.join(undefined)}: e.g. "
                        "validation labels all of one class), so no epoch can be selected: use a "
                        "larger validation split or another split of the data")
    if undefined:
        log.warning("validation %s is undefined for task(s) %s (e.g. labels all of one class): the "
                    "best epoch is selected on %s", kind.select, ", ".join(undefined),
                    ", ".join(t for t in tasks if t not in undefined))
    return float(np.mean([v for v in values.values() if np.isfinite(v)]))


def validation_key(kind: TaskKind) -> str:
    """The validation score's name in the training history and MLflow, e.g. `valid_mean_auc`."""
    return f"valid_mean_{kind.select}"


class BinaryTasks:
    metric, select, higher_is_better = "auc", "auc", True

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(outputs, labels, reduction="none")

    def metrics(self, labels: np.ndarray, outputs: np.ndarray, tasks: list[str]) -> dict[str, dict]:
        return task_metrics(labels, outputs, tasks)


class ClassTasks:
    """outputs: logits [B, K, C]; labels: class ids [B, K]."""

    metric, select, higher_is_better = "accuracy", "accuracy", True

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.transpose(1, 2), labels, reduction="none")

    def metrics(self, labels: np.ndarray, outputs: np.ndarray, tasks: list[str]) -> dict[str, dict]:
        out = {}
        for k, name in enumerate(tasks):
            logits = torch.from_numpy(outputs[:, k])
            target = torch.from_numpy(labels[:, k]).long()
            out[name] = {
                "accuracy": float((logits.argmax(1) == target).double().mean()),
                "cross_entropy": float(nn.functional.cross_entropy(logits.double(), target)),
            }
        return out


@dataclass(frozen=True)
class RegressionTasks:
    """outputs and labels: standardised targets [B, K]; `scale` and `unit` give each task's
    standard deviation and unit, so MAE is reported in the original units (QM9: the units
    of the papers' tables). The best epoch is the one with the lowest MAE in standard
    deviations averaged over tasks, so that no target weighs more for its unit."""

    scale: dict[str, float]
    unit: dict[str, str]
    metric: ClassVar[str] = "mae"
    select: ClassVar[str] = "mae_std_units"
    higher_is_better: ClassVar[bool] = False

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(outputs, labels, reduction="none")

    def metrics(self, labels: np.ndarray, outputs: np.ndarray, tasks: list[str]) -> dict[str, dict]:
        out = {}
        for k, name in enumerate(tasks):
            err = np.abs(outputs[:, k].astype(np.float64) - labels[:, k])
            out[name] = {"mae": float(err.mean() * self.scale[name]), "mae_std_units": float(err.mean())}
        return out

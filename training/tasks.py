"""What the tasks of a model are: each task's per-sample loss, its metrics, and the
validation score that early stopping and Δm% follow. One model may mix kinds.

A `TaskSet` holds one `Task` per task, in label order:
- `BinaryTask`: click / conversion labels, log loss on one logit; AUC, log loss,
  calibration (higher AUC is better). A negative-downsampled task is trained on its raw
  logit and scored on logit + log r (`logit_offset`), the full data's probability;
- `RegressionTask`: one value in standardised units, MSE (the loss of Gilmer et al. 2017
  and of the MTL papers' QM9 setting) or Huber; MAE and RMSE in the target's original
  units, MAE in standard deviations (lower is better);
- `MulticlassTask`: one logit per class, cross-entropy; accuracy, macro-F1 (higher is
  better). MultiMNIST's digits are two of them.

The model's outputs are the tasks' outputs side by side ([B, Σ widths]; a [B, K, C]
output of K tasks of C classes is the same layout). A label may be missing (NaN): the
row is skipped by that task only, in its loss (`row_weights` is 0 there; the step
normalises each task's loss by its labelled weight) and in its metrics. Sample weights
[B, K] weigh the loss and the metrics (weighted AUC and log loss).

The trainer and the MTL step see only `loss` ([B, K] per-sample losses and their
weights); metrics are numpy, computed on a whole split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from mtlrec.features.errors import DataError
from mtlrec.features.folder import TaskInfo
from mtlrec.training.metrics import binary_metrics, weighted_mean

log = logging.getLogger(__name__)
SKILL = "skill"  # the selection metric of a set of mixed kinds (see `TaskSet.select`)


@dataclass(frozen=True)
class BinaryTask:
    name: str
    logit_offset: float = 0.0  # log r of negative downsampling (0: none)
    width: ClassVar[int] = 1
    metric: ClassVar[str] = "auc"
    select: ClassVar[str] = "auc"
    higher_is_better: ClassVar[bool] = True

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(outputs, labels, reduction="none")

    def metrics(self, y: np.ndarray, out: np.ndarray, w: np.ndarray | None) -> dict[str, float]:
        return binary_metrics(y, out.reshape(-1).astype(np.float64) + self.logit_offset, w)

    def skill(self, metrics: dict[str, float]) -> float:
        return metrics["auc"]


@dataclass(frozen=True)
class RegressionTask:
    """Outputs and labels in standardised units: original = (value·std + mean), expm1'd
    when the target was learnt as log1p, times `unit_scale` (QM9: eV → meV)."""

    name: str
    mean: float = 0.0
    std: float = 1.0
    log1p: bool = False
    loss_name: str = "mse"
    huber_delta: float = 1.0
    unit: str = ""
    unit_scale: float = 1.0
    width: ClassVar[int] = 1
    metric: ClassVar[str] = "mae"
    select: ClassVar[str] = "mae_std_units"
    higher_is_better: ClassVar[bool] = False

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "huber":
            return nn.functional.huber_loss(outputs, labels, reduction="none", delta=self.huber_delta)
        return nn.functional.mse_loss(outputs, labels, reduction="none")

    def original(self, standardised: np.ndarray) -> np.ndarray:
        v = np.asarray(standardised, dtype=np.float64) * self.std + self.mean
        return (np.expm1(v) if self.log1p else v) * self.unit_scale

    def metrics(self, y: np.ndarray, out: np.ndarray, w: np.ndarray | None) -> dict[str, float]:
        out = out.reshape(-1).astype(np.float64)
        y = y.astype(np.float64)
        err = np.abs(self.original(out) - self.original(y))
        std_err = np.abs(out - y)
        variance = weighted_mean((y - weighted_mean(y, w)) ** 2, w)
        return {"mae": weighted_mean(err, w), "rmse": float(np.sqrt(weighted_mean(err ** 2, w))),
                "mae_std_units": weighted_mean(std_err, w),
                "r2": 1.0 - weighted_mean(std_err ** 2, w) / variance if variance > 0 else float("nan")}

    def skill(self, metrics: dict[str, float]) -> float:
        return metrics["r2"]


@dataclass(frozen=True)
class MulticlassTask:
    name: str
    classes: tuple[str, ...]
    metric: ClassVar[str] = "accuracy"
    select: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    @property
    def width(self) -> int:
        return len(self.classes)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, labels.long(), reduction="none")

    def metrics(self, y: np.ndarray, out: np.ndarray, w: np.ndarray | None) -> dict[str, float]:
        logits = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float64))
        target = torch.from_numpy(y.astype(np.int64))
        predicted = logits.argmax(1).numpy()
        ce = nn.functional.cross_entropy(logits, target, reduction="none").numpy()
        f1 = []
        for c in range(self.width):
            tp = weighted_mean((predicted == c) & (y == c), w)
            fp = weighted_mean((predicted == c) & (y != c), w)
            fn = weighted_mean((predicted != c) & (y == c), w)
            if tp + fp + fn > 0:  # a class neither present nor predicted does not count
                f1.append(2 * tp / (2 * tp + fp + fn))
        return {"accuracy": weighted_mean(predicted == y, w), "cross_entropy": weighted_mean(ce, w),
                "macro_f1": float(np.mean(f1)) if f1 else float("nan")}

    def skill(self, metrics: dict[str, float]) -> float:
        return metrics["accuracy"]


Task = BinaryTask | RegressionTask | MulticlassTask


def task_from_info(info: TaskInfo) -> Task:
    """The task a features folder describes (`features.folder.TaskInfo`)."""
    if info.kind == "regression":
        return RegressionTask(info.name, info.mean, info.std, info.log1p, info.loss, info.huber_delta, info.unit)
    if info.kind == "multiclass":
        return MulticlassTask(info.name, tuple(info.classes or ()))
    return BinaryTask(info.name, info.logit_offset)


@dataclass(frozen=True)
class TaskSet:
    """The tasks of one model (see the module docstring). `may_skip`: some label can be
    missing (optional or masked), so losses carry row weights even without sample weights."""

    tasks: tuple[Task, ...]
    may_skip: bool = False
    _slices: list[slice] = field(init=False, repr=False, compare=False)
    _one_kernel: bool = field(init=False, repr=False, compare=False)  # one loss call for all tasks

    def __post_init__(self) -> None:
        edges = np.cumsum([0] + [t.width for t in self.tasks]).tolist()
        object.__setattr__(self, "_slices", [slice(a, b) for a, b in zip(edges[:-1], edges[1:])])
        kinds = {type(t) for t in self.tasks}
        object.__setattr__(self, "_one_kernel", kinds == {BinaryTask} or (
            kinds == {RegressionTask} and all(t.loss_name == "mse" for t in self.tasks)))

    @classmethod
    def of(cls, infos: Sequence[TaskInfo]) -> "TaskSet":
        return cls(tuple(task_from_info(i) for i in infos), any(i.may_be_missing for i in infos))

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def subset(self, index: Sequence[int]) -> "TaskSet":
        return TaskSet(tuple(self.tasks[k] for k in index), self.may_skip)

    @property
    def select(self) -> str:
        """The per-task metric whose mean selects the best epoch: the tasks' own when they
        share one (mean AUC, accuracy or MAE in std units), else `skill` (AUC, accuracy,
        R² — each higher-is-better with 1 perfect, so a mean over kinds means something)."""
        kinds = {t.select for t in self.tasks}
        return kinds.pop() if len(kinds) == 1 else SKILL

    @property
    def higher_is_better(self) -> bool:
        return self.tasks[0].higher_is_better if self.select != SKILL else True

    @property
    def lower_is_better(self) -> frozenset[str]:
        """Tasks whose headline metric (`Task.metric`) is better lower: Δm%'s signs."""
        return frozenset(t.name for t in self.tasks if not t.higher_is_better)

    @property
    def metric_names(self) -> list[str]:
        """The headline metrics of the tasks, each once (e.g. ["auc", "mae"])."""
        return list(dict.fromkeys(t.metric for t in self.tasks))

    def row_weights(self, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor | None:
        """[B, K] weight of each row in each task's loss: 0 where the label is missing,
        else the sample weight; None when every row counts 1 (no missing labels possible,
        no sample weights) — the plain mean, with no host synchronisation."""
        if weights is None and not self.may_skip:
            return None
        present = ~torch.isnan(labels) if labels.is_floating_point() else torch.ones_like(labels, dtype=torch.bool)
        w = present.to(torch.float32)
        return w if weights is None else w * weights

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-task losses [B, K] (finite where a label is missing: weigh them
        with `row_weights`)."""
        if labels.is_floating_point():
            labels = torch.nan_to_num(labels, nan=0.0)
        flat = _flat(outputs)
        if self._one_kernel:
            return self.tasks[0].loss(flat, labels.to(flat.dtype))
        return torch.stack([t.loss(flat[:, s].squeeze(1) if t.width == 1 else flat[:, s], labels[:, k])
                            for k, (t, s) in enumerate(zip(self.tasks, self._slices))], dim=1)

    def outputs_from_answers(self, answers: np.ndarray) -> np.ndarray:
        """The raw outputs [N, W] whose served answers (`models.outputs.TaskAnswers`) are
        `answers`: what `metrics` reads, so a served model is scored as a trained one.
        Probabilities are clipped to [1e-7, 1 − 1e-7] (float32 1.0 has no finite logit)."""
        out = np.asarray(answers, dtype=np.float64).copy()
        for t, s in zip(self.tasks, self._slices):
            a = out[:, s]
            if isinstance(t, BinaryTask):
                p = np.clip(a, 1e-7, 1 - 1e-7)
                out[:, s] = np.log(p) - np.log1p(-p) - t.logit_offset
            elif isinstance(t, RegressionTask):
                v = a / t.unit_scale
                out[:, s] = ((np.log1p(v) if t.log1p else v) - t.mean) / t.std
            else:
                out[:, s] = np.log(np.clip(a, 1e-12, 1.0))
        return out

    def binary_scores(self, labels: np.ndarray, outputs: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, labels, calibrated logits) of each binary task, every row (a missing label
        is NaN): what ROC, calibration and per-group AUC show."""
        flat = _flat(outputs)
        return [(t.name, labels[:, k].astype(np.float64), flat[:, s.start].astype(np.float64) + t.logit_offset)
                for k, (t, s) in enumerate(zip(self.tasks, self._slices)) if isinstance(t, BinaryTask)]

    @property
    def units(self) -> dict[str, str]:
        """The unit of each regression task's metrics (empty when none has one)."""
        return {t.name: t.unit for t in self.tasks if isinstance(t, RegressionTask) and t.unit}

    def metrics(self, labels: np.ndarray, outputs: np.ndarray, weights: np.ndarray | None = None
                ) -> dict[str, dict]:
        """Per task name: its metrics on the rows where its label is present (weighted)."""
        flat = _flat(outputs)
        out = {}
        for k, (t, s) in enumerate(zip(self.tasks, self._slices)):
            y = labels[:, k].astype(np.float64)
            present = np.isfinite(y) if weights is None else np.isfinite(y) & (weights[:, k] > 0)
            w = None if weights is None else weights[present, k]
            m = t.metrics(y[present], flat[present, s], w)
            if self.select == SKILL:
                m[SKILL] = t.skill(m)
            out[t.name] = m
        return out


def _flat(outputs):
    """[N, K, C] (K tasks of C classes) or [N, W] → [N, W]: the tasks' outputs side by side
    (a numpy array or a tensor)."""
    return outputs.reshape(outputs.shape[0], -1)


def validation_score(kind: TaskSet, metrics: dict[str, dict], tasks: list[str]) -> float:
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


def validation_key(kind: TaskSet) -> str:
    """The validation score's name in the training history and MLflow, e.g. `valid_mean_auc`."""
    return f"valid_mean_{kind.select}"


# every validation score a history row can hold → whether higher is better
SELECTION_KEYS = {"valid_mean_auc": True, "valid_mean_accuracy": True,
                  "valid_mean_mae_std_units": False, f"valid_mean_{SKILL}": True}


def selection_of(row: dict) -> tuple[str, bool]:
    """The validation score of a training-history row and whether higher is better."""
    key = next((k for k in row if k in SELECTION_KEYS), None)
    if key is None:
        raise DataError(f"a training-history row without a validation score ({sorted(row)})")
    return key, SELECTION_KEYS[key]


def qm9_tasks(targets: Sequence, stds: Sequence[float]) -> TaskSet:
    """QM9's standardised targets (`features.qm9.TARGETS`: name, paper_unit, paper_scale)
    with their training-split standard deviations: MAE in the papers' units."""
    return TaskSet(tuple(RegressionTask(t.name, std=float(s), unit=t.paper_unit, unit_scale=t.paper_scale)
                         for t, s in zip(targets, stds)))


def binary_tasks(names: Sequence[str]) -> TaskSet:
    """K binary tasks (click / conversion logs without declared kinds)."""
    return TaskSet(tuple(BinaryTask(n) for n in names))

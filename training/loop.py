"""The training loop: epochs of multi-task steps, validation AUC, early stopping,
atomic checkpoints and exact resume.

Read top to bottom: `fit` restores a checkpoint if one exists, then per epoch trains
(`_train_epoch`), evaluates on validation (`predict` + metrics), keeps the best weights
by validation mean AUC (never test), checkpoints, and stops after `patience` epochs
without improvement. The loop knows nothing of files or MLflow beyond its checkpoint
path; callers observe epochs through `on_epoch`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mtlrec.features.batches import BatchLoader, SplitData
from mtlrec.training import checkpoint
from mtlrec.training.config import TrainerConfig
from mtlrec.training.metrics import task_metrics
from mtlrec.training.step import Forward, MultiTaskStep, Pass

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device=cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def binary_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-task log loss [B, K] of click/conversion labels."""
    return nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")


@torch.no_grad()
def predict(model: nn.Module, data: SplitData, batch_size: int = 8192,
            device: torch.device = torch.device("cpu"), bf16: bool = False) -> np.ndarray:
    """Logits [N, K] in the split's row order."""
    model.eval()
    out = []
    for batch in BatchLoader(data, batch_size, shuffle=False):
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(model(batch.sparse, batch.dense).float().cpu())
    return torch.cat(out).numpy()


@dataclass
class TrainResult:
    best_epoch: int
    best_valid_auc: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    samples_per_s: float = float("nan")


class Trainer:
    """Trains one model on the tasks `task_index` selects from the label columns."""

    def __init__(self, model: nn.Module, step: MultiTaskStep, cfg: TrainerConfig,
                 tasks: list[str], task_index: list[int], seed: int,
                 checkpoint_path: Path | None = None,
                 on_epoch: Callable[[int, dict], None] | None = None,
                 on_diagnostics: Callable[[dict], None] | None = None,
                 task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = binary_cross_entropy
                 ) -> None:
        """`step` must have been built on `model` already moved to the training device."""
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device)
        self.step, self.cfg, self.seed = step, cfg, seed
        self.tasks, self.task_index = tasks, task_index
        self.checkpoint_path, self.on_epoch, self.on_diagnostics = checkpoint_path, on_epoch, on_diagnostics
        self.task_loss = task_loss
        self.optimizers = step.optimizers.all
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, self._lr_factor) for o in self.optimizers]
        self.autocast = cfg.bf16 and self.device.type == "cuda"

    def _lr_factor(self, epoch: int) -> float:
        if self.cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * epoch / self.cfg.max_epochs))
        return 1.0

    def fit(self, train: SplitData, valid: SplitData) -> TrainResult:
        loader = BatchLoader(train, self.cfg.batch_size, shuffle=True, seed=self.seed)
        state = self._resume()
        best_auc, best_epoch, stale = state["best_auc"], state["best_epoch"], state["stale"]
        best_weights, history = state["best_weights"], state["history"]
        first = self.cfg.max_epochs if state["done"] else state["epoch"]
        for epoch in range(first, self.cfg.max_epochs):
            loader.set_epoch(epoch)
            train_loss, speed = self._train_epoch(loader, epoch, valid)
            for scheduler in self.schedulers:
                scheduler.step()
            metrics = self.evaluate(valid)
            mean_auc = float(np.mean([metrics[t]["auc"] for t in self.tasks]))
            row = {"epoch": epoch, "train_loss": train_loss, "valid_mean_auc": mean_auc,
                   "samples_per_s": speed, "lr": self.optimizers[0].param_groups[0]["lr"]}
            row |= {f"valid_{t}_{m}": metrics[t][m] for t in self.tasks for m in ("auc", "logloss")}
            history.append(row)
            if mean_auc > best_auc:
                best_auc, best_epoch, stale = mean_auc, epoch, 0
                best_weights = copy.deepcopy(self.model.state_dict())
            else:
                stale += 1
            log.info("epoch %d: train loss %.5f, valid mean AUC %.5f%s", epoch, train_loss,
                     mean_auc, " (best)" if stale == 0 else "")
            stop = stale > self.cfg.patience
            self._checkpoint(epoch + 1, stop, best_auc, best_epoch, stale, best_weights, history)
            if self.on_epoch is not None:
                self.on_epoch(epoch, row)
            if stop:
                log.info("early stop: no validation gain for %d epochs", stale)
                break
        self.model.load_state_dict(best_weights)
        speeds = [h["samples_per_s"] for h in history]
        return TrainResult(best_epoch, best_auc, len(history), history,
                           float(np.median(speeds)) if speeds else float("nan"))

    def _train_epoch(self, loader: BatchLoader, epoch: int, valid: SplitData) -> tuple[float, float]:
        self.model.train()
        total, seen = torch.zeros((), device=self.device), 0
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, mininterval=2.0)
        for i, batch in enumerate(bar):
            dev = self.dev_forward(valid, epoch * len(loader) + i)
            losses = self.step.train_batch(self.batch_forward(batch), epoch, dev)
            for record in self.step.diagnostics:
                if self.on_diagnostics is not None:
                    self.on_diagnostics(record)
            self.step.diagnostics.clear()
            total += losses.sum()
            seen += len(batch)
            if i % 50 == 0:
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{float(total) / (i + 1):.4f}", samples_s=f"{rate:,.0f}")
        elapsed = time.perf_counter() - start
        return float(total) / max(len(loader), 1), seen / max(elapsed, 1e-9)

    def batch_forward(self, batch) -> Forward:
        """The model on one batch, as the closure the step calls (once or several times)."""
        batch = batch.to(self.device, non_blocking=True)
        labels = batch.labels[:, self.task_index]

        def forward(split: bool) -> Pass:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                if not split:
                    return Pass(self.task_loss(self.model(batch.sparse, batch.dense).float(), labels))
                rep = self.model.encode(batch.sparse, batch.dense)
                leaves = [t.detach().requires_grad_() for t in rep]
                logits = self.model.decode(leaves)
            return Pass(self.task_loss(logits.float(), labels), rep, leaves)

        return forward

    def dev_forward(self, valid: SplitData, index: int) -> Forward | None:
        """A dev batch from the validation split for outer-loop methods (DTJS's α): rows
        drawn with a generator seeded by the global batch index, so a resumed run draws
        the same ones."""
        size = self.step.dev_batch_size
        if size is None:
            return None

        def dev(split: bool) -> Pass:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            rows = torch.randint(len(valid), (size,), generator=gen)
            return self.batch_forward(valid.batch(rows))(split)

        return dev

    def evaluate(self, data: SplitData) -> dict[str, dict]:
        labels = data.labels.numpy()[:, self.task_index]
        logits = predict(self.model, data, device=self.device, bf16=self.autocast)
        return task_metrics(labels, logits, self.tasks)

    def _checkpoint(self, next_epoch: int, done: bool, best_auc: float, best_epoch: int,
                    stale: int, best_weights: dict, history: list[dict]) -> None:
        if self.checkpoint_path is None:
            return
        checkpoint.save_atomic({
            "epoch": next_epoch, "done": done, "best_auc": best_auc, "best_epoch": best_epoch, "stale": stale,
            "model": self.model.state_dict(), "best_weights": best_weights,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "step": self.step.state_dict(), "rng": torch.get_rng_state(), "history": history,
        }, self.checkpoint_path)

    def _resume(self) -> dict:
        fresh = {"epoch": 0, "done": False, "best_auc": -math.inf, "best_epoch": -1, "stale": 0,
                 "best_weights": copy.deepcopy(self.model.state_dict()), "history": []}
        if self.checkpoint_path is None or not Path(self.checkpoint_path).exists():
            return fresh
        state = checkpoint.load(self.checkpoint_path)
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
        self.step.load_state_dict(state["step"])
        torch.set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d", self.checkpoint_path, state["epoch"])
        return {k: state[k] for k in fresh}

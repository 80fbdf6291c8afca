"""The training loop: epochs of multi-task steps, validation score, early stopping,
atomic checkpoints and exact resume.

Read top to bottom: `fit` restores a checkpoint if one exists, then per epoch trains
(`_train_epoch`), evaluates on validation (`predict` + the task kind's metrics), keeps the
best weights by the validation score (mean AUC, accuracy or MAE over tasks; never test),
checkpoints, and stops after `patience` epochs without improvement. The loop knows
nothing of files or MLflow beyond its checkpoint path; callers observe epochs through
`on_epoch`.

Data: any split with `len` and `labels` [N, …] that `features.stream.make_loader` can
batch (in memory: `batch(rows)`; or streamed from Parquet), whose batches have `inputs`
(the model's positional arguments), `labels`, `to(device)` and `len` — the rankers'
Parquet splits, MultiMNIST's image tensors, QM9's molecular graphs.

Checkpoints are written at every epoch's end and, within an epoch, every
`trainer.checkpoint_minutes`: a mid-epoch checkpoint records the batch to continue from,
and the loaders serve an epoch's batches from any index on exactly as an uninterrupted
run would see them, so a run killed in the middle of a 50M-row epoch resumes there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mtlrec.features.batches import Shard
from mtlrec.features.errors import DataError
from mtlrec.features.stream import Loader, StreamSplit, make_loader
from mtlrec.progress import Progress
from mtlrec.training import checkpoint, sharding
from mtlrec.training.config import TrainerConfig
from mtlrec.training.distributed import gather_batches, rank0_decides
from mtlrec.training.step import Forward, MultiTaskStep, Pass
from mtlrec.training.tasks import TaskSet, binary_tasks, validation_key, validation_score

log = logging.getLogger(__name__)


class NonFiniteLoss(DataError):
    """Training diverged: a task's loss became inf or NaN. The run stops at that step."""


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device=cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class Split(Protocol):
    labels: torch.Tensor  # [N, K, …], the labels of the split's batches in file order
    weights: torch.Tensor | None  # [N, K] the rows' weights per task (None: all 1)

    def __len__(self) -> int: ...


@torch.no_grad()
def predict(model: nn.Module, data: Split, batch_size: int = 8192,
            device: torch.device = torch.device("cpu"), bf16: bool = False,
            shard: Shard = Shard()) -> np.ndarray:
    """Model outputs [N, K, …] in the split's row order. With several ranks each predicts
    its part of every batch and every rank gets the whole split's outputs."""
    model.eval()
    out: list[np.ndarray | None] = []
    for batch in make_loader(data, batch_size, shuffle=False, shard=shard):
        batch = batch.to(device)  # an empty part (a short last batch) runs too: sharded
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # tables' lookups are collective
            scores = model(*batch.inputs).float().cpu().numpy()
        out.append(scores if len(batch) else None)
    return gather_batches(out, shard)


@dataclass
class TrainResult:
    best_epoch: int
    best_valid_score: float  # the mean over tasks of the kind's selection metric
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
                 kind: TaskSet | None = None, eval_batch_size: int = 8192,
                 shard: Shard = Shard()) -> None:
        """`step` must have been built on `model` already moved to the training device.
        `kind`: the tasks `task_index` selects (default: binary tasks named `tasks`).
        `shard`: this rank's part of every batch under torchrun (`training.distributed`);
        only rank 0 writes checkpoints."""
        kind = binary_tasks(tasks) if kind is None else kind
        if kind.names != list(tasks):
            raise ValueError(f"the task set {kind.names} is not the trained tasks {tasks}")
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device)
        self.step, self.cfg, self.seed = step, cfg, seed
        self.tasks, self.task_index = tasks, task_index
        self.checkpoint_path, self.on_epoch, self.on_diagnostics = checkpoint_path, on_epoch, on_diagnostics
        self.kind, self.eval_batch_size, self.score_key = kind, eval_batch_size, validation_key(kind)
        self.sign = 1.0 if kind.higher_is_better else -1.0  # best = largest sign · score
        self.optimizers = step.optimizers.all
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, self._lr_factor) for o in self.optimizers]
        self.autocast = cfg.bf16 and self.device.type == "cuda"
        self.shard = shard
        if sharding.is_sharded(model) and checkpoint_path is None:
            raise ValueError("a model with sharded tables keeps its weights beside its checkpoint: "
                             "give the Trainer a checkpoint_path")
        self.weights = (sharding.ShardedWeights(checkpoint_path) if sharding.is_sharded(model)
                        else checkpoint.StateDictWeights())

    def _lr_factor(self, epoch: int) -> float:
        if self.cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * epoch / self.cfg.max_epochs))
        return 1.0

    def fit(self, train: Split, valid: Split) -> TrainResult:
        loader = make_loader(train, self.cfg.batch_size, shuffle=True, seed=self.seed, shard=self.shard)
        dev = self._dev_split(valid)
        state = self._resume()
        best, best_epoch, stale = state["best"], state["best_epoch"], state["stale"]
        best_weights, history = state["best_weights"], state["history"]
        first = self.cfg.max_epochs if state["done"] else state["epoch"]
        for epoch in range(first, self.cfg.max_epochs):
            loader.set_epoch(epoch)
            progress = state["progress"] if epoch == first else EpochProgress()

            def save_mid_epoch(p: "EpochProgress", epoch: int = epoch) -> None:
                self._checkpoint(epoch, False, best, best_epoch, stale, best_weights, history, p)

            train_loss, speed = self._train_epoch(loader, epoch, dev, progress, save_mid_epoch)
            for scheduler in self.schedulers:
                scheduler.step()
            metrics = self.evaluate(valid)
            score = validation_score(self.kind, metrics, self.tasks)
            row = {"epoch": epoch, "train_loss": train_loss, self.score_key: score,
                   "samples_per_s": speed, "lr": self.optimizers[0].param_groups[0]["lr"]}
            row |= {f"valid_{t}_{m}": v for t in self.tasks for m, v in metrics[t].items()}
            history.append(row)
            if self.sign * score > best:
                best, best_epoch, stale = self.sign * score, epoch, 0
                best_weights = self.weights.snapshot(self.model, f"best-e{epoch}")
            else:
                stale += 1
            log.info("epoch %d: train loss %.5f, %s %.5f%s", epoch, train_loss, self.score_key,
                     score, " (best)" if stale == 0 else "")
            stop = stale > self.cfg.patience
            self._checkpoint(epoch + 1, stop, best, best_epoch, stale, best_weights, history,
                             EpochProgress())
            if self.on_epoch is not None:
                self.on_epoch(epoch, row)
            if stop:
                log.info("early stop: no validation gain for %d epochs", stale)
                break
        self.weights.load(self.model, best_weights)
        speeds = [h["samples_per_s"] for h in history]
        return TrainResult(best_epoch, self.sign * best, len(history), history,
                           float(np.median(speeds)) if speeds else float("nan"))

    def _train_epoch(self, loader: Loader, epoch: int, dev: Split, progress: "EpochProgress",
                     save: Callable[["EpochProgress"], None]) -> tuple[float, float]:
        """Trains from batch `progress.batch` to the epoch's end; `save` checkpoints the
        progress every `trainer.checkpoint_minutes`."""
        self.model.train()
        total = torch.tensor(progress.loss_sum, device=self.device)
        seen, start = progress.seen, time.perf_counter()
        last_saved = time.monotonic()
        last_finite: tuple[int, torch.Tensor] | None = None
        with Progress(len(loader), "batches", f"epoch {epoch}", initial=progress.batch) as bar:
            for i, batch in enumerate(loader.iterate(progress.batch), start=progress.batch):
                step = epoch * len(loader) + i
                forward, labelled = self._prepare(batch)
                losses = self.step.train_batch(forward, epoch, self.dev_forward(dev, step),
                                               epoch_batches=len(loader), labelled=labelled)
                if not bool(torch.isfinite(losses).all()):
                    raise self._diverged(losses, epoch, step, last_finite)
                last_finite = (step, losses.detach())
                for record in self.step.diagnostics:
                    if self.on_diagnostics is not None:
                        self.on_diagnostics(record)
                self.step.diagnostics.clear()
                total += losses.sum()
                seen += len(batch) * self.shard.world  # the global batch's rows (± a short last one)
                status = {}
                if i % 50 == 0:  # reading the loss synchronises a GPU: not every batch
                    rate = (seen - progress.seen) / max(time.perf_counter() - start, 1e-9)
                    status = {"loss": f"{float(total) / (i + 1):.4f}", "samples/s": f"{rate:,.0f}"}
                bar.update(1, **status)
                due = i + 1 < len(loader) and time.monotonic() - last_saved >= 60 * self.cfg.checkpoint_minutes
                if rank0_decides(due, self.shard):
                    save(EpochProgress(i + 1, float(total), seen))
                    last_saved = time.monotonic()
        elapsed = time.perf_counter() - start
        return float(total) / max(len(loader), 1), (seen - progress.seen) / max(elapsed, 1e-9)

    def _diverged(self, losses: torch.Tensor, epoch: int, step: int,
                  last_finite: tuple[int, torch.Tensor] | None) -> NonFiniteLoss:
        values = losses.detach().float().cpu().tolist()
        k = next(k for k, v in enumerate(values) if not math.isfinite(v))
        before = ("no finite loss before it in this epoch" if last_finite is None else
                  f"last finite loss {float(last_finite[1][k]):.6g} at step {last_finite[0]}")
        return NonFiniteLoss(
            f"training diverged: the loss of task '{self.tasks[k]}' is non-finite ({values[k]}) at "
            f"epoch {epoch}, step {step}; {before} (trainer.lr={self.cfg.lr}). The run stops and "
            "is not exported: lower trainer.lr or check the data, then train again with "
            "train.force=true")

    def batch_forward(self, batch) -> Forward:
        """The model on one batch, as the closure the step calls (once or several times)."""
        return self._prepare(batch)[0]

    def _prepare(self, batch) -> tuple[Forward, torch.Tensor | None]:
        """The batch's forward closure, and each task's labelled weight in it [K] (None
        when every row counts for every task)."""
        if self.device.type == "cuda" and hasattr(batch, "pin_memory"):
            batch = batch.pin_memory()  # page-locked: the copy below does not block the host
        batch = batch.to(self.device, non_blocking=True)
        labels = batch.labels[:, self.task_index]
        weights = None if batch.weights is None else batch.weights[:, self.task_index]
        weights = self.kind.row_weights(labels, weights)

        def forward(split: bool) -> Pass:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                if not split:
                    return Pass(self.kind.loss(self.model(*batch.inputs).float(), labels), weights=weights)
                rep = self.model.encode(*batch.inputs)
                leaves = [t.detach().requires_grad_() for t in rep]
                outputs = self.model.decode(leaves)
            return Pass(self.kind.loss(outputs.float(), labels), rep, leaves, weights)

        return forward, None if weights is None else weights.sum(0)

    def _dev_split(self, valid: Split) -> Split:
        """Where outer-loop methods draw dev batches: the validation split, or, when it is
        streamed, a seeded sample of its row groups held in memory (`trainer.dev_rows`)."""
        if self.step.dev_batch_size is None or not isinstance(valid, StreamSplit):
            return valid
        return valid.sample(self.cfg.dev_rows, seed=self.seed)

    def dev_forward(self, valid: Split, index: int) -> Forward | None:
        """A dev batch from the validation split for outer-loop methods (DTJS's α): rows
        drawn with a generator seeded by the global batch index, so a resumed run draws
        the same ones."""
        size = self.step.dev_batch_size
        if size is None:
            return None

        def dev(split: bool) -> Pass:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            rows = torch.randint(len(valid), (size,), generator=gen)
            part = -(-size // self.shard.world)  # this rank's part of the global dev batch
            rows = rows[self.shard.rank * part:(self.shard.rank + 1) * part]
            return self.batch_forward(valid.batch(rows))(split)

        return dev

    def evaluate(self, data: Split) -> dict[str, dict]:
        labels = data.labels.numpy()[:, self.task_index]
        weights = None if data.weights is None else data.weights.numpy()[:, self.task_index]
        outputs = predict(self.model, data, self.eval_batch_size, self.device, self.autocast, self.shard)
        return self.kind.metrics(labels, outputs, weights)

    def _checkpoint(self, epoch: int, done: bool, best: float, best_epoch: int, stale: int,
                    best_weights: Any, history: list[dict], progress: "EpochProgress") -> None:
        """`epoch` is the epoch to continue, from batch `progress.batch` of it. Every rank
        builds the state (each writes its table shards, `sharding.ShardedWeights`); rank 0
        writes the checkpoint file."""
        if self.checkpoint_path is None:
            return
        state = {
            "epoch": epoch, "done": done, "best": best, "best_epoch": best_epoch, "stale": stale,
            "model": self.weights.current(self.model, f"state-e{epoch}-b{progress.batch}"),
            "best_weights": best_weights,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "step": self.step.state_dict(), "rng": torch.get_rng_state(), "history": history,
            "progress": progress.__dict__,
        }
        if self.shard.rank == 0:
            checkpoint.save(state, self.checkpoint_path)
            self.weights.prune([state["model"], best_weights])

    def _resume(self) -> dict:
        if self.shard.world > 1:
            dist.barrier()  # rank 0 has resumed or cleared the run folder: read it only now
        fresh = {"epoch": 0, "done": False, "best": -math.inf, "best_epoch": -1, "stale": 0,
                 "best_weights": None, "history": [], "progress": EpochProgress()}
        if self.checkpoint_path is None or not checkpoint.exists(self.checkpoint_path):
            return fresh | {"best_weights": self.weights.snapshot(self.model, "best-initial")}
        state = checkpoint.load(self.checkpoint_path)
        self.weights.load(self.model, state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
        self.step.load_state_dict(state["step"])
        torch.set_rng_state(state["rng"])
        state["progress"] = EpochProgress(**state.get("progress", {}))  # epoch-end checkpoints of 0.x
        log.info("resumed from %s at epoch %d, batch %d", self.checkpoint_path, state["epoch"],
                 state["progress"].batch)
        return {k: state[k] for k in fresh}


@dataclass
class EpochProgress:
    """How far an epoch got: the next batch, and the running loss sum and sample count."""

    batch: int = 0
    loss_sum: float = 0.0
    seen: int = 0

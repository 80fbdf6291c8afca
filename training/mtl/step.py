"""The composed multi-task step (DESIGN.md "Composable MTL methods", ALGORITHMS.md).

One call of `train_batch` trains on one batch, read top to bottom:

1. schedule: one joint update of all tasks, or selective group updates (one update per
   task group, in a shuffled order, the loss changes credited to the group that caused
   them);
2. each update: the loss transform maps per-sample losses [B, K] to task losses ℓ_k
   (mean, log of the mean, or SuperLoss);
3. either a loss weighting gives task weights w and the update is Σ_k w_k ∇ℓ_k (fixed
   weights, RLW, GLS, UW, DWA, FAMO) — or per-task gradients G = [∇ℓ_1; …; ∇ℓ_K] are
   taken once on the shared part (dense parameters, representation, or with the
   embedding tables) and an aggregator maps G to rows C with the update Σ_k C_k (PCGrad,
   DB-MTL, MoCoGrad, …, DTJS's φ). Everything outside the shared part gets ∇ of
   Σ_k w_k ℓ_k with the aggregator's head weights w;
4. optimizer: plain (Adam, RMSProp, AdaGrad) on the summed update, or AdaTask's per-task
   moments on the rows C;
5. outer loop: DTJS's α takes a hypergradient step on a dev batch ≈ 15 times an epoch.

The parts are objects from `registry.py`; what they remember is kept here, one
`TaskState` per part keyed by task id (`parts.py`), handed to them and taken back from
their return values. Per-task gradients are computed only when a part needs them.

Under data parallelism (`torchrun`) every loss is a mean over the global batch and every
gradient is summed over the ranks before a part sees it (`collective`), so each rank
takes the step one process takes on the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtlrec.training import sharding
from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.mtl import collective, diagnostics, legacy, registry
from mtlrec.training.mtl.dtjs import DTJSOuter
from mtlrec.training.mtl.gradients import per_task_gradients, split_like, write_gradient
from mtlrec.training.mtl.grouping import GroupedSchedule, JointSchedule
from mtlrec.training.mtl.optimizers import Optimizers, sparse_parameters
from mtlrec.training.mtl.parts import Context
from mtlrec.training.step import Forward, Pass

PARTS = ("transform", "weighting", "aggregator", "schedule")
DIAGNOSTICS_PER_EPOCH = 10
STATE_FORMAT = 2  # 1: the single MethodState struct of mtlrec ≤ 0.x (read by `legacy`)


class ComposedStep:
    def __init__(self, method: MethodConfig, model: nn.Module, trainer: TrainerConfig,
                 n_tasks: int, seed: int = 0) -> None:
        unusable = registry.problems(method)
        if unusable:
            raise ValueError("; ".join(unusable))
        self.method, self.k = method, n_tasks
        self.batch_size = trainer.batch_size
        self.split = method.grad_on == "representation"
        if self.split and collective.world_size() > 1:
            raise ValueError("method.grad_on=representation is per sample, so it cannot be summed "
                             "over ranks: under torchrun use grad_on=shared (or shared_and_embeddings)")
        self.shared = model.shared_parameters(include_embeddings=method.grad_on == "shared_and_embeddings")
        sparse_ids = {id(p) for p in sparse_parameters(model)}
        if any(id(p) in sparse_ids for p in self.shared):
            raise ValueError("grad_on=shared_and_embeddings needs dense embedding gradients: "
                             "set model.embedding_grad=dense (small tables only)")
        if sparse_ids and collective.world_size() > 1:
            raise ValueError("sparse embedding gradients are not summed over ranks: under torchrun "
                             "set model.embedding_grad=dense")
        shared_ids = {id(p) for p in self.shared}
        in_backward = {id(p) for p in sharding.updated_in_backward(model)}
        self.others = [p for p in model.parameters()
                       if id(p) not in shared_ids | in_backward and p.requires_grad]
        self.dense = [p for p in model.parameters()
                      if p.requires_grad and id(p) not in sparse_ids | in_backward]
        # DMP's tables are reached only by a full backward: the fused optimizer runs inside
        # it, and data-parallel tables get their gradient through the kernel's whole weights.
        self.head_inputs = None if sharding.is_sharded(model) else self.others
        self.optimizers = Optimizers(model, trainer, method, self.shared, n_tasks,
                                     track_dominance=method.diagnostics_every > 0)
        self.generator = torch.Generator().manual_seed(seed)
        self.transform = registry.TRANSFORMS[method.loss](method)
        self.weighting = registry.WEIGHTINGS[method.weighting](method)
        self.aggregator = registry.AGGREGATORS[method.aggregate](method)
        g = method.grouped
        self.schedule = (GroupedSchedule(g.beta, g.warmup_steps, g.regroup_every, g.preference, g.initial)
                         if method.schedule == "grouped" else JointSchedule())
        d = method.dtjs
        self.outer = (DTJSOuter(d.every, d.updates_per_epoch, d.terms, d.alpha_lr, d.clip)
                      if method.outer == "dtjs" else None)
        tasks = list(range(n_tasks))
        self.count = 0
        self.states = {name: part.init_state(tasks, self.generator) if part is not None else {}
                       for name, part in self._parts().items()}
        self.diagnostics: list[dict[str, Any]] = []
        self._events: dict[str, list] = {}  # since the last diagnostics sample

    def _parts(self) -> dict[str, Any]:
        return {"transform": self.transform, "weighting": self.weighting,
                "aggregator": self.aggregator, "schedule": self.schedule}

    @property
    def dev_batch_size(self) -> int | None:
        if self.outer is None:
            return None
        return self.method.dtjs.dev_batch_size or self.batch_size

    # ---------------------------------------------------------------- one batch
    def train_batch(self, forward: Forward, epoch: int = 0, dev: Forward | None = None,
                    epoch_batches: int | None = None, labelled: torch.Tensor | None = None) -> torch.Tensor:
        """Train on one batch; returns its mean task losses [K] (before any update).
        `epoch_batches`: the epoch's length, which sets the outer loop's cadence.
        `labelled`: this rank's labelled weight per task [K] (None: every row has every
        label); a task without label in the global batch is left out of the update, as if
        its group were not scheduled: the parts neither see nor change its state."""
        self.count += 1
        ctx = Context(self.generator, self.count, epoch, self.optimizers.plain.param_groups[0]["lr"])
        present = list(range(self.k))
        if labelled is not None:
            present = torch.nonzero(collective.total(labelled) > 0).flatten().tolist()
        if not present:
            return torch.zeros(self.k)
        outer_due = self.outer is not None and dev is not None and self.outer.due(self.count, epoch_batches)
        diagnose = self._diagnostics_due(self.count, epoch_batches) and len(present) == self.k

        def update(tasks: list[int]) -> torch.Tensor:
            p = forward(self.split)
            self._update(p, tasks, ctx, dev if outer_due else None, forward, diagnose)
            return collective.batch_mean(p.losses.detach(), p.weights)

        def measure() -> torch.Tensor:
            with torch.no_grad():
                p = forward(False)
                return collective.batch_mean(p.losses, p.weights)

        raw, self.states["schedule"], events = self.schedule.run(update, measure, self.states["schedule"],
                                                                 ctx, present)
        self._note(events)
        return raw

    def _update(self, p: Pass, tasks: list[int], ctx: Context, dev: Forward | None,
                forward: Forward, diagnose: bool = False) -> None:
        """One update of `tasks` from the forward pass `p` (dev: learn α on it too;
        diagnose: sample the diagnostics, once a step)."""
        m = self.method
        self.optimizers.zero_grad()
        ell_all, self.states["transform"], transformed = self.transform.apply(
            p.losses, self.states["transform"], tasks, train=True, weights=p.weights)
        ell = ell_all[tasks]
        sample = diagnose and not (self.diagnostics and self.diagnostics[-1]["step"] == ctx.step)
        record: dict[str, Any] = {}
        if self.aggregator is None:
            w, self.states["weighting"] = self.weighting.weights(ell.detach(), self.states["weighting"],
                                                                 tasks, ctx)
            w = w.to(ell)
            if self.optimizers.adatask is None and not sample:
                (w * ell).sum().backward()
                self._backward_rep(p)
                collective.total_grads(self.dense)
                self._finish(tasks, p, forward)
                return
        inputs = p.leaves if self.split else self.shared
        grads = collective.total(per_task_gradients(ell, inputs, batched=m.batched_grads))
        if self.aggregator is None:
            rows, head_w = w.unsqueeze(1) * grads, w
        else:
            out = self.aggregator.apply(grads, ell, self.states["aggregator"], tasks, ctx)
            rows, head_w, record = out.rows, out.head_weights.to(ell), out.record
            self.states["aggregator"] = out.state
            if dev is not None:
                self._learn_outer(ell, record, dev, tasks, ctx)
        if sample:  # conflict between all tasks, also when only a group is updated
            full = grads if len(tasks) == self.k else collective.total(
                per_task_gradients(ell_all, inputs, m.batched_grads))
            self._record(full, ctx.step, {**transformed, **record})
        head_loss = (head_w.detach() * ell).sum()
        if self.split:
            head_loss.backward()
            torch.autograd.backward(p.rep, split_like(rows.sum(0), p.rep))
        else:
            torch.autograd.backward(head_loss, inputs=self.head_inputs)
            collective.total_grads(self.others)
            if self.optimizers.adatask is not None:
                self.optimizers.adatask.step(task_grads=split_like(rows, self.shared, leading=True),
                                             tasks=tasks)
            else:
                write_gradient(self.shared, rows.sum(0))
        self._finish(tasks, p, forward)

    def _finish(self, tasks: list[int], p: Pass, forward: Forward) -> None:
        """Step the optimizers; a weighting that learns from the update's effect (FAMO)
        sees the batch's losses again."""
        self.optimizers.step()
        if self.weighting.needs_losses_after:
            with torch.no_grad():
                again = forward(False)
                after = collective.batch_mean(again.losses, again.weights)
            before = collective.batch_mean(p.losses.detach(), p.weights)
            self.states["weighting"] = self.weighting.after_update(
                before[tasks], after[tasks], self.states["weighting"], tasks)

    def _learn_outer(self, ell: torch.Tensor, record: dict[str, Any], dev: Forward,
                     tasks: list[int], ctx: Context) -> None:
        """DTJS: α's hypergradient step on a dev batch (the transform learns nothing from it)."""
        d = dev(False)
        dev_ell = self.transform.apply(d.losses, self.states["transform"], tasks, train=False, weights=d.weights)[0]
        self.states["aggregator"] = self.outer.update(self.states["aggregator"], record, ell,
                                                      dev_ell[tasks], self.dense, ctx.lr, tasks)
        if self.method.diagnostics_every:
            self._note({"dtjs_alpha_updates": [
                {"step": ctx.step, **self.aggregator.describe(self.states["aggregator"], range(self.k))}]})

    def _backward_rep(self, p: Pass) -> None:
        """With a split model, carry the heads' gradient on the leaves into the encoder."""
        if self.split:
            torch.autograd.backward(p.rep, [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad
                                            for leaf in p.leaves])

    # ---------------------------------------------------------------- diagnostics
    def _diagnostics_due(self, step: int, epoch_batches: int | None) -> bool:
        """Every `diagnostics_every` steps, and at least DIAGNOSTICS_PER_EPOCH times an epoch
        when its length is known, so that a short run's plots still have points."""
        every = self.method.diagnostics_every
        if every and epoch_batches:
            every = min(every, max(1, epoch_batches // DIAGNOSTICS_PER_EPOCH))
        return bool(every and step % every == 0)

    def _note(self, events: dict[str, list]) -> None:
        """Keep what happened between samples (regroupings, α updates) for the next one."""
        if self.method.diagnostics_every:
            for key, items in events.items():
                self._events.setdefault(key, []).extend(items)

    def _record(self, grads: torch.Tensor, step: int, update: dict[str, Any]) -> None:
        """A diagnostics sample: gradient conflict of all K tasks, each part's state and
        what this update computed (SuperLoss σ, DTJS φ), and the events since the last."""
        tasks = range(self.k)
        record: dict[str, Any] = {"step": step, **diagnostics.gradient_similarity(grads)}
        if "superloss_sigma" in update:
            sigma = update["superloss_sigma"]
            record["superloss_sigma"] = [diagnostics.histogram(sigma[:, k], 20, 0.0, 2.72) for k in tasks]
        if "dtjs_phi" in update:
            record["dtjs_phi"] = update["dtjs_phi"]
        for name, part in self._parts().items():
            if part is not None:
                record |= part.describe(self.states[name], tasks)
        if self.optimizers.adatask is not None and step > 1:
            rau = self.optimizers.adatask.task_dominance()
            record["adatask_rau"] = [diagnostics.histogram(rau[k], 20, 0.0, 1.0) for k in tasks]
        record |= self._events
        self._events = {}
        self.diagnostics.append(record)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and dicts (checkpoints load with weights_only)."""
        return {"format": STATE_FORMAT, "generator": self.generator.get_state(), "count": self.count,
                "parts": dict(self.states)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """A state of this format, or of format 1 (converted by `legacy`)."""
        if saved.get("format") != STATE_FORMAT:
            saved = legacy.convert(saved, self.method, self.k)
        self.generator.set_state(saved["generator"])
        self.count = saved["count"]
        missing = set(PARTS) - set(saved["parts"])
        if missing:
            raise ValueError(f"step state without the parts {sorted(missing)}")
        self.states = {name: saved["parts"][name] for name in PARTS}


def make_step(method: MethodConfig, model: nn.Module, trainer: TrainerConfig, n_tasks: int,
              seed: int) -> ComposedStep:
    """The step for a model exposing `shared_parameters` (and `encode`/`decode` when
    grad_on=representation)."""
    return ComposedStep(method, model, trainer, n_tasks, seed)

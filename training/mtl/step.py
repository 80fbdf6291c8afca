"""The composed multi-task step (DESIGN.md "Composable MTL methods", ALGORITHMS.md).

One call of `train_batch` trains on one batch, read top to bottom:

1. loss transform: per-sample losses [B, K] → task losses ℓ_k (mean, log of the mean,
   or SuperLoss);
2. either a loss weighting combines ℓ into one scalar (fixed weights, RLW, GLS, UW, DWA,
   FAMO) — or per-task gradients G = [∇ℓ_1; …; ∇ℓ_K] are taken once on the shared part
   (dense parameters, representation, or with the embedding tables) and an aggregator
   maps G to per-task rows C with the update Σ_k C_k (PCGrad, DB-MTL, MoCoGrad, …, DTJS's
   φ). Everything outside the shared part gets ∇ of Σ_k w_k ℓ_k with the aggregator's
   head weights w (1 unless the method weighs tasks);
3. optimizer: plain (Adam, RMSProp, AdaGrad) on the summed update, or AdaTask's per-task
   moments on the rows C;
4. schedule: one joint update, or selective group updates (one update per task group,
   the loss changes credited to the group that caused them);
5. outer loop: DTJS's α takes a hypergradient step on a dev batch every `dtjs.every`.

Methods are functions in their own files; this class only holds their state and wires
them. Per-task gradients are computed only when a part needs them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.mtl import diagnostics
from mtlrec.training.mtl.aligned_mtl import aligned_mtl
from mtlrec.training.mtl.cagrad import cagrad
from mtlrec.training.mtl.dbmtl import DBMTLState, dbmtl
from mtlrec.training.mtl.dtjs import hypergradient, inter_task_stats, phi
from mtlrec.training.mtl.dwa import EpochLosses, dwa_weights
from mtlrec.training.mtl.famo import famo_logit_gradient, famo_loss
from mtlrec.training.mtl.gls import gls
from mtlrec.training.mtl.gradients import per_task_gradients, split_like, write_gradient
from mtlrec.training.mtl.graddrop import graddrop
from mtlrec.training.mtl.gradnorm import gradnorm_weight_gradient, renormalise
from mtlrec.training.mtl.gradvac import gradvac
from mtlrec.training.mtl.grouping import credit, regroup
from mtlrec.training.mtl.imtl import imtl_g
from mtlrec.training.mtl.mgda import mgda
from mtlrec.training.mtl.mocograd import mocograd
from mtlrec.training.mtl.nash_mtl import nash_mtl
from mtlrec.training.mtl.pcgrad import pcgrad
from mtlrec.training.mtl.rlw import rlw_weights
from mtlrec.training.mtl.superloss import superloss, update_threshold
from mtlrec.training.mtl.uw import uw_loss
from mtlrec.training.mtl.optimizers import Optimizers, sparse_parameters
from mtlrec.training.step import Forward, Pass


@dataclass
class MethodState:
    """Everything a method remembers between steps (checkpointed)."""
    step: int = 0
    tau: torch.Tensor | None = None  # SuperLoss thresholds
    dbmtl: DBMTLState = field(default_factory=DBMTLState)
    momentum: torch.Tensor | None = None  # MoCoGrad
    cosine_targets: torch.Tensor | None = None  # GradVac
    epoch_losses: EpochLosses = field(default_factory=EpochLosses)  # DWA
    initial_losses: torch.Tensor | None = None  # GradNorm
    affinity: torch.Tensor | None = None  # grouped updates
    groups: list[list[int]] = field(default_factory=list)


class ComposedStep:
    def __init__(self, method: MethodConfig, model: nn.Module, trainer: TrainerConfig,
                 n_tasks: int, seed: int = 0) -> None:
        self.method, self.k, self.lr = method, n_tasks, trainer.lr
        self.batch_size = trainer.batch_size
        self.split = method.grad_on == "representation"
        self.shared = model.shared_parameters(include_embeddings=method.grad_on == "shared_and_embeddings")
        sparse_ids = {id(p) for p in sparse_parameters(model)}
        if any(id(p) in sparse_ids for p in self.shared):
            raise ValueError("grad_on=shared_and_embeddings needs dense embedding gradients: "
                             "set model.embedding_grad=dense (small tables only)")
        shared_ids = {id(p) for p in self.shared}
        self.others = [p for p in model.parameters() if id(p) not in shared_ids and p.requires_grad]
        self.dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
        self.optimizers = Optimizers(model, trainer, method, self.shared, n_tasks,
                                     track_dominance=method.diagnostics_every > 0)
        self.generator = torch.Generator().manual_seed(seed)
        groups = method.grouped.initial or [[t] for t in range(n_tasks)]
        if sorted(t for g in groups for t in g) != list(range(n_tasks)):
            raise ValueError(f"method.grouped.initial={groups} is not a partition of the "
                             f"{n_tasks} tasks 0..{n_tasks - 1}")
        self.state = MethodState(groups=groups)
        self.weights = self._learnable_weights()
        self.diagnostics: list[dict[str, Any]] = []
        self._sigma: torch.Tensor | None = None  # SuperLoss weights of the last batch
        self._dtjs_dm: tuple[torch.Tensor, torch.Tensor] | None = None  # DTJS d_k, m_k

    @property
    def dev_batch_size(self) -> int | None:
        if self.method.outer != "dtjs":
            return None
        return self.method.dtjs.dev_batch_size or self.batch_size

    def _learnable_weights(self) -> dict[str, tuple[torch.Tensor, torch.optim.Optimizer]]:
        """Task-weight parameters some methods learn, each with its own optimizer."""
        m, k = self.method, self.k
        if m.weighting == "uw":
            s = torch.zeros(k, requires_grad=True)
            return {"uw": (s, torch.optim.Adam([s], lr=self.lr))}
        if m.weighting == "famo":
            xi = torch.zeros(k, requires_grad=True)
            return {"famo": (xi, torch.optim.Adam([xi], lr=m.famo.lr, weight_decay=m.famo.weight_decay))}
        if m.aggregate == "gradnorm":
            w = torch.ones(k, requires_grad=True)
            return {"gradnorm": (w, torch.optim.Adam([w], lr=m.gradnorm.lr))}
        if m.aggregate == "dtjs":
            alpha = torch.rand(2, k, generator=self.generator).requires_grad_()
            return {"dtjs": (alpha, torch.optim.Adam([alpha], lr=m.dtjs.alpha_lr))}
        return {}

    # ---------------------------------------------------------------- one batch
    def train_batch(self, forward: Forward, epoch: int = 0, dev: Forward | None = None
                    ) -> torch.Tensor:
        """Train on one batch; returns its mean task losses [K] (before any update)."""
        self.state.step += 1
        if self.method.schedule == "grouped":
            raw = self._grouped(forward)
        else:
            p = forward(self.split)
            raw = p.losses.detach().mean(dim=0)
            self._update(p, list(range(self.k)), dev)
            if self.method.weighting == "famo":
                self._famo_update(forward, raw)
        self.state.epoch_losses.add(raw, epoch)
        return raw

    def _grouped(self, forward: Forward) -> torch.Tensor:
        """M = #groups updates on the batch; each loss change is credited to its cause."""
        s, g = self.state, self.method.grouped
        if s.affinity is None:
            s.affinity = torch.zeros(self.k, self.k)
        first, before, previous = None, None, None
        for group in s.groups:
            p = forward(self.split)
            losses = p.losses.detach().mean(dim=0).cpu()
            if previous is not None:
                s.affinity = credit(s.affinity, previous, before, losses, g.beta)
            first = losses if first is None else first
            self._update(p, group, None)
            before, previous = losses, group
        with torch.no_grad():
            after = forward(False).losses.mean(dim=0).cpu()
        s.affinity = credit(s.affinity, previous, before, after, g.beta)
        if s.step > g.warmup_steps and s.step % g.regroup_every == 0:
            s.groups = regroup(s.affinity, s.groups)
        return first

    def _update(self, p: Pass, tasks: list[int], dev: Forward | None) -> None:
        m = self.method
        self.optimizers.zero_grad()
        ell_all = self._transform(p.losses)
        ell = ell_all[tasks]
        sample = (m.diagnostics_every and self.state.step % m.diagnostics_every == 0
                  and not (self.diagnostics and self.diagnostics[-1]["step"] == self.state.step))
        if m.aggregate == "sum" and not m.adatask and not sample:
            self._combine(ell, tasks).backward()
            self._backward_rep(p)
            self.optimizers.step()
            self._step_weights()
            return
        inputs = p.leaves if self.split else self.shared
        grads = per_task_gradients(ell, inputs, batched=m.batched_grads)
        if m.aggregate == "sum":
            combined = self._combine(ell, tasks)
            w = torch.autograd.grad(combined, ell, retain_graph=True)[0].detach()
            rows, head_loss = w.unsqueeze(1) * grads, combined
        else:
            rows, head_w = self._aggregate(grads, ell, tasks)
            head_loss = (head_w.detach().to(ell) * ell).sum()
            if m.outer == "dtjs" and dev is not None and self.state.step % m.dtjs.every == 0:
                self._dtjs_alpha(ell, grads, dev)
        if sample:  # conflict between all tasks, also when only a group is updated
            full = grads if len(tasks) == self.k else per_task_gradients(ell_all, inputs, m.batched_grads)
            self._record(full, tasks)
        if self.split:
            head_loss.backward()
            torch.autograd.backward(p.rep, split_like(rows.sum(0), p.rep))
        else:
            torch.autograd.backward(head_loss, inputs=self.others + self._weight_params())
            if self.optimizers.adatask is not None:
                self.optimizers.adatask.step(task_grads=split_like(rows, self.shared, leading=True),
                                             tasks=tasks)
            else:
                write_gradient(self.shared, rows.sum(0))
        self.optimizers.step()
        self._step_weights()

    def _backward_rep(self, p: Pass) -> None:
        """With a split model, carry the heads' gradient on the leaves into the encoder."""
        if self.split:
            torch.autograd.backward(p.rep, [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad
                                            for leaf in p.leaves])

    # ---------------------------------------------------------------- parts
    def _transform(self, losses: torch.Tensor, train: bool = True) -> torch.Tensor:
        """Per-sample [B, K] → task losses [K]. A dev batch (`train=False`) uses the
        training SuperLoss thresholds without updating them."""
        m = self.method
        if m.loss == "superloss":
            if train:
                self.state.tau = update_threshold(self.state.tau, losses, m.superloss.momentum)
            lam = torch.full_like(self.state.tau, m.superloss.lam)
            task, sigma = superloss(losses, self.state.tau, lam)
            if train:
                self._sigma = sigma
            return task
        mean = losses.mean(dim=0)
        return torch.log(mean + 1e-8) if m.loss == "log" else mean

    def _combine(self, ell: torch.Tensor, tasks: list[int]) -> torch.Tensor:
        """The loss-level weightings: task losses → one scalar."""
        m = self.method
        if m.weighting == "gls":
            return gls(ell)
        if m.weighting == "uw":
            return uw_loss(ell, self.weights["uw"][0][tasks].to(ell))
        if m.weighting == "famo":
            return famo_loss(ell, self.weights["famo"][0][tasks].to(ell))
        if m.weighting == "rlw":
            w = rlw_weights(self.k, self.generator)[tasks]
        elif m.weighting == "dwa":
            w = dwa_weights(self.state.epoch_losses, self.k, m.dwa.temperature)[tasks]
        else:
            w = torch.ones(self.k) if m.task_weights is None else torch.tensor(m.task_weights)
            w = w[tasks]
        return (w.to(ell) * ell).sum()

    def _aggregate(self, grads: torch.Tensor, ell: torch.Tensor, tasks: list[int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """G [k, D] → (rows C [k, D], head weights [k]) for the methods acting on G."""
        m, s, ones = self.method, self.state, torch.ones(len(tasks))
        match m.aggregate:
            case "pcgrad":
                return pcgrad(grads, self.generator), ones
            case "dbmtl":
                return dbmtl(grads, s.dbmtl, m.dbmtl.beta, m.dbmtl.sigma), ones
            case "mgda":
                return mgda(grads), ones
            case "cagrad":
                return cagrad(grads, m.cagrad.c), ones
            case "imtl_g":
                return imtl_g(grads), ones
            case "nash_mtl":
                return nash_mtl(grads), ones
            case "aligned_mtl":
                return aligned_mtl(grads), ones
            case "graddrop":
                return graddrop(grads, self.generator), ones
            case "gradvac":
                if s.cosine_targets is None:
                    s.cosine_targets = torch.zeros(self.k, self.k, dtype=grads.dtype, device=grads.device)
                rows, s.cosine_targets = gradvac(grads, s.cosine_targets, m.gradvac.beta, self.generator)
                return rows, ones
            case "mocograd":
                if s.momentum is None:
                    s.momentum = torch.zeros_like(grads)
                rows, s.momentum = mocograd(grads, s.momentum, m.mocograd.lam, m.mocograd.beta1,
                                            self.generator)
                return rows, ones
            case "gradnorm":
                w, _ = self.weights["gradnorm"]
                if s.initial_losses is None:
                    s.initial_losses = ell.detach().clone()
                w_now = w.detach()[tasks].to(grads)
                w.grad = torch.zeros_like(w)
                w.grad[tasks] = gradnorm_weight_gradient(
                    w_now, grads, ell, s.initial_losses[tasks], m.gradnorm.alpha).cpu().to(w.dtype)
                return w_now.unsqueeze(1) * grads, w_now
            case "dtjs":
                d, mag = inter_task_stats(grads)
                self._dtjs_dm = (d.detach(), mag.detach())
                weights = phi(self.weights["dtjs"][0].detach()[:, tasks].to(grads), d, mag)
                return weights.unsqueeze(1) * grads, weights
        raise AssertionError(m.aggregate)

    def _dtjs_alpha(self, ell: torch.Tensor, grads: torch.Tensor, dev: Forward) -> None:
        """Bi-level step of α on a dev batch (hypergradient, clipped, Adam)."""
        alpha, optimizer = self.weights["dtjs"]
        d, mag = self._dtjs_dm
        dev_task = self._transform(dev(False).losses, train=False)
        hg = hypergradient(lambda a: (phi(a.to(ell), d, mag) * ell).sum(), dev_task.sum(),
                           self.dense, alpha, self.lr, self.method.dtjs.terms)
        optimizer.zero_grad()
        alpha.grad = hg * (self.method.dtjs.clip / hg.norm().clamp_min(self.method.dtjs.clip))
        optimizer.step()

    def _famo_update(self, forward: Forward, before: torch.Tensor) -> None:
        """FAMO: after the model step, the same batch again; ξ descends Jᵀδ."""
        xi, optimizer = self.weights["famo"]
        with torch.no_grad():
            after = forward(False).losses.mean(dim=0)
        optimizer.zero_grad()
        xi.grad = famo_logit_gradient(xi, before.cpu(), after.cpu())
        optimizer.step()

    def _weight_params(self) -> list[torch.Tensor]:
        """Learnable weights trained by the head loss's backward (UW's log-variances)."""
        return [self.weights["uw"][0]] if "uw" in self.weights else []

    def _step_weights(self) -> None:
        if "uw" in self.weights:
            self.weights["uw"][1].step()
            self.weights["uw"][1].zero_grad()
        if "gradnorm" in self.weights:
            w, optimizer = self.weights["gradnorm"]
            optimizer.step()
            with torch.no_grad():
                w.copy_(renormalise(w))

    def _record(self, grads: torch.Tensor, tasks: list[int]) -> None:
        """A diagnostics sample: gradient conflict of all K tasks plus each part's state
        (`tasks`: the ones being updated)."""
        record: dict[str, Any] = {"step": self.state.step, **diagnostics.gradient_similarity(grads)}
        if self.method.loss == "superloss":
            record["superloss_sigma"] = [diagnostics.histogram(self._sigma[:, k], 20, 0.0, 2.72)
                                         for k in range(self.k)]
        if "dtjs" in self.weights:
            alpha = self.weights["dtjs"][0].detach()
            d, mag = self._dtjs_dm
            record["dtjs_alpha"] = alpha.tolist()
            record["dtjs_phi"] = phi(alpha[:, tasks].to(d), d, mag).cpu().tolist()
        for name in ("uw", "famo", "gradnorm"):
            if name in self.weights:
                record[f"{name}_weights"] = self.weights[name][0].detach().tolist()
        if self.optimizers.adatask is not None and self.state.step > 1:
            rau = self.optimizers.adatask.task_dominance()
            record["adatask_rau"] = [diagnostics.histogram(rau[k], 20, 0.0, 1.0) for k in range(self.k)]
        if self.method.schedule == "grouped":
            record["affinity"] = self.state.affinity.tolist()
            record["groups"] = [list(g) for g in self.state.groups]
        self.diagnostics.append(record)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and dicts (checkpoints load with weights_only)."""
        return {"generator": self.generator.get_state(), "state": asdict(self.state),
                "weights": {k: (w.detach().clone(), o.state_dict()) for k, (w, o) in self.weights.items()}}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.generator.set_state(saved["generator"])
        state = dict(saved["state"])
        self.state = MethodState(**state | {"dbmtl": DBMTLState(**state["dbmtl"]),
                                            "epoch_losses": EpochLosses(**state["epoch_losses"])})
        for name, (value, opt_state) in saved["weights"].items():
            w, optimizer = self.weights[name]
            with torch.no_grad():
                w.copy_(value)
            optimizer.load_state_dict(opt_state)


def make_step(method: MethodConfig, model: nn.Module, trainer: TrainerConfig, n_tasks: int,
              seed: int) -> ComposedStep:
    """The step for a model exposing `shared_parameters` (and `encode`/`decode` when
    grad_on=representation)."""
    return ComposedStep(method, model, trainer, n_tasks, seed)

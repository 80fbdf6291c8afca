"""The composed multi-task step: loss transform × aggregator on the shared parameters.

backward(L): the transformed losses ℓ_k = T(L_k) (identity or log) reach the
task-specific parameters and embeddings as the gradient of Σ_k ℓ_k (with sum: combined
by the weighting — fixed `task_weights`, RLW's random weights or GLS's geometric mean). With an aggregator, the shared dense parameters θ get instead
A(G), where G = [∇_θ ℓ_1; …; ∇_θ ℓ_K] is computed once per step.
"""

from __future__ import annotations

from typing import Any

import torch

from mtlrec.training.config import MethodConfig
from mtlrec.training.mtl.cagrad import cagrad
from mtlrec.training.mtl.dbmtl import DBMTLState, dbmtl
from mtlrec.training.mtl.gls import gls
from mtlrec.training.mtl.gradients import per_task_gradients, write_gradient
from mtlrec.training.mtl.gradvac import gradvac
from mtlrec.training.mtl.imtl import imtl_g
from mtlrec.training.mtl.mgda import mgda
from mtlrec.training.mtl.mocograd import mocograd
from mtlrec.training.mtl.pcgrad import pcgrad
from mtlrec.training.mtl.rlw import rlw_weights


def transform(losses: torch.Tensor, kind: str) -> torch.Tensor:
    """identity, or log L_k (DB-MTL's loss-scale balancing: ∇ log L = ∇L / L)."""
    return torch.log(losses + 1e-8) if kind == "log" else losses


class ComposedStep:
    def __init__(self, method: MethodConfig, shared: list[torch.nn.Parameter],
                 others: list[torch.nn.Parameter], seed: int = 0) -> None:
        self.method, self.shared, self.others = method, shared, others
        self.generator = torch.Generator().manual_seed(seed)
        self.dbmtl_state = DBMTLState()
        self.momentum: torch.Tensor | None = None
        self.cosine_targets: torch.Tensor | None = None

    def backward(self, losses: torch.Tensor) -> None:
        m = self.method
        ell = transform(losses, m.loss)
        if m.aggregate == "sum":
            self._combined(ell).backward()
            return
        grads = per_task_gradients(ell, self.shared)
        torch.autograd.backward(ell.sum(), inputs=self.others)
        write_gradient(self.shared, self._aggregate(grads))

    def _combined(self, ell: torch.Tensor) -> torch.Tensor:
        m = self.method
        if m.weighting == "gls":
            return gls(ell)
        if m.weighting == "rlw":
            return (rlw_weights(ell.shape[0], self.generator).to(ell) * ell).sum()
        w = torch.ones_like(ell) if m.task_weights is None else torch.tensor(m.task_weights).to(ell)
        return (w * ell).sum()

    def _aggregate(self, grads: torch.Tensor) -> torch.Tensor:
        m = self.method
        if m.aggregate == "pcgrad":
            return pcgrad(grads, self.generator)
        if m.aggregate == "dbmtl":
            return dbmtl(grads, self.dbmtl_state, m.dbmtl.beta, m.dbmtl.sigma)
        if m.aggregate == "mgda":
            return mgda(grads)
        if m.aggregate == "cagrad":
            return cagrad(grads, m.cagrad.c)
        if m.aggregate == "imtl_g":
            return imtl_g(grads)
        if m.aggregate == "gradvac":
            if self.cosine_targets is None:
                self.cosine_targets = torch.zeros(grads.shape[0], grads.shape[0], dtype=grads.dtype)
            shared, self.cosine_targets = gradvac(grads, self.cosine_targets, m.gradvac.beta,
                                                  self.generator)
            return shared
        if self.momentum is None:
            self.momentum = torch.zeros_like(grads)
        shared, self.momentum = mocograd(grads, self.momentum, m.mocograd.lam, m.mocograd.beta1,
                                         self.generator)
        return shared

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "dbmtl_ema": self.dbmtl_state.ema,
                "dbmtl_step": self.dbmtl_state.step, "momentum": self.momentum,
                "cosine_targets": self.cosine_targets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.dbmtl_state = DBMTLState(state["dbmtl_ema"], state["dbmtl_step"])
        self.momentum = state["momentum"]
        self.cosine_targets = state["cosine_targets"]


def make_step(method: MethodConfig, model: torch.nn.Module, seed: int) -> ComposedStep:
    """The step for a model exposing `shared_parameters` (per-task gradients go there)."""
    shared = model.shared_parameters(include_embeddings=False)
    ids = {id(p) for p in shared}
    others = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    return ComposedStep(method, shared, others, seed)

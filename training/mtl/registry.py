"""Which class implements each name a method config may give its parts.

`loss`, `weighting` and `aggregate` of `MethodConfig` name entries here; each entry
builds the part from the config. A new method is its own file plus one line here (or
one `register_aggregator` call for a method defined outside the package).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from mtlrec.training.mtl.aligned_mtl import aligned_mtl
from mtlrec.training.mtl.cagrad import cagrad
from mtlrec.training.mtl.dbmtl import DBMTL
from mtlrec.training.mtl.dtjs import DTJSWeights
from mtlrec.training.mtl.dwa import DWA
from mtlrec.training.mtl.famo import FAMO
from mtlrec.training.mtl.fixed import FixedWeights
from mtlrec.training.mtl.graddrop import graddrop
from mtlrec.training.mtl.gradnorm import GradNorm
from mtlrec.training.mtl.gradvac import GradVac
from mtlrec.training.mtl.gls import GLS
from mtlrec.training.mtl.imtl import imtl_g
from mtlrec.training.mtl.mgda import mgda
from mtlrec.training.mtl.mocograd import MoCoGrad
from mtlrec.training.mtl.nash_mtl import nash_mtl
from mtlrec.training.mtl.parts import Aggregated, Aggregator, Context, TaskState, Transform, Weighting
from mtlrec.training.mtl.pcgrad import pcgrad
from mtlrec.training.mtl.rlw import RLW
from mtlrec.training.mtl.superloss import SuperLoss
from mtlrec.training.mtl.transforms import LogMean, Mean
from mtlrec.training.mtl.uw import UW

if TYPE_CHECKING:
    from mtlrec.training.config import MethodConfig


class Stateless(Aggregator):
    """An aggregator that is a function of the gradients (and the step's generator)."""

    def __init__(self, rows: Callable[[torch.Tensor, torch.Generator], torch.Tensor]) -> None:
        self.rows = rows

    def apply(self, grads: torch.Tensor, losses: torch.Tensor, state: TaskState,
              task_ids: Sequence[int], ctx: Context) -> Aggregated:
        return Aggregated(self.rows(grads, ctx.generator), torch.ones(len(task_ids)), state)


TRANSFORMS: dict[str, Callable[["MethodConfig"], Transform]] = {
    "identity": lambda m: Mean(),
    "log": lambda m: LogMean(),
    "superloss": lambda m: SuperLoss(m.superloss.lam, m.superloss.momentum),
}

WEIGHTINGS: dict[str, Callable[["MethodConfig"], Weighting]] = {
    "fixed": lambda m: FixedWeights(m.task_weights),
    "rlw": lambda m: RLW(),
    "gls": lambda m: GLS(),
    "uw": lambda m: UW(),
    "dwa": lambda m: DWA(m.dwa.temperature),
    "famo": lambda m: FAMO(m.famo.lr, m.famo.weight_decay),
}

# "sum": no aggregator, the weighting's Σ_k w_k ∇ℓ_k.
AGGREGATORS: dict[str, Callable[["MethodConfig"], Aggregator | None]] = {
    "sum": lambda m: None,
    "pcgrad": lambda m: Stateless(pcgrad),
    "dbmtl": lambda m: DBMTL(m.dbmtl.beta, m.dbmtl.sigma),
    "mocograd": lambda m: MoCoGrad(m.mocograd.lam, m.mocograd.beta1),
    "mgda": lambda m: Stateless(lambda g, _: mgda(g)),
    "cagrad": lambda m: Stateless(lambda g, _: cagrad(g, m.cagrad.c)),
    "imtl_g": lambda m: Stateless(lambda g, _: imtl_g(g)),
    "gradvac": lambda m: GradVac(m.gradvac.beta),
    "graddrop": lambda m: Stateless(graddrop),
    "nash_mtl": lambda m: Stateless(lambda g, _: nash_mtl(g)),
    "aligned_mtl": lambda m: Stateless(lambda g, _: aligned_mtl(g)),
    "gradnorm": lambda m: GradNorm(m.gradnorm.alpha, m.gradnorm.lr),
    "dtjs": lambda m: DTJSWeights(),
}


def problems(m: "MethodConfig") -> list[str]:
    """What makes the method's parts unusable, each with the reason (the config cannot
    know: a registered method's name and kind are known only here)."""
    out = [f"{field}={name} is not a known method: choose one of {', '.join(known)}"
           for field, name, known in (("loss", m.loss, TRANSFORMS), ("weighting", m.weighting, WEIGHTINGS),
                                      ("aggregate", m.aggregate, AGGREGATORS))
           if name not in known]
    if out:
        return out
    aggregator = AGGREGATORS[m.aggregate](m)
    if aggregator is not None and aggregator.spans_batches and m.grad_on == "representation":
        out.append(f"aggregate={m.aggregate} averages task gradients across batches; gradients on "
                   "the representation belong to each batch's own samples: use grad_on=shared")
    return out


def register_aggregator(name: str, build: Callable[["MethodConfig"], Aggregator]) -> None:
    """Make `aggregate=<name>` available (a method defined outside this package)."""
    if name in AGGREGATORS:
        raise ValueError(f"aggregate={name} is registered already")
    AGGREGATORS[name] = build

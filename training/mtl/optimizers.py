"""The optimizers of a model: the `method.optimizer` family for dense parameters, a
sparse-gradient partner for embedding tables with sparse gradients, and AdaTask's
per-task moments for the shared parameters when chosen.

The shared parameters' AdaTask is stepped with the per-task gradients (`AdaTask.step(task_grads=…)`);
every other optimizer with `.grad` as usual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtlrec.training import sharding
from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.mtl.adatask import AdaTask

PLAIN = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]


class Optimizers:
    """All optimizers of one model; `adatask` (if any) owns exactly `shared`."""

    def __init__(self, model: nn.Module, trainer: TrainerConfig, method: MethodConfig,
                 shared: list[nn.Parameter], n_tasks: int, track_dominance: bool = False) -> None:
        family = method.optimizer.removeprefix("adatask_")
        sparse = sparse_parameters(model)
        skip = ({id(p) for p in sparse} | {id(p) for p in sharding.updated_in_backward(model)}
                | ({id(p) for p in shared} if method.adatask else set()))
        dense = [p for p in model.parameters() if id(p) not in skip and p.requires_grad]
        self.plain = PLAIN[family](dense, lr=trainer.lr, weight_decay=trainer.weight_decay)
        self.all: list[torch.optim.Optimizer] = [self.plain]
        self.adatask: AdaTask | None = None
        if method.adatask:
            self.adatask = AdaTask(shared, n_tasks, lr=trainer.lr, variant=family,  # type: ignore[arg-type]
                                   dominance_beta=0.99 if track_dominance else None)
            self.all.append(self.adatask)
        if sparse:
            if family == "rmsprop":
                raise ValueError("optimizer rmsprop has no sparse-gradient version: set "
                                 "model.embedding_grad=dense or use adam/adagrad")
            sparse_cls = torch.optim.SparseAdam if family == "adam" else torch.optim.Adagrad
            self.all.append(sparse_cls(sparse, lr=trainer.lr))
        if (tables := sharding.table_optimizer(model)) is not None:
            self.all.append(tables)  # scheduled and checkpointed with the others

    def zero_grad(self) -> None:
        for optimizer in self.all:
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Step every optimizer that reads `.grad` (AdaTask is stepped with the per-task gradients)."""
        for optimizer in self.all:
            if optimizer is not self.adatask:
                optimizer.step()

    def state_dict(self) -> list[dict[str, Any]]:
        return [o.state_dict() for o in self.all]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for optimizer, state in zip(self.all, states, strict=True):
            optimizer.load_state_dict(state)

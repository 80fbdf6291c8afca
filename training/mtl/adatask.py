"""AdaTask: "AdaTask: A Task-Aware Adaptive Learning Rate Approach to Multi-Task
Learning" (Yang et al., AAAI 2023), Eq. 5-7 (Adam), and its RMSProp / AdaGrad variants.

For the shared parameters every task keeps its own accumulators, so one task's large
gradients cannot shrink another's effective learning rate:
m_k ← β₁m_k + (1−β₁)g_k, v_k ← β₂v_k + (1−β₂)g_k², θ ← θ − Σ_k lr·m̂_k/(√v̂_k + ε)
with bias corrections by each task's own step count. RMSProp keeps only
v_k ← αv_k + (1−α)g_k² and steps lr·g_k/(√v_k + ε); AdaGrad v_k ← v_k + g_k². The
defaults match torch's Adam, RMSprop and Adagrad, so with K = 1 each is the plain
optimizer. The per-task g_k may come from gradient surgery (PCGrad, CAGrad rows).

Task dominance (the paper's rAU): AU(i, k) = EMA of task k's squared update of parameter
i; rAU(i, k) = AU(i, k) / Σ_k' AU(i, k'). Tracked when `dominance_beta` is set
(K more copies of the parameters).
"""

from __future__ import annotations

from typing import Literal

import torch

Variant = Literal["adam", "rmsprop", "adagrad"]
DEFAULT_EPS = {"adam": 1e-8, "rmsprop": 1e-8, "adagrad": 1e-10}


class AdaTask(torch.optim.Optimizer):
    def __init__(self, params, n_tasks: int, lr: float = 1e-3, variant: Variant = "adam",
                 betas: tuple[float, float] = (0.9, 0.999), alpha: float = 0.99,
                 eps: float | None = None, dominance_beta: float | None = None) -> None:
        defaults = {"lr": lr, "betas": betas, "alpha": alpha,
                    "eps": DEFAULT_EPS[variant] if eps is None else eps}
        super().__init__(params, defaults)
        self.n_tasks, self.variant, self.dominance_beta = n_tasks, variant, dominance_beta

    @torch.no_grad()
    def step(self, closure=None, *, task_grads: list[torch.Tensor],  # type: ignore[override]
             tasks: list[int] | None = None) -> None:
        """task_grads: per parameter (in order) a [len(tasks), *shape] tensor of the task
        gradients; `tasks` says which tasks they belong to (default all K). (Named `step`
        so torch's LR schedulers see the optimizer step; there is no `.grad` to read.)"""
        if closure is not None:
            raise ValueError("AdaTask.step takes the per-task gradients, not a closure")
        tasks = list(range(self.n_tasks)) if tasks is None else tasks
        params = [p for group in self.param_groups for p in group["params"]]
        if len(task_grads) != len(params):
            raise ValueError(f"AdaTask: {len(task_grads)} gradients for {len(params)} parameters")
        grads = iter(task_grads)
        for group in self.param_groups:
            for p in group["params"]:
                self._update(p, next(grads), tasks, group)

    def _update(self, p: torch.Tensor, g: torch.Tensor, tasks: list[int], group: dict) -> None:
        state = self.state[p]
        if not state:
            k = self.n_tasks
            state["step"] = torch.zeros(k, dtype=torch.float64)
            state["exp_avg_sq"] = torch.zeros((k, *p.shape), dtype=p.dtype, device=p.device)
            if self.variant == "adam":
                state["exp_avg"] = torch.zeros_like(state["exp_avg_sq"])
            if self.dominance_beta is not None:
                state["update_sq"] = torch.zeros_like(state["exp_avg_sq"])
        # all tasks: views, updated in place; a group of them: gathered copies, written back
        sel = slice(None) if len(tasks) == self.n_tasks else torch.tensor(tasks, device=p.device)
        state["step"][tasks] += 1
        t = state["step"][tasks].view(-1, *[1] * p.dim())  # float64, like torch's scalars
        v = state["exp_avg_sq"][sel]
        lr, eps = group["lr"], group["eps"]
        if self.variant == "adam":
            beta1, beta2 = group["betas"]
            m = state["exp_avg"][sel].lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            root_bias2 = (1 - beta2**t).sqrt().to(p.device, p.dtype)
            step_size = (lr / (1 - beta1**t)).to(p.device, p.dtype)
            update = (v.sqrt() / root_bias2).add_(eps)
            update = torch.div(m, update, out=update).mul_(step_size)
            self._write_back(state, "exp_avg", sel, m)
        else:
            if self.variant == "rmsprop":
                v.mul_(group["alpha"]).addcmul_(g, g, value=1 - group["alpha"])
            else:
                v.addcmul_(g, g)
            update = (lr * g).div_(v.sqrt().add_(eps))
        self._write_back(state, "exp_avg_sq", sel, v)
        if self.dominance_beta is not None:
            au = state["update_sq"][sel].lerp_(update * update, 1 - self.dominance_beta)
            self._write_back(state, "update_sq", sel, au)
        p.sub_(update.sum(dim=0))

    @staticmethod
    def _write_back(state: dict, key: str, sel, value: torch.Tensor) -> None:
        if not isinstance(sel, slice):
            state[key][sel] = value

    def task_dominance(self) -> torch.Tensor:
        """rAU [K, N]: each task's share of the squared updates, per shared parameter."""
        au = torch.cat([self.state[p]["update_sq"].flatten(1) for g in self.param_groups
                        for p in g["params"] if "update_sq" in self.state[p]], dim=1)
        return au / au.sum(0, keepdim=True).clamp_min(1e-30)

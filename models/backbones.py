"""Multi-task backbones: x [B, in] → one representation per task, K × [B, H].

- SharedBottom (hard parameter sharing): one MLP shared by every task.
- MMoE (Ma et al., KDD 2018, Eq. 5): n shared experts, one softmax gate per task,
  f_k(x) = Σ_i softmax(W_k x)_i · expert_i(x).
- PLE (Tang et al., RecSys 2020, Eq. 2-4): stacked CGC levels; a task's gate mixes its
  own experts with the shared ones; below the top level a shared gate mixes all
  experts into the input of the next level's shared experts.

Experts of one group run together (`ExpertGroup`): E small MLPs cost one GEMM per
layer instead of E launches. Gates are per-task modules, so every
task-specific parameter belongs to exactly one task (`task_modules`).

forward = decode(encode(x)): `encode` computes the shared representation — the tensors
every task consumes before anything task-specific touches them (HPS: the bottom's
output; MMoE: the input the gates read and the expert outputs; PLE: its input, since
task experts start at the first level) — and `decode` the task-specific rest. Gradient
methods with grad_on=representation take per-task gradients there.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(in_dim: int, hidden: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_dim = h
    return nn.Sequential(*layers)


class ExpertGroup(nn.Module):
    """E independent MLPs with the same shape on the same input, evaluated together.

    The first layers of all experts are one Linear (one GEMM, [B, in] → [B, E·h0]);
    deeper layers are one batched matmul over the experts. Output [B, E, hidden[-1]].
    """

    def __init__(self, n: int, in_dim: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        self.n, self.out_dim = n, hidden[-1]
        self.first = nn.Linear(in_dim, n * hidden[0])
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n, a, b)) for a, b in zip(hidden[:-1], hidden[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n, 1, b)) for b in hidden[1:])
        for w in self.weights:  # nn.Linear's default init, per expert
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(torch.relu(self.first(x)))  # [B, E·h0]
        h = h.view(x.shape[0], self.n, h.shape[-1] // self.n).transpose(0, 1)  # [E, B, h0]
        for w, b in zip(self.weights, self.biases):
            h = self.dropout(torch.relu(torch.baddbmm(b, h, w)))
        return h.transpose(0, 1)  # [B, E, h]


def _mix(gate: nn.Linear, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Σ_i softmax(gate(x))_i · experts[:, i]  →  [B, H]."""
    weights = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # [B, E, 1]
    return (weights * experts).sum(dim=1)


class SharedBottom(nn.Module):
    def __init__(self, in_dim: int, n_tasks: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        self.bottom = mlp(in_dim, hidden, dropout)
        self.n_tasks, self.out_dim = n_tasks, hidden[-1]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.bottom(x)]

    def decode(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        return [parts[0]] * self.n_tasks

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.decode(self.encode(x))

    def task_modules(self, k: int) -> list[nn.Module]:
        return []


class MMoE(nn.Module):
    def __init__(self, in_dim: int, n_tasks: int, n_experts: int, hidden: list[int],
                 dropout: float) -> None:
        super().__init__()
        self.experts = ExpertGroup(n_experts, in_dim, hidden, dropout)
        self.gates = nn.ModuleList(nn.Linear(in_dim, n_experts) for _ in range(n_tasks))
        self.out_dim = hidden[-1]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, self.experts(x)]

    def decode(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        x, experts = parts
        return [_mix(gate, x, experts) for gate in self.gates]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.decode(self.encode(x))

    def task_modules(self, k: int) -> list[nn.Module]:
        return [self.gates[k]]


class CGCLevel(nn.Module):
    """One Customized Gate Control level: per-task experts + shared experts."""

    def __init__(self, in_dim: int, n_tasks: int, task_experts: int, shared_experts: int,
                 hidden: list[int], dropout: float, top: bool) -> None:
        super().__init__()
        self.task_experts = nn.ModuleList(
            ExpertGroup(task_experts, in_dim, hidden, dropout) for _ in range(n_tasks)
        )
        self.shared_experts = ExpertGroup(shared_experts, in_dim, hidden, dropout)
        self.task_gates = nn.ModuleList(
            nn.Linear(in_dim, task_experts + shared_experts) for _ in range(n_tasks)
        )
        all_experts = n_tasks * task_experts + shared_experts
        self.shared_gate = None if top else nn.Linear(in_dim, all_experts)

    def forward(self, task_inputs: list[torch.Tensor], shared_input: torch.Tensor
                ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        shared = self.shared_experts(shared_input)
        own = [experts(x) for experts, x in zip(self.task_experts, task_inputs)]
        outs = [_mix(gate, x, torch.cat([e, shared], dim=1))
                for gate, x, e in zip(self.task_gates, task_inputs, own)]
        if self.shared_gate is None:
            return outs, None
        return outs, _mix(self.shared_gate, shared_input, torch.cat([*own, shared], dim=1))


class PLE(nn.Module):
    def __init__(self, in_dim: int, n_tasks: int, levels: int, task_experts: int,
                 shared_experts: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        dims = [in_dim] + [hidden[-1]] * (levels - 1)
        self.levels = nn.ModuleList(
            CGCLevel(d, n_tasks, task_experts, shared_experts, hidden, dropout, top=(i == levels - 1))
            for i, d in enumerate(dims)
        )
        self.n_tasks, self.out_dim = n_tasks, hidden[-1]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]

    def decode(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        task_inputs, shared = [parts[0]] * self.n_tasks, parts[0]
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)
        return task_inputs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.decode(self.encode(x))

    def task_modules(self, k: int) -> list[nn.Module]:
        """Task k's gates at every level and its experts at the top level. Below the top,
        a task's experts also feed the shared gate, so every task's loss reaches them."""
        return [level.task_gates[k] for level in self.levels] + [self.levels[-1].task_experts[k]]

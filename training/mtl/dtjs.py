"""DTJS inter-task scheduling and its bi-level update ("Dynamic Task and Joint
Scheduling", the DTJS paper in ../shared/papers; ALGORITHMS.md fixes the details).

Inter-task weights from the per-task gradients on the shared parameters:
d_k = mean_{j≠k} cos(g_k, g_j) (direction) and
m_k = mean_{j≠k} [4‖g_k‖‖g_j‖/(‖g_k‖² + ‖g_j‖²) − 1] (magnitude, in (−1, 1]);
φ_k = sigmoid(a_k d_k) + sigmoid(b_k m_k), α = {a, b} learnable. The training loss is
Σ_k φ_k ℓ_k with d, m constants.

α is learnt on dev batches (bi-level), about `updates_per_epoch` = 15 times an epoch (the
authors' script) unless `every` fixes the cadence: ∇_α L_dev ≈ −(∂²L_train/∂α∂θ) · p with
p ≈ H⁻¹ ∇_θ L_dev from the Neumann series H⁻¹ ≈ η Σ_{j=0..J} (I − ηH)^j (η the model's
learning rate at this step — the scheduled one —, H the Hessian of L_train). J = 0 is the first-order version: then the
hypergradient is exactly d/dα L_dev(θ − η ∇_θ L_train(θ, α)) to first order in η.
The released script's elementwise variant of the series is not used (ALGORITHMS.md).
The hypergradient is clipped to norm ≤ 10 and each task's (a_k, b_k) takes an Adam step;
α's learning rate is 0.01 (not the script's 1e-3): at 15 updates an epoch, 1e-3 moves α
by about 0.015 an epoch, so runs of a few epochs trained the fixed-α ablation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mtlrec.training.mtl import collective, learned
from mtlrec.training.mtl.gradients import pairwise_similarity, split_like
from mtlrec.training.mtl.parts import Aggregated, Aggregator, Context, TaskState


def inter_task_stats(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """grads [K, D] → (d [K], m [K]): mean direction and magnitude similarity to the others
    (m's pair term 4‖g_k‖‖g_j‖/(‖g_k‖² + ‖g_j‖²) − 1 is 2·magnitude similarity − 1)."""
    k = grads.shape[0]
    cos, magnitude = pairwise_similarity(grads)
    off = ~torch.eye(k, dtype=torch.bool, device=grads.device)
    return (cos * off).sum(1) / max(k - 1, 1), ((2.0 * magnitude - 1.0) * off).sum(1) / max(k - 1, 1)


def phi(alpha: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """φ_k = sigmoid(a_k d_k) + sigmoid(b_k m_k); alpha [2, K] = (a, b)."""
    return torch.sigmoid(alpha[0] * d) + torch.sigmoid(alpha[1] * m)


def hypergradient(train_loss: Callable[[torch.Tensor], torch.Tensor], dev_loss: torch.Tensor,
                  params: list[torch.nn.Parameter], alpha: torch.Tensor, lr: float,
                  terms: int) -> torch.Tensor:
    """∇_α L_dev ≈ −(∂²L_train/∂α∂θ)·p, p = η Σ_{j≤J} (I − ηH)^j ∇_θ L_dev.

    `train_loss(alpha)` must build L_train from the current graph with α as a live input.
    Under data parallelism each rank's graph holds its share of the global losses
    (`collective`), so every gradient and Hessian-vector product is summed over the ranks.
    """
    v = _total([g.detach() for g in _grads(dev_loss, params, retain_graph=False)])
    grad_train = _grads(train_loss(alpha), params, create_graph=True)
    p = [t.clone() for t in v]
    # A gradient without graph (no loss reaches its parameter, or a kernel with no second
    # derivative: DMP's data-parallel tables) adds nothing to the Hessian-vector product.
    live = [i for i, g in enumerate(grad_train) if g.requires_grad]
    for _ in range(terms):
        hv = torch.autograd.grad([grad_train[i] for i in live], params, grad_outputs=[v[i] for i in live],
                                 retain_graph=True, allow_unused=True)
        hv = _total([torch.zeros_like(t) if h is None else h.detach() for t, h in zip(v, hv)])
        v = [t - lr * h for t, h in zip(v, hv)]
        p = [a + b for a, b in zip(p, v)]
    used = [(g, q) for g, q in zip(grad_train, p) if g.requires_grad]
    mixed = torch.autograd.grad([g for g, _ in used], alpha, grad_outputs=[lr * q for _, q in used],
                                retain_graph=True, allow_unused=True)[0]
    return -collective.total(torch.zeros_like(alpha) if mixed is None else mixed)


def _total(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over the ranks, in one all-reduce."""
    if collective.world_size() == 1 or not tensors:
        return tensors
    flat = collective.total(torch.cat([t.reshape(-1) for t in tensors]))
    return list(split_like(flat, tensors))


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter], retain_graph: bool = True,
           create_graph: bool = False) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph or create_graph,
                                create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


class DTJSWeights(Aggregator):
    """The φ weighting; state: each task's (a_k, b_k) with Adam moments (learnt by
    `DTJSOuter`, fixed without it: the fixed-α ablation)."""

    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        return learned.init(torch.rand(2, len(tasks), generator=generator).t(), tasks)

    def apply(self, grads: torch.Tensor, losses: torch.Tensor, state: TaskState,
              task_ids: Sequence[int], ctx: Context) -> Aggregated:
        d, m = inter_task_stats(grads)
        alpha = learned.values(state, task_ids).t().to(grads)
        weights = phi(alpha, d, m)
        return Aggregated(weights.unsqueeze(1) * grads, weights, state,
                          {"d": d.detach(), "m": m.detach(), "dtjs_phi": weights.tolist()})

    def describe(self, state: TaskState, tasks: Sequence[int]) -> dict[str, Any]:
        return {"dtjs_alpha": learned.values(state, tasks).t().tolist()}


class DTJSOuter:
    """The bi-level outer loop: α's hypergradient step on a dev batch."""

    def __init__(self, every: int | None = None, updates_per_epoch: int = 15, terms: int = 3,
                 alpha_lr: float = 0.01, clip: float = 10.0) -> None:
        self.every, self.updates_per_epoch = every, updates_per_epoch
        self.terms, self.alpha_lr, self.clip = terms, alpha_lr, clip

    def due(self, step: int, epoch_batches: int | None) -> bool:
        """Every `every` steps; by default ≈ `updates_per_epoch` times an epoch (every 100
        steps when the epoch's length is not known)."""
        every = self.every or (max(1, epoch_batches // self.updates_per_epoch) if epoch_batches else 100)
        return step % every == 0

    def update(self, state: TaskState, record: dict[str, Any], losses: torch.Tensor,
               dev_losses: torch.Tensor, params: list[torch.nn.Parameter], lr: float,
               task_ids: Sequence[int]) -> TaskState:
        """`state`: the φ weighting's; `record`: its d, m of this step; `losses` the
        training task losses [k] with graph, `dev_losses` the dev batch's [k]."""
        alpha = learned.values(state, task_ids).t().to(losses).requires_grad_()
        d, m = record["d"], record["m"]
        hg = hypergradient(lambda a: (phi(a, d, m) * losses).sum(), dev_losses.sum(), params,
                           alpha, lr, self.terms)
        hg = hg * (self.clip / hg.norm().clamp_min(self.clip))
        return learned.adam(state, task_ids, hg.t(), self.alpha_lr)

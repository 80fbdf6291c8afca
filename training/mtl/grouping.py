"""Selective task group updates: "Selective Task Group Updates for Multi-Task
Optimization" (Jeong & Yoon), Sec. 3-4 (proximal inter-task affinity, Eq. 4-6, and the
grouping of Sec. 4; ALGORITHMS.md fixes the details).

On each batch the groups are updated one after another, in an order shuffled every
batch (seeded, as the released code does). The update of group G changes every task's
loss on the same batch; x_t = 1 − L_t(after)/L_t(before), divided by |G|, is credited
to every source s ∈ G: A[s, t] ← (1 − β)A[s, t] + βx. Inside the group (t ∈ G) both
losses moved together, so: s = t keeps x_t only when ≥ 0; x_s, x_t of the same sign
give x_t; otherwise −max(x_s, x_t). The change is credited to the group that caused it
(the released code credits the group about to be updated: off by one).

After the warm-up the tasks are regrouped at every step (`regroup_every`) by affinity
propagation (scikit-learn) on the affinity with each column normalised by its diagonal
and symmetrised; when it does not converge the previous groups stay. The preference
decides how much help makes a group. Default 0: tasks with positive affinity are grouped,
negative ones kept apart — the paper's rule (Sec. 3.3 and Theorem 3). "median" is
scikit-learn's default, used by the released code: with it two tasks (similarity s,
median (1 + s)/2) merge only when s > 1, i.e. when each task's update helps the other
more than itself, so two tasks that help each other a little never merge (census:
s = 0.25–0.79 over a whole epoch). Two tasks are no special case in either: s above the
preference merges them, below splits them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.cluster import AffinityPropagation
from sklearn.exceptions import ConvergenceWarning

from mtlrec.training.mtl.parts import Context, TaskState

Update = Callable[[list[int]], torch.Tensor]  # one update of a group → the batch's losses [K] before it
Measure = Callable[[], torch.Tensor]  # the batch's losses [K] now, without an update


def credit(affinity: torch.Tensor, group: list[int], before: torch.Tensor,
           after: torch.Tensor, beta: float, targets: Sequence[int] | None = None) -> torch.Tensor:
    """Fold the loss change caused by updating `group` into A [K, K] (returns a new A);
    `targets`: the tasks whose loss was measured (default all; a task without label in
    the batch has no loss change to credit)."""
    x = (1.0 - after / before.clamp_min(1e-12)) / len(group)
    out = affinity.clone()
    for s in group:
        for t in range(affinity.shape[0]) if targets is None else targets:
            value = _within_group(x[s], x[t], s == t) if t in group else x[t]
            if value is not None:
                out[s, t] = (1.0 - beta) * affinity[s, t] + beta * value
    return out


def _within_group(x_s: torch.Tensor, x_t: torch.Tensor, same: bool) -> torch.Tensor | None:
    if same:
        return x_t if x_t >= 0 else None
    if (x_s >= 0) == (x_t >= 0):
        return x_t
    return -torch.maximum(x_s, x_t)


def regroup(affinity: torch.Tensor, previous: list[list[int]], preference: float | str = 0.0,
            seed: int = 0) -> list[list[int]]:
    """Task groups by affinity propagation (each sorted, ordered by first task);
    `previous` when it does not converge or no pair is above or below the preference."""
    a = affinity.double().cpu().numpy()
    diag = np.diag(a).copy()
    diag[np.abs(diag) < 1e-12] = 1e-12
    normalised = a / diag[None, :]
    similarity = 0.5 * (normalised + normalised.T)
    preference = np.median(similarity) if preference == "median" else float(preference)
    if np.allclose(similarity[~np.eye(len(a), dtype=bool)], preference):
        return previous  # every pair exactly as close as the preference: nothing to decide
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        # equal off-diagonal similarities (always so for two tasks) have an exact answer,
        # which scikit-learn returns with a warning
        warnings.filterwarnings("ignore", message="All samples have mutually equal similarities")
        try:
            ap = AffinityPropagation(affinity="precomputed", preference=preference,
                                     random_state=seed).fit(similarity)
        except ConvergenceWarning:
            return previous
    labels = ap.labels_
    if labels is None or (labels < 0).any():
        return previous
    return [np.flatnonzero(labels == c).tolist() for c in np.unique(labels)]


class JointSchedule:
    """One update of every task per batch."""

    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        return {}

    def run(self, update: Update, measure: Measure, state: TaskState, ctx: Context, tasks: list[int]
            ) -> tuple[torch.Tensor, TaskState, dict[str, Any]]:
        """`tasks`: those with labels in the batch (all, unless some label is missing)."""
        return update(list(tasks)), state, {}

    def describe(self, state: TaskState, tasks: Sequence[int]) -> dict[str, Any]:
        return {}


class GroupedSchedule:
    """State: the affinity A [K, K] (source → target) and the current groups."""

    def __init__(self, beta: float = 1e-3, warmup_steps: int = 100, regroup_every: int = 1,
                 preference: float | str = 0.0, initial: list[list[int]] | None = None) -> None:
        self.beta, self.warmup_steps, self.initial = beta, warmup_steps, initial
        self.regroup_every, self.preference = regroup_every, preference

    def init_state(self, tasks: Sequence[int], generator: torch.Generator) -> TaskState:
        groups = self.initial or [[t] for t in tasks]
        if sorted(t for g in groups for t in g) != list(tasks):
            raise ValueError(f"method.grouped.initial={groups} is not a partition of the "
                             f"{len(tasks)} tasks 0..{len(tasks) - 1}")
        return {"affinity": torch.zeros(len(tasks), len(tasks)), "groups": [list(g) for g in groups]}

    def run(self, update: Update, measure: Measure, state: TaskState, ctx: Context, tasks: list[int]
            ) -> tuple[torch.Tensor, TaskState, dict[str, Any]]:
        """M = #groups updates on the batch; each loss change is credited to its cause.
        `tasks`: those with labels in the batch; a group is updated on its tasks among them
        (none: skipped), and only their loss changes are credited. Returns the batch's
        losses before any update, the state, and the new groups when they changed."""
        affinity, groups = state["affinity"], state["groups"]
        order = [groups[i] for i in torch.randperm(len(groups), generator=ctx.generator).tolist()]
        order = [g for g in ([t for t in group if t in tasks] for group in order) if g]
        targets = None if len(tasks) == affinity.shape[0] else tasks
        first = before = previous = None
        for group in order:
            losses = update(group).detach().cpu()
            if previous is not None:
                affinity = credit(affinity, previous, before, losses, self.beta, targets)
            first = losses if first is None else first
            before, previous = losses, group
        affinity = credit(affinity, previous, before, measure().detach().cpu(), self.beta, targets)
        events = {}
        if ctx.step > self.warmup_steps and (ctx.step - self.warmup_steps) % self.regroup_every == 0:
            regrouped = regroup(affinity, groups, self.preference)
            if regrouped != groups:
                events["group_changes"] = [{"step": ctx.step, "groups": regrouped}]
            groups = regrouped
        return first, {"affinity": affinity, "groups": groups}, events

    def describe(self, state: TaskState, tasks: Sequence[int]) -> dict[str, Any]:
        return {"affinity": state["affinity"].tolist(), "groups": [list(g) for g in state["groups"]]}

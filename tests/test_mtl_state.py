"""The step's parts keep their state per task id: every aggregator under every schedule,
a stateful method defined here and registered, checkpoints of both formats, and
replays that pin the wiring (grouped crediting, AdaTask + PCGrad, DTJS's α)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers import FIXTURES, preset
from mtlrec.training import checkpoint
from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.mtl import learned
from mtlrec.training.mtl.dtjs import inter_task_stats, phi
from mtlrec.training.mtl.gradients import per_task_gradients
from mtlrec.training.mtl.parts import Aggregated, Aggregator, Context, TaskState
from mtlrec.training.mtl.pcgrad import pcgrad
from mtlrec.training.mtl.registry import AGGREGATORS, register_aggregator
from mtlrec.training.mtl.step import make_step
from mtlrec.training.step import Pass


class Tiny(nn.Module):
    """A shared layer and one linear head per task (the interface the step needs)."""

    def __init__(self, k: int = 3, d_in: int = 6, hidden: int = 5) -> None:
        super().__init__()
        self.shared = nn.Linear(d_in, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(k))

    def shared_parameters(self, include_embeddings: bool = False) -> list[nn.Parameter]:
        return list(self.shared.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(x))
        return torch.cat([head(h) for head in self.heads], 1)


def regression(i: int, k: int = 3, corrupt: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch i of a K-task regression (tasks in `corrupt`: labels of the wrong sign)."""
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(32, 6, generator=g)
    y = x @ torch.randn(6, k, generator=torch.Generator().manual_seed(7)) + 0.3 * torch.randn(32, k, generator=g)
    for t in corrupt:
        y[:, t] = -y[:, t]
    return x, y


def forward_on(model: nn.Module, i: int, **kw):
    x, y = regression(i, **kw)
    return lambda split: Pass((model(x) - y) ** 2)


def ctx(step: int, seed: int = 0) -> Context:
    return Context(torch.Generator().manual_seed(seed), step, 0, 1e-3)


# ---------------------------------------------------------------- state per task id
GROUPINGS = [[[0], [1, 2]], [[0, 1], [2, 3]]]


@pytest.mark.parametrize("groups", GROUPINGS, ids=["0|12", "01|23"])
@pytest.mark.parametrize("name", sorted(n for n in AGGREGATORS if n != "sum"))
def test_a_group_sees_only_its_own_tasks_state(name, groups):
    """Updating groups one after another, a group's rows depend only on its own tasks'
    gradients: change every other group's gradients and its rows stay the same. (Before
    the state was keyed by task id, DB-MTL, MoCoGrad and GradVac mixed the groups' state
    or raised IndexError.)"""
    k = sum(len(g) for g in groups)
    method = AGGREGATORS[name](MethodConfig(name=name, aggregate=name))
    watched = groups[-1]

    def run(other_seed: int) -> list[torch.Tensor]:
        state = method.init_state(list(range(k)), torch.Generator().manual_seed(0))
        rows = []
        for step in range(1, 5):
            for gi, group in enumerate(groups):
                seed = 1000 * step + gi + (0 if group == watched else other_seed)
                grads = torch.randn(len(group), 8, generator=torch.Generator().manual_seed(seed))
                losses = 1.0 + torch.rand(len(group), generator=torch.Generator().manual_seed(seed))
                out = method.apply(grads, losses, state, group, ctx(step, seed=step))
                assert out.rows.shape == grads.shape and out.head_weights.shape == (len(group),)
                state = out.state
                if group == watched:
                    rows.append(out.rows)
        return rows

    for a, b in zip(run(0), run(7), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("groups", GROUPINGS, ids=["0|12", "01|23"])
@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_aggregator_trains_under_grouped_updates(name, groups):
    k = sum(len(g) for g in groups)
    torch.manual_seed(0)
    model = Tiny(k)
    method = MethodConfig(name=name, aggregate=name, schedule="grouped", diagnostics_every=2,
                          loss="log" if name == "dbmtl" else "identity",
                          grouped={"initial": groups, "warmup_steps": 100})
    step = make_step(method, model, TrainerConfig(lr=1e-2), k, 0)
    first = [float(step.train_batch(forward_on(model, i, k=k)).sum()) for i in range(4)]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert step.diagnostics[-1]["groups"] == groups
    assert float(step.train_batch(forward_on(model, 0, k=k)).sum()) < first[0]  # it learnt


class UpdateCounter(Aggregator):
    """A stateful aggregator defined outside the package: each task's update count
    scales its gradient, so wrong bookkeeping changes the training."""

    def init_state(self, tasks, generator) -> TaskState:
        return {t: {"updates": 0} for t in tasks}

    def apply(self, grads, losses, state, task_ids, ctx) -> Aggregated:
        counts = torch.tensor([state[t]["updates"] + 1 for t in task_ids], dtype=grads.dtype)
        new = {**state, **{t: {"updates": state[t]["updates"] + 1} for t in task_ids}}
        return Aggregated(grads / counts.sqrt().unsqueeze(1), torch.ones(len(task_ids)), new)


def test_a_stateful_aggregator_defined_here_runs_grouped_and_resumes_from_a_checkpoint(tmp_path):
    if "update_counter" not in AGGREGATORS:
        register_aggregator("update_counter", lambda m: UpdateCounter())
    method = MethodConfig(name="counter", aggregate="update_counter", schedule="grouped",
                          grouped={"initial": [[0], [1, 2]], "warmup_steps": 100})

    def fresh():
        torch.manual_seed(0)
        model = Tiny(3)
        return model, make_step(method, model, TrainerConfig(lr=1e-2), 3, 0)

    model, step = fresh()
    for i in range(6):
        step.train_batch(forward_on(model, i))
    assert {t: s["updates"] for t, s in step.states["aggregator"].items()} == {0: 6, 1: 6, 2: 6}

    model, step = fresh()
    for i in range(3):
        step.train_batch(forward_on(model, i))
    checkpoint.save({"step": step.state_dict(), "model": model.state_dict(),
                     "optimizers": step.optimizers.state_dict()}, tmp_path / "c.pt")
    saved = checkpoint.load(tmp_path / "c.pt")  # weights_only: plain values only
    resumed_model, resumed = fresh()
    resumed_model.load_state_dict(saved["model"])
    resumed.optimizers.load_state_dict(saved["optimizers"])
    resumed.load_state_dict(saved["step"])
    for i in range(3, 6):
        resumed.train_batch(forward_on(resumed_model, i))
    straight_model, straight = fresh()
    for i in range(6):
        straight.train_batch(forward_on(straight_model, i))
    assert resumed.states["aggregator"] == straight.states["aggregator"]
    for a, b in zip(resumed_model.parameters(), straight_model.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


LEGACY = torch.load(FIXTURES / "legacy_step_checkpoints.pt", weights_only=True)


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_checkpoints_of_the_first_format_load_and_continue_as_before(name):
    """Step states written by the single-struct step (commit 6d9f8c2) after 5 batches,
    with the parameters that code reached one batch later: loaded into today's step,
    the next batch lands on the same parameters (grouped: the same affinity and groups;
    its group order is shuffled now, so its next batch differs by design)."""
    saved = LEGACY[name]
    method = MethodConfig(**saved["method"])
    model = Tiny(3)
    model.load_state_dict(saved["model"])
    step = make_step(method, model, TrainerConfig(lr=1e-2), 3, 0)
    step.optimizers.load_state_dict(saved["optimizers"])
    step.load_state_dict(saved["step"])
    if method.schedule == "grouped":
        old = saved["step"]["state"]
        assert torch.equal(step.states["schedule"]["affinity"], old["affinity"])
        assert step.states["schedule"]["groups"] == old["groups"] and step.count == old["step"]
        return
    step.train_batch(forward_on(model, 5), epoch=2, dev=forward_on(model, 55))
    for key, value in model.state_dict().items():
        assert torch.allclose(value, saved["after"][key], atol=1e-6), key


# ---------------------------------------------------------------- replays of the wiring
def scripted(values: list[list[float]], model: nn.Module):
    """A forward whose task losses follow a script, one row per call (gradients flow to
    the model, all zero)."""
    rows = iter(values)

    def forward(split: bool) -> Pass:
        tie = sum(p.sum() for p in model.parameters()) * 0.0
        return Pass((torch.tensor(next(rows)) + tie).expand(4, -1))

    return forward


@pytest.mark.parametrize("seed", [0, 1], ids=["order 0,1", "order 1,0"])
def test_grouped_updates_credit_each_loss_change_to_the_group_that_caused_it(seed):
    """β = 1: the affinity is the last change. The first group's update moved the
    losses from L0 to L1, the second's from L1 to L2 (the after-batch forward). The
    order of the groups is drawn from the step's seeded generator."""
    model = Tiny(2)
    method = MethodConfig(name="grouped", schedule="grouped", diagnostics_every=0,
                          grouped={"beta": 1.0, "warmup_steps": 100})
    step = make_step(method, model, TrainerConfig(), 2, seed=seed)
    first, second = [[g] for g in torch.randperm(2, generator=torch.Generator().manual_seed(seed)).tolist()]
    L0, L1, L2 = [1.0, 2.0], [0.8, 2.2], [0.7, 1.1]
    step.train_batch(scripted([L0, L1, L2], model))
    a = step.states["schedule"]["affinity"]
    x1 = 1 - torch.tensor(L1) / torch.tensor(L0)  # caused by the first group
    x2 = 1 - torch.tensor(L2) / torch.tensor(L1)  # caused by the second
    s, o = first[0], second[0]
    assert a[s, o] == pytest.approx(float(x1[o])) and a[o, s] == pytest.approx(float(x2[s]))
    if x1[s] >= 0:
        assert a[s, s] == pytest.approx(float(x1[s]))
    assert a[o, o] == pytest.approx(float(x2[o]))


def test_two_tasks_merge_and_split_again_on_a_scripted_affinity():
    """Regrouping at every step after the warm-up: each task's update helps the other
    more than itself → one group; then, updated together, task 1's loss rises → apart."""
    model = Tiny(2)
    method = MethodConfig(name="grouped", schedule="grouped", diagnostics_every=1,
                          grouped={"beta": 1.0, "warmup_steps": 0})
    step = make_step(method, model, TrainerConfig(), 2, seed=0)
    # batch 1, groups [0], [1] (either order: symmetric): own loss −5 %, the other's −20 %
    step.train_batch(scripted([[1.0, 1.0], [0.95, 0.8], [0.76, 0.76]], model))
    assert step.states["schedule"]["groups"] == [[0, 1]]
    # batch 2, group [0, 1]: task 0 falls, task 1 rises → opposite signs, negative affinity
    step.train_batch(scripted([[1.0, 1.0], [0.9, 1.2]], model))
    assert step.states["schedule"]["groups"] == [[0], [1]]
    step.train_batch(scripted([[1.0, 1.0]] * 3, model))  # no change: its sample shows step 2's
    changes = [c for r in step.diagnostics for c in r.get("group_changes", [])]
    assert changes == [{"step": 1, "groups": [[0, 1]]}, {"step": 2, "groups": [[0], [1]]}]


def test_adatask_with_pcgrad_replays_a_reference():
    """Projected rows (PCGrad, the step's seeded generator) feed per-task Adam moments
    of the shared parameters; heads take plain Adam on Σℓ. Tasks 0 and 1 conflict."""
    torch.manual_seed(0)
    model = Tiny(2)
    model.heads[1].load_state_dict(model.heads[0].state_dict())  # opposite targets then conflict
    reference = copy.deepcopy(model)
    step = make_step(preset("adatask aggregate=pcgrad", diagnostics_every=0), model,
                     TrainerConfig(lr=1e-2), 2, seed=5)

    def data(i):
        x, y = regression(i, k=2)
        return x, torch.stack([y[:, 0], -y[:, 0]], 1)

    shared = reference.shared_parameters()
    heads = torch.optim.Adam(reference.heads.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(5)
    moments = [[(torch.zeros_like(p), torch.zeros_like(p)) for p in shared] for _ in range(2)]
    for i in range(1, 4):
        x, y = data(i)
        step.train_batch(lambda split: Pass((model(x) - y) ** 2))
        losses = ((reference(x) - y) ** 2).mean(0)
        rows = []
        for k in range(2):
            grads = torch.autograd.grad(losses[k], shared, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        projected = pcgrad(torch.stack(rows), gen)
        assert not torch.allclose(projected, torch.stack(rows))  # the surgery acted
        heads.zero_grad()
        losses.sum().backward(inputs=list(reference.heads.parameters()))
        heads.step()
        with torch.no_grad():
            for k in range(2):
                offset = 0
                for j, p in enumerate(shared):
                    g = projected[k, offset:offset + p.numel()].view_as(p)
                    offset += p.numel()
                    m, v = moments[k][j]
                    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
                    moments[k][j] = (m, v)
                    p -= 1e-2 * (m / (1 - 0.9**i)) / ((v / (1 - 0.999**i)).sqrt() + 1e-8)
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_learned_weights_follow_torch_adam_per_task():
    values = torch.tensor([0.5, -1.0, 2.0])
    state = learned.init(values, [0, 1, 2])
    param = values.clone().requires_grad_()
    adam = torch.optim.Adam([param], lr=0.05, weight_decay=1e-3)
    solo = torch.tensor([2.0]).requires_grad_()  # task 2, stepped alone in between
    solo_adam = torch.optim.Adam([solo], lr=0.05, weight_decay=1e-3)
    for i in range(4):
        grad = torch.tensor([1.0, -2.0, 0.5]) * (i + 1)
        state = learned.adam(state, [0, 1, 2] if i != 2 else [2], grad if i != 2 else grad[2:], 0.05, 1e-3)
        if i != 2:
            param.grad = grad.clone()
            adam.step()
    assert torch.allclose(learned.values(state, [0, 1]), param.detach()[:2], atol=1e-6)
    for i in range(4):
        solo.grad = torch.tensor([0.5 * (i + 1)])
        solo_adam.step()
    assert torch.allclose(learned.values(state, [2]), solo.detach(), atol=1e-6)  # own step count


# ---------------------------------------------------------------- DTJS's α
def test_dtjs_alpha_learns_to_weigh_a_corrupted_task_down():
    """Task 2's training labels have the wrong sign, its dev labels do not: training on
    task 2 raises the dev loss, so α must lower φ_2 (measured at the same d, m), and
    raise φ_0, φ_1, whose training lowers it. A sign error in the hypergradient fails."""
    torch.manual_seed(0)
    model = Tiny(3)
    method = MethodConfig(name="dtjs", aggregate="dtjs", outer="dtjs", diagnostics_every=0,
                          dtjs={"every": 1, "terms": 0, "alpha_lr": 0.05})
    step = make_step(method, model, TrainerConfig(lr=0.05), 3, 0)
    start = learned.values(step.states["aggregator"], [0, 1, 2]).t().clone()
    for i in range(40):
        step.train_batch(forward_on(model, i, corrupt=(2,)), dev=forward_on(model, 500 + i))
    alpha = learned.values(step.states["aggregator"], [0, 1, 2]).t()
    x, y = regression(999, corrupt=(2,))
    losses = ((model(x) - y) ** 2).mean(0)
    d, m = inter_task_stats(per_task_gradients(losses, model.shared_parameters()))
    before, after = phi(start, d, m), phi(alpha, d, m)
    assert after[2] < before[2]
    assert after[0] > before[0] and after[1] > before[1]


def test_a_short_epoch_is_still_sampled_about_ten_times():
    """diagnostics_every=200 in a 22-step epoch would give one point, or none: the cadence
    follows the epoch's length (every 22 // 10 = 2 steps), so its plots have lines."""
    model = Tiny(3)
    step = make_step(preset("pcgrad"), model, TrainerConfig(lr=1e-2), 3, seed=0)
    assert step.method.diagnostics_every == 200
    for i in range(22):
        step.train_batch(forward_on(model, i), epoch_batches=22)
    assert [r["step"] for r in step.diagnostics] == list(range(2, 23, 2))
    long = make_step(preset("pcgrad", diagnostics_every=5), model, TrainerConfig(lr=1e-2), 3, seed=0)
    for i in range(20):
        long.train_batch(forward_on(model, i), epoch_batches=1000)  # a long epoch: every 5 steps
    assert [r["step"] for r in long.diagnostics] == [5, 10, 15, 20]

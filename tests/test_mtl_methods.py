"""Hand-computed expectations for the gradient-level methods on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from mtlrec.training.config import MethodConfig
from mtlrec.training.mtl.dbmtl import DBMTL, dbmtl
from mtlrec.training.mtl.gradients import per_task_gradients, write_gradient
from mtlrec.training.mtl.mocograd import mocograd
from mtlrec.training.mtl.parts import Context
from mtlrec.training.mtl.pcgrad import pcgrad


def test_pcgrad_projects_conflicting_pairs_by_hand():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1·g2 = -1 < 0
    out = pcgrad(torch.stack([g1, g2])).sum(0)
    # g1 - (-1/2) g2 = [0.5, 0.5]; g2 - (-1/1) g1 = [0, 1]; sum = [0.5, 1.5]
    assert torch.allclose(out, torch.tensor([0.5, 1.5]))
    aligned = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(pcgrad(aligned), aligned)  # no conflict: plain sum


def test_dbmtl_gives_every_task_the_largest_norm():
    grads = torch.tensor([[3.0, 4.0], [0.0, 0.5]])  # norms 5 and 0.5
    out, ema = dbmtl(grads, torch.zeros(2, 2), torch.zeros(2))  # β = 0: the EMA is the gradient
    assert torch.allclose(out.sum(0), 5 * (torch.tensor([0.6, 0.8]) + torch.tensor([0.0, 1.0])), atol=1e-6)
    assert torch.equal(ema, grads)


def test_dbmtl_replays_its_ema_with_a_decaying_beta_per_task():
    """β_t = 0.9/√t by default, t counting each task's own updates: a reference written
    here, fed different gradients every step (equal ones would hide β_t)."""
    gen = torch.Generator().manual_seed(3)
    method = DBMTL()  # the defaults: β = 0.9, σ = 0.5
    state, ema, t = method.init_state([0, 1, 2], gen), torch.zeros(3, 4), torch.zeros(3)
    for step, group in enumerate([[0, 1, 2], [1, 2], [0, 1, 2], [2], [0, 2]], start=1):
        grads = torch.randn(len(group), 4, generator=gen) * torch.tensor([[1.0], [3.0], [0.2]])[:len(group)]
        out = method.apply(grads, torch.ones(len(group)), state, group,
                           Context(torch.Generator(), step, 0, 1e-3))
        state = out.state
        t[group] += 1
        beta_t = 0.9 / t[group].sqrt()
        ema[group] = beta_t[:, None] * ema[group] + (1 - beta_t[:, None]) * grads
        norms = ema[group].norm(dim=1)
        assert torch.allclose(out.rows, norms.max() * ema[group] / (norms[:, None] + 1e-8), atol=1e-6)
    constant = DBMTL(sigma=0.0)  # β_t = β: the reference library's default
    assert constant.apply(grads, torch.ones(2), constant.init_state([0, 1, 2], gen), group,
                          Context(torch.Generator(), 1, 0, 1e-3)).state[0]["updates"] == 1
    assert MethodConfig(name="dbmtl", loss="log", aggregate="dbmtl").dbmtl.sigma == 0.5


def test_mocograd_calibrates_with_the_previous_momentum():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    m = torch.tensor([[0.0, 2.0], [0.0, 0.0]])  # task 1 has no momentum yet: skipped
    shared, new_m = mocograd(g, m, lam=0.5, beta1=0.9)
    # task 1 (g1·g0 = -1 < 0) is calibrated with m_0: g1 + 0.5·(‖g0‖/‖m0‖)·m0 = [-1, 1.5]
    # task 0 conflicts with g1 but m_1 = 0 → unchanged
    assert torch.allclose(shared, torch.tensor([[1.0, 0.0], [-1.0, 1.5]]))
    assert torch.allclose(new_m, 0.9 * m + 0.1 * g)
    no_conflict, _ = mocograd(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), m, lam=0.5)
    assert torch.allclose(no_conflict.sum(0), torch.tensor([2.0, 1.0]))


def test_per_task_gradients_and_write_back():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor(0.5))
    unused = torch.nn.Parameter(torch.zeros(3))
    losses = torch.stack([(w * w).sum() + b, (3 * w).sum()])
    G = per_task_gradients(losses, [w, b, unused])
    assert torch.allclose(G, torch.tensor([[2.0, 4.0, 1.0, 0, 0, 0], [3.0, 3.0, 0.0, 0, 0, 0]]))
    write_gradient([w, b, unused], G.sum(0))
    assert torch.allclose(w.grad, torch.tensor([5.0, 7.0])) and b.grad.item() == 1.0
    losses.sum().backward()  # the graph was kept for the rest of the model


def test_mgda_finds_the_min_norm_point():
    from mtlrec.training.mtl.mgda import mgda, mgda_weights

    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(mgda(orthogonal).sum(0), torch.tensor([0.5, 0.5]), atol=1e-5)
    nested = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # the shorter one is the min-norm point
    assert torch.allclose(mgda_weights(nested), torch.tensor([1.0, 0.0]), atol=1e-5)
    g = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    d = mgda(g).sum(0)
    assert (g @ d >= -1e-5).all()  # no task's loss increases along d


def test_cagrad_by_hand_and_on_conflicts():
    from mtlrec.training.mtl.cagrad import cagrad

    g = torch.tensor([3.0, 4.0])
    same = cagrad(torch.stack([g, g]), c=0.4).sum(0)  # g_w = g₀ = g: d = (1 + c) g / (1 + c²)
    assert torch.allclose(same, 1.4 / 1.16 * g, atol=1e-5)
    assert torch.allclose(cagrad(torch.stack([g, -g]), c=0.0).sum(0), torch.zeros(2), atol=1e-6)
    conflict = torch.tensor([[1.0, 0.1], [-0.5, 1.0]])
    d = cagrad(conflict, c=0.4).sum(0)
    worst = (conflict @ (d * 1.16)).min()  # undo the 1/(1 + c²) rescale
    assert worst >= (conflict @ conflict.mean(0)).min() - 1e-6  # worst task does no worse than EW


def test_imtl_g_projects_equally_on_every_task():
    from mtlrec.training.mtl.imtl import imtl_g

    g = torch.randn(3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = imtl_g(g).sum(0)
    projections = (g / g.norm(dim=1, keepdim=True)) @ d
    assert torch.allclose(projections, projections[0].expand(3), atol=1e-9)
    two = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(imtl_g(two).sum(0), torch.tensor([2 / 3, 2 / 3], dtype=torch.float64))


def test_gradvac_lifts_the_cosine_to_its_target():
    from mtlrec.training.mtl.gradvac import gradvac

    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # cos = 0
    targets = torch.full((2, 2), 0.5, dtype=torch.float64)
    shared, new_targets = gradvac(g, targets, beta=0.01)
    # each g_i is moved to cos 0.5 with the other: g_0 → [1, 1/√3], g_1 → [1/√3, 1]
    third = 1 / 3 ** 0.5
    assert torch.allclose(shared, torch.tensor([[1, third], [third, 1]], dtype=torch.float64))
    assert torch.allclose(new_targets[0, 1], torch.tensor(0.99 * 0.5, dtype=torch.float64))
    above, _ = gradvac(g, torch.full((2, 2), -0.5, dtype=torch.float64))
    assert torch.allclose(above, g)  # already above target: untouched


def test_gls_is_the_geometric_mean_and_weighs_small_losses_up():
    from mtlrec.training.mtl.gls import gls

    losses = torch.tensor([0.5, 2.0], requires_grad=True)
    value = gls(losses)
    assert value.item() == pytest.approx(1.0)  # √(0.5 · 2)
    value.backward()
    # ∂GLS/∂L_k = GLS / (K · L_k)
    assert torch.allclose(losses.grad, torch.tensor([1.0 / (2 * 0.5), 1.0 / (2 * 2.0)]))


def test_rlw_weights_are_random_on_the_simplex_and_seeded():
    from mtlrec.training.mtl.rlw import rlw_weights

    a = [rlw_weights(3, torch.Generator().manual_seed(4)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    g = torch.Generator().manual_seed(4)
    first, second = rlw_weights(3, g), rlw_weights(3, g)
    assert not torch.equal(first, second)
    for w in (first, second):
        assert (w > 0).all() and w.sum().item() == pytest.approx(1.0)

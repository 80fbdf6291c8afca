"""Hand-computed expectations for the loss-level, optimizer-level, schedule-level and
DTJS parts (the gradient aggregators are in test_mtl_methods.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import lambertw

from mtlrec.training.mtl.adatask import AdaTask
from mtlrec.training.mtl.aligned_mtl import aligned_mtl
from mtlrec.training.mtl.dtjs import hypergradient, inter_task_stats, phi
from mtlrec.training.mtl.dwa import DWA
from mtlrec.training.mtl.famo import famo_logit_gradient, famo_weights
from mtlrec.training.mtl.graddrop import graddrop
from mtlrec.training.mtl.gradnorm import gradnorm_weight_gradient, renormalise
from mtlrec.training.mtl.grouping import credit, regroup
from mtlrec.training.mtl.nash_mtl import nash_weights
from mtlrec.training.mtl.parts import Context
from mtlrec.training.mtl.superloss import lambert_w0, superloss, superloss_sigma, update_threshold
from mtlrec.training.mtl.uw import UW

F64 = torch.float64


# ---------------------------------------------------------------- SuperLoss
def test_lambert_w0_matches_scipy_from_the_branch_point_to_large_values():
    x = np.concatenate([[-1 / np.e + 1e-12, -0.36, -0.3, -0.1, 0.0, 0.5, 1.0, 2.9, 3.1, 10.0],
                        np.logspace(2, 8, 7)])
    for dtype, tol in ((F64, 1e-10), (torch.float32, 1e-4)):
        ours = lambert_w0(torch.tensor(x, dtype=dtype)).double().numpy()
        assert np.allclose(ours, lambertw(x).real, rtol=tol, atol=tol)
    assert lambert_w0(torch.tensor(-1 / math.e, dtype=F64)).item() == pytest.approx(-1.0, abs=1e-6)


def test_superloss_sigma_at_its_branch_points():
    lam = 1.0
    tau = torch.tensor(1.0, dtype=F64)
    at_tau = superloss_sigma(torch.tensor([1.0], dtype=F64), tau, lam)  # β = 0 → W₀(0) = 0 → σ = 1
    assert at_tau.item() == pytest.approx(1.0)
    easy = superloss_sigma(torch.tensor([1.0 - 2.0, 1.0 - 5.0], dtype=F64), tau, lam)  # β ≤ −2/e
    assert torch.allclose(easy, torch.full((2,), math.e, dtype=F64))
    hard = superloss_sigma(torch.tensor([1.0 + 1e4], dtype=F64), tau, lam)
    assert 0 < hard.item() < 0.01  # σ → 0 as β → ∞
    beta = torch.tensor([0.3, 2.0, -0.5], dtype=F64)
    expected = np.exp(-lambertw(0.5 * np.maximum(beta.numpy(), -2 / np.e)).real)
    assert np.allclose(superloss_sigma(1.0 + beta, tau, lam).numpy(), expected)


def test_superloss_value_has_no_gradient_through_sigma_and_threshold_is_an_ema():
    losses = torch.tensor([[0.2, 1.0], [0.8, 3.0]], dtype=F64, requires_grad=True)
    tau = update_threshold(None, losses)
    assert torch.allclose(tau, torch.tensor([0.5, 2.0], dtype=F64))
    task, sigma = superloss(losses, tau, torch.ones(2, dtype=F64))
    expected = ((losses - tau) * sigma + torch.log(sigma) ** 2).mean(0)
    assert torch.allclose(task, expected)
    task.sum().backward()
    assert torch.allclose(losses.grad, sigma / 2)  # σ is a constant: ∂/∂l_i = σ_i / B
    assert sigma[0, 0] > sigma[1, 0]  # the easier sample weighs more
    assert torch.allclose(update_threshold(tau, losses * 3), 0.9 * tau + 0.1 * 3 * tau)


# ---------------------------------------------------------------- loss weightings
def test_uw_weights_and_log_variance_steps_are_the_gradients_of_its_objective():
    """L = Σ ½e^{−s}L_k + ½s_k (Kendall et al., Eq. 7): the weights are ∂L/∂L_k, and s
    takes torch Adam's step along ∂L/∂s (zero where e^s = L_k: task 1 stays put)."""
    losses = torch.tensor([3.0, 1.0])
    s = torch.zeros(2, requires_grad=True)
    (0.5 * torch.exp(-s) * losses + 0.5 * s).sum().backward()
    reference = torch.optim.Adam([s], lr=0.1)
    uw = UW()
    w, state = uw.weights(losses, uw.init_state([0, 1], torch.Generator()), [0, 1],
                          Context(torch.Generator(), 1, 0, 0.1))
    assert torch.allclose(w, torch.full((2,), 0.5))  # ∂L/∂L_k = ½e^{−s}
    reference.step()
    assert torch.allclose(torch.stack([state[t]["value"] for t in (0, 1)]), s.detach())
    assert state[0]["value"] > 0 and state[1]["value"] == 0  # the larger loss weighs less next


def test_dwa_uses_the_last_two_epoch_loss_ratios():
    dwa, ctx = DWA(2.0), lambda epoch: Context(torch.Generator(), 1, epoch, 1e-3)
    state = dwa.init_state([0, 1], torch.Generator())
    for losses, epoch in [([1.0, 1.0], 0), ([3.0, 1.0], 0), ([1.0, 1.0], 1)]:  # means [2, 1], [1, 1]
        w, state = dwa.weights(torch.tensor(losses), state, [0, 1], ctx(epoch))
        assert torch.equal(w, torch.ones(2))  # fewer than two finished epochs
    w, state = dwa.weights(torch.tensor([5.0, 5.0]), state, [0, 1], ctx(2))  # epochs 0, 1 finished
    expected = 2 * torch.softmax(torch.tensor([1 / 2, 1 / 1]) / 2.0, 0)
    assert torch.allclose(w, expected)
    assert w[1] > 1  # the task whose loss did not fall gets more
    alone, _ = dwa.weights(torch.tensor([5.0]), state, [1], ctx(2))  # a group of task 1 only
    assert torch.allclose(alone, expected[1:])  # still the softmax over every task


def test_famo_gradient_is_a_loss_scaled_combination_and_logits_move_to_the_laggard():
    losses = torch.tensor([0.5, 2.0], requires_grad=True)
    logits = torch.zeros(2)
    z, L = torch.softmax(logits, 0), losses.detach()
    c = 1 / (z / L).sum()
    (c * z * torch.log(losses)).sum().backward()  # FAMO's objective with c, z constants
    assert torch.allclose(famo_weights(losses, logits), losses.grad)
    assert torch.allclose(losses.grad, torch.tensor([c * 0.5 / 0.5, c * 0.5 / 2.0]))
    before, after = torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.9])  # task 1 improved less
    grad = famo_logit_gradient(logits, before, after)
    delta = torch.log(before) - torch.log(after)
    assert torch.allclose(grad, 0.5 * (delta - delta.mean()))
    assert grad[1] < 0 < grad[0]  # descending ξ raises the weight of task 1


def test_gradnorm_pushes_weights_towards_balanced_norms():
    grads = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # norms 5 and 0.5
    w = torch.ones(2)
    g = gradnorm_weight_gradient(w, grads, torch.ones(2), torch.ones(2), alpha=1.5)
    # target = mean(5, 0.5) = 2.75 for both: task 0 above (sign +), task 1 below (sign −)
    assert torch.allclose(g, torch.tensor([5.0, -0.5]))
    assert torch.allclose(renormalise(torch.tensor([1.0, 3.0])).sum(), torch.tensor(2.0))


# ---------------------------------------------------------------- aggregators
def test_graddrop_keeps_agreeing_coordinates_and_one_sign_of_the_others():
    grads = torch.tensor([[1.0, 2.0, -1.0], [3.0, -2.0, -4.0]])
    out = graddrop(grads, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], grads[:, 0]) and torch.equal(out[:, 2], grads[:, 2])
    kept = out[:, 1]
    assert torch.equal(kept, torch.tensor([2.0, 0.0])) or torch.equal(kept, torch.tensor([0.0, -2.0]))
    picks = torch.stack([graddrop(grads, torch.Generator().manual_seed(s))[0, 1] for s in range(400)])
    assert 0.35 < (picks > 0).float().mean() < 0.65  # purity ½: either sign half the time


def test_nash_mtl_solves_the_bargaining_equation_and_is_scale_invariant():
    g = torch.randn(3, 12, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = g * torch.tensor([[1.0], [20.0], [0.05]], dtype=F64)
    alpha = nash_weights(g)
    assert torch.allclose(alpha * ((g @ g.t()) @ alpha), torch.ones(3, dtype=F64), atol=1e-4)
    d = alpha @ g
    assert torch.allclose(g @ d, 1 / alpha, rtol=1e-4)  # every task improves, g_kᵀd = 1/α_k
    assert torch.allclose(nash_weights(10 * g), alpha / 10, rtol=1e-3)
    orthonormal = torch.eye(2, 4, dtype=F64)
    assert torch.allclose(nash_weights(orthonormal), torch.ones(2, dtype=F64), atol=1e-4)


def test_aligned_mtl_rows_are_orthogonal_with_the_smallest_singular_value():
    g = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=F64)
    rows = aligned_mtl(g) * 2  # undo the 1/K weights
    gram = rows @ rows.t()
    sigma_min_sq = torch.linalg.eigvalsh(g @ g.t()).min()
    assert torch.allclose(gram, sigma_min_sq * torch.eye(2, dtype=F64), atol=1e-9)
    parallel = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=F64)  # rank 1: one direction kept
    assert torch.isfinite(aligned_mtl(parallel)).all()


# ---------------------------------------------------------------- AdaTask
@pytest.mark.parametrize("variant,reference", [("adam", torch.optim.Adam),
                                               ("rmsprop", torch.optim.RMSprop),
                                               ("adagrad", torch.optim.Adagrad)])
def test_adatask_with_one_task_is_the_plain_optimizer_step_for_step(variant, reference):
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours, theirs = AdaTask([a], 1, lr=0.01, variant=variant), reference([b], lr=0.01)
    for _ in range(25):
        g = torch.randn(4, 3)
        ours.step(task_grads=[g.unsqueeze(0)])
        b.grad = g.clone()
        theirs.step()
        assert torch.equal(a, b)


def test_adatask_keeps_moments_per_task_so_a_small_task_is_not_drowned():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = AdaTask([p], 2, lr=0.1, dominance_beta=0.9)
    opt.step(task_grads=[torch.tensor([[1000.0], [0.001]])])
    # each task's first Adam step is lr·sign(g): both tasks move the parameter by 0.1
    assert p.item() == pytest.approx(-0.2, rel=1e-4)
    rau = opt.task_dominance()
    assert torch.allclose(rau[:, 0], torch.tensor([0.5, 0.5]), atol=1e-4)
    opt.step(task_grads=[torch.tensor([[1.0]])], tasks=[1])  # a group update of task 1 only
    assert opt.state[p]["step"].tolist() == [1.0, 2.0]


# ---------------------------------------------------------------- DTJS
def test_dtjs_direction_and_magnitude_statistics_and_phi():
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]], dtype=F64)
    d, m = inter_task_stats(g)
    assert torch.allclose(d, torch.tensor([-0.5, 0.0, -0.5], dtype=F64))
    # 4·1·2/(1+4) − 1 = 0.6 for pairs (0,1), (1,2); 4·1·1/2 − 1 = 1 for (0,2)
    assert torch.allclose(m, torch.tensor([0.8, 0.6, 0.8], dtype=F64))
    alpha = torch.tensor([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]], dtype=F64)
    expected = torch.sigmoid(2 * d) + 0.5
    assert torch.allclose(phi(alpha, d, m), expected)


def _least_squares_problem():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=gen, dtype=F64), torch.randn(40, 2, generator=gen, dtype=F64)
    xd, yd = torch.randn(20, 3, generator=gen, dtype=F64), torch.randn(20, 2, generator=gen, dtype=F64)
    d, m = torch.tensor([0.3, -0.5], dtype=F64), torch.tensor([0.2, 0.7], dtype=F64)

    def losses(w, x, y):  # one shared weight vector, two regression targets
        return ((x @ w)[:, None] - y).pow(2).mean(0)

    return x, y, xd, yd, d, m, losses


def test_dtjs_first_order_hypergradient_matches_finite_differences_of_one_step():
    x, y, xd, yd, d, m, losses = _least_squares_problem()
    w = torch.nn.Parameter(torch.randn(3, generator=torch.Generator().manual_seed(1), dtype=F64))
    alpha = torch.tensor([[0.4, 0.9], [0.1, 0.6]], dtype=F64, requires_grad=True)
    lr = 1e-4  # the two agree up to O(η) terms (relative 4e-3 at η = 1e-3, 4e-4 here)

    def train(a, w=w):
        return (phi(a, d, m) * losses(w, x, y)).sum()

    hg = hypergradient(train, losses(w, xd, yd).sum(), [w], alpha, lr, terms=0)

    def dev_after_one_step(a):
        g = torch.autograd.grad(train(a), w)[0]
        return losses(w - lr * g, xd, yd).sum().item()

    fd = _finite_differences(dev_after_one_step, alpha.detach())
    assert torch.allclose(hg, fd, rtol=1e-3, atol=0)


def test_dtjs_neumann_hypergradient_matches_the_implicit_derivative_at_the_optimum():
    x, y, xd, yd, d, m, losses = _least_squares_problem()

    def optimum(a):  # argmin_w Σ φ_k ‖xw − y_k‖²: least squares on the φ-weighted target
        f = phi(a, d, m)
        return torch.linalg.solve(x.t() @ x, x.t() @ (y @ f / f.sum()))

    alpha = torch.tensor([[0.4, 0.9], [0.1, 0.6]], dtype=F64, requires_grad=True)
    w = torch.nn.Parameter(optimum(alpha.detach()).clone())
    fd = _finite_differences(lambda a: losses(optimum(a), xd, yd).sum().item(), alpha.detach())

    def hg(terms):
        return hypergradient(lambda a: (phi(a, d, m) * losses(w, x, y)).sum(),
                             losses(w, xd, yd).sum(), [w], alpha, 0.1, terms)

    assert torch.allclose(hg(300), fd, rtol=1e-3, atol=1e-8)
    assert (hg(3) - fd).norm() < (hg(0) - fd).norm()  # more terms, closer


def _finite_differences(f, alpha: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    out = torch.zeros_like(alpha)
    for idx in np.ndindex(*alpha.shape):
        e = torch.zeros_like(alpha)
        e[idx] = eps
        out[idx] = (f(alpha + e) - f(alpha - e)) / (2 * eps)
    return out


# ---------------------------------------------------------------- grouped updates
def test_affinity_bookkeeping_follows_a_scripted_loss_sequence():
    beta = 0.5
    a = torch.zeros(3, 3, dtype=F64)
    before = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    # group {0} updated: task 0 fell 20%, task 1 fell 10%, task 2 rose 10%
    a = credit(a, [0], before, torch.tensor([0.8, 0.9, 1.1], dtype=F64), beta)
    assert torch.allclose(a[0], torch.tensor([0.1, 0.05, -0.05], dtype=F64))
    assert torch.equal(a[1:], torch.zeros(2, 3, dtype=F64))  # only the group that caused it
    # group {1, 2} updated: x = (1 − after/before)/2 = [0.1, 0.1, −0.05]
    b = credit(a, [1, 2], before, torch.tensor([0.8, 0.8, 1.1], dtype=F64), beta)
    assert b[1, 0] == pytest.approx(0.05)  # outside the group: x_t
    assert b[1, 1] == pytest.approx(0.05)  # s = t with x ≥ 0: taken
    assert b[2, 2] == 0.0  # s = t with x < 0: skipped
    assert b[1, 2] == pytest.approx(-0.05)  # opposite signs: −max(0.1, −0.05) = −0.1
    assert b[2, 1] == pytest.approx(-0.05)
    assert torch.equal(b[0], a[0])


def test_regrouping_clusters_tasks_that_help_each_other():
    help_pairs = torch.tensor([[1.0, 0.9, -0.5, -0.4], [0.8, 1.0, -0.6, -0.5],
                               [-0.5, -0.4, 1.0, 0.85], [-0.3, -0.5, 0.9, 1.0]])
    assert sorted(regroup(help_pairs, [[0], [1], [2], [3]])) == [[0, 1], [2, 3]]
    previous = [[0], [1], [2]]
    assert regroup(torch.eye(3), previous) == previous  # no preference: keep


def test_two_tasks_merge_above_the_preference_and_split_below_it():
    """The 2×2 case is no special case: the normalised, symmetrised similarity s above the
    preference merges the tasks, below it splits them. Preference 0 (the paper's rule):
    any mutual help merges; "median" (the released code): only s > 1 does."""
    alone = [[0], [1]]
    helps_little = torch.tensor([[0.05, 0.01], [0.02, 0.05]])  # s = 0.3
    assert regroup(helps_little, alone) == [[0, 1]]
    assert regroup(helps_little, alone, "median") == alone
    assert regroup(torch.tensor([[0.05, 0.06], [0.07, 0.05]]), alone, "median") == [[0, 1]]  # s = 1.3
    assert regroup(torch.tensor([[0.05, 0.04], [0.03, 0.05]]), [[0, 1]], "median") == alone  # s = 0.7
    conflict = torch.tensor([[0.05, -0.01], [-0.02, 0.05]])
    assert regroup(conflict, [[0, 1]]) == alone and regroup(conflict, [[0, 1]], "median") == alone
    assert regroup(torch.zeros(2, 2), [[0, 1]]) == [[0, 1]]  # nothing learnt yet: keep

"""Backpropagation through training: values, hypergradients, memory control, modules, errors."""

from __future__ import annotations

import copy
import gc
import itertools
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree
from helpers import flat, rel_err
from torch import nn

import implicitgrad as ig
from implicitgrad.testing import finite_difference_hypergrad, ridge_problem

# The benchmarks' deterministic memory meter (live bytes of tensor storage).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _memory import PeakTensorMemory  # noqa: E402

DTYPE = torch.float64
N_STEPS = 9


# --------------------------------------------------------------------------------------------
# A small weighted-regression problem with a tanh MLP student.


def _data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(12, 3, generator=gen, dtype=DTYPE)
    y = torch.sin(X.sum(1)) + 0.1 * torch.randn(12, generator=gen, dtype=DTYPE)
    X_val = torch.randn(8, 3, generator=gen, dtype=DTYPE)
    y_val = torch.sin(X_val.sum(1))
    theta0 = {
        "w1": 0.7 * torch.randn(3, 5, generator=gen, dtype=DTYPE),
        "b1": 0.1 * torch.randn(5, generator=gen, dtype=DTYPE),
        "w2": 0.7 * torch.randn(5, generator=gen, dtype=DTYPE),
    }
    phi0 = 0.5 * torch.randn(12, generator=gen, dtype=DTYPE)
    batches = [torch.arange(i, i + 4) % 12 for i in range(0, 4 * N_STEPS, 4)]
    return X, y, X_val, y_val, theta0, phi0, batches


X, Y, X_VAL, Y_VAL, THETA0, PHI0, BATCHES = _data()


def predict(theta, x):
    return torch.tanh(x @ theta["w1"] + theta["b1"]) @ theta["w2"]


def train_loss(theta, phi, idx, step):
    """Per-example weights sigmoid(φ) on the squared errors of one mini-batch."""
    return (torch.sigmoid(phi[idx]) * (predict(theta, X[idx]) - Y[idx]) ** 2).mean()


def outer_loss(theta, phi=None):
    return ((predict(theta, X_VAL) - Y_VAL) ** 2).mean()


def fixed_weights_loss(theta, phi, idx, step):
    return train_loss(theta, PHI0, idx, step)


def hypergrads(optimizer, **kwargs):
    """(θ_N, dg/dφ) through an unroll on the MLP problem."""
    phi = PHI0.clone().requires_grad_()
    theta = ig.unroll(train_loss, THETA0, phi, BATCHES, optimizer, **kwargs)
    outer_loss(theta).backward()
    return theta, phi.grad


OPTIMIZERS = [
    ig.SGD(lr=0.2, momentum=0.9, nesterov=True, weight_decay=0.01),
    ig.SGD(lr=0.1, momentum=0.5, dampening=0.2),
    ig.Adam(lr=0.05, weight_decay=0.01),
    ig.AdamW(lr=0.05, amsgrad=True),
]
IDS = ["SGD-nesterov", "SGD-dampening", "Adam", "AdamW-amsgrad"]


# --------------------------------------------------------------------------------------------
# (1) The forward pass is ordinary training.


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (ig.SGD(lr=0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        (
            ig.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
        ),
        (ig.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
        (
            ig.AdamW(lr=0.01, weight_decay=0.1),
            lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        ),
    ],
    ids=["SGD-momentum", "SGD-nesterov-wd", "Adam", "AdamW"],
)
def test_forward_matches_torch_optim_loop(ours, theirs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    reference = copy.deepcopy(model)
    fn, params = ig.make_functional(model, detach=True)

    def loss(theta, phi, idx, step):
        return ((fn(theta, X[idx]).squeeze(-1) - Y[idx]) ** 2).mean()

    theta = ig.unroll(loss, params, None, BATCHES, ours)
    opt = theirs(reference.parameters())
    for idx in BATCHES:
        opt.zero_grad()
        ((reference(X[idx]).squeeze(-1) - Y[idx]) ** 2).mean().backward()
        opt.step()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(theta[name], p.detach(), rtol=1e-6, atol=1e-10)


# --------------------------------------------------------------------------------------------
# (2) Hypergradients match central finite differences.
# Central differences in float64 with eps = 1e-5 have truncation error ~1e-10 and rounding
# error ~1e-11 here, so a relative tolerance of 1e-6 leaves a wide margin yet catches any
# missing term (a dropped momentum or bias-correction path changes the result by > 1e-3).


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=IDS)
def test_example_weights_match_finite_differences(optimizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, grad = hypergrads(optimizer)

    def solve(phi):
        return ig.unroll(train_loss, THETA0, phi, BATCHES, optimizer)

    fd = finite_difference_hypergrad(solve, outer_loss, PHI0)
    assert rel_err(grad, fd) < 1e-6


@pytest.mark.parametrize(
    "make", [lambda lr: ig.SGD(lr=lr, momentum=0.9), lambda lr: ig.Adam(lr=lr)]
)
def test_learned_learning_rate_matches_finite_differences(make):
    lr = torch.tensor(0.05, dtype=DTYPE, requires_grad=True)
    theta = ig.unroll(fixed_weights_loss, THETA0, None, BATCHES, make(lr))
    outer_loss(theta).backward()
    fd = finite_difference_hypergrad(
        lambda h: ig.unroll(fixed_weights_loss, THETA0, None, BATCHES, make(h)), outer_loss, lr
    )
    assert lr.grad is not None and abs(float(lr.grad)) > 1e-3
    assert rel_err(lr.grad, fd) < 1e-6


@pytest.mark.parametrize("optimizer", OPTIMIZERS[::2], ids=IDS[::2])
def test_initial_parameters_match_finite_differences(optimizer):
    theta0 = {k: v.clone().requires_grad_() for k, v in THETA0.items()}
    theta = ig.unroll(fixed_weights_loss, theta0, None, BATCHES, optimizer, differentiate_init=True)
    outer_loss(theta).backward()
    fd = finite_difference_hypergrad(
        lambda t0: ig.unroll(fixed_weights_loss, t0, None, BATCHES, optimizer),
        outer_loss,
        THETA0,
    )
    assert rel_err({k: v.grad for k, v in theta0.items()}, fd) < 1e-6


def test_initial_parameters_detached_by_default():
    model = nn.Linear(3, 1).double()
    fn, params = ig.make_functional(model)  # the module's own nn.Parameters
    phi = PHI0.clone().requires_grad_()

    def loss(theta, phi, idx, step):
        return (torch.sigmoid(phi[idx]) * (fn(theta, X[idx]).squeeze(-1) - Y[idx]) ** 2).mean()

    theta = ig.unroll(loss, params, phi, BATCHES, ig.SGD(lr=0.1))
    ((fn(theta, X_VAL).squeeze(-1) - Y_VAL) ** 2).mean().backward()
    assert phi.grad is not None
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------------
# (3) On a strongly convex problem trained to convergence, unrolled = implicit.


def _unrolled_ridge(prob, lr: float, steps: int):
    """(w_N, dg/dφ) after `steps` steps of gradient descent from zero."""
    phi = prob.outer_params.clone().requires_grad_()
    loss = lambda w, p, batch, step: prob.inner_loss(w, p)  # noqa: E731
    w = ig.unroll(loss, torch.zeros(5, dtype=DTYPE), phi, None, ig.SGD(lr=lr), steps=steps)
    prob.outer_loss(w).backward()
    return w.detach(), phi.grad


def test_converged_unroll_matches_implicit_hypergradient():
    prob = ridge_problem(50, 5)
    hessian = prob.X.T @ prob.X / len(prob.y) + torch.diag(prob.outer_params.exp())
    eigs = torch.linalg.eigvalsh(hessian)
    mu, big_l = float(eigs[0]), float(eigs[-1])
    # Gradient descent with step 1/L contracts by (1 - μ/L) per step; the unrolled
    # hypergradient's error decays like N (1 - μ/L)^N. Run until that is below 1e-14.
    rate = 1 - mu / big_l
    steps = next(n for n in range(1, 10_000) if n * rate**n < 1e-14)
    w, grad = _unrolled_ridge(prob, 1 / big_l, steps)
    implicit = ig.hypergrad(
        prob.inner_loss, prob.outer_loss, w, prob.outer_params, solver=ig.Exact()
    )
    assert rel_err(grad, implicit) < 1e-8
    assert rel_err(grad, prob.exact_hypergrad()) < 1e-8


def test_few_steps_differ_from_implicit_hypergradient():
    # The test above can fail: ten steps are far from convergence.
    prob = ridge_problem(50, 5)
    _, grad = _unrolled_ridge(prob, 0.1, 10)
    assert rel_err(grad, prob.exact_hypergrad()) > 1e-2


# --------------------------------------------------------------------------------------------
# (4) Checkpointing and truncation.


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=IDS)
@pytest.mark.parametrize("checkpoint", [True, 1, 4, 100])
@pytest.mark.parametrize("truncate", [None, 5])
def test_checkpoint_gives_the_same_gradients(optimizer, checkpoint, truncate):
    theta_a, grad_a = hypergrads(optimizer, truncate=truncate)
    theta_b, grad_b = hypergrads(optimizer, truncate=truncate, checkpoint=checkpoint)
    assert torch.equal(flat(theta_a).detach(), flat(theta_b).detach())
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-10, atol=1e-12)


def test_checkpoint_gradients_reach_learning_rate_and_initial_parameters():
    def run(checkpoint):
        lr = torch.tensor(0.05, dtype=DTYPE, requires_grad=True)
        phi = PHI0.clone().requires_grad_()
        theta0 = {k: v.clone().requires_grad_() for k, v in THETA0.items()}
        theta = ig.unroll(
            train_loss,
            theta0,
            phi,
            BATCHES,
            ig.Adam(lr=lr),
            checkpoint=checkpoint,
            differentiate_init=True,
        )
        outer_loss(theta).backward()
        return torch.cat(
            [lr.grad.reshape(1), phi.grad, flat({k: v.grad for k, v in theta0.items()})]
        )

    torch.testing.assert_close(run(3), run(False), rtol=1e-10, atol=1e-12)


def test_checkpoint_supports_a_second_backward_pass():
    phi = PHI0.clone().requires_grad_()
    theta = ig.unroll(train_loss, THETA0, phi, BATCHES, ig.Adam(lr=0.05), checkpoint=3)
    loss = outer_loss(theta)
    loss.backward(retain_graph=True)  # each backward pass recomputes the segments it needs
    loss.backward()
    _, grad = hypergrads(ig.Adam(lr=0.05))
    torch.testing.assert_close(phi.grad, 2 * grad, rtol=1e-10, atol=1e-12)


def test_truncate_longer_than_the_unroll_differentiates_every_step():
    torch.testing.assert_close(
        hypergrads(ig.SGD(lr=0.1), truncate=100)[1], hypergrads(ig.SGD(lr=0.1))[1], rtol=0, atol=0
    )


def test_checkpoint_restores_random_state_for_dropout():
    def loss(theta, phi, idx, step):
        h = nn.functional.dropout(torch.tanh(X[idx] @ theta["w1"] + theta["b1"]), 0.3)
        return (torch.sigmoid(phi[idx]) * (h @ theta["w2"] - Y[idx]) ** 2).mean()

    def run(checkpoint):
        torch.manual_seed(3)
        phi = PHI0.clone().requires_grad_()
        theta = ig.unroll(loss, THETA0, phi, BATCHES, ig.Adam(lr=0.05), checkpoint=checkpoint)
        outer_loss(theta).backward()
        return phi.grad

    torch.testing.assert_close(run(3), run(False), rtol=1e-10, atol=1e-12)


def test_truncate_matches_manual_truncated_backpropagation():
    k, lr, momentum = 3, 0.1, 0.9
    phi = PHI0.clone().requires_grad_()
    theta = ig.unroll(
        train_loss, THETA0, phi, BATCHES, ig.SGD(lr=lr, momentum=momentum), truncate=k
    )
    outer_loss(theta).backward()

    # By hand: torch.optim for the first N - k steps, then k differentiated steps.
    params = {n: v.clone().requires_grad_() for n, v in THETA0.items()}
    opt = torch.optim.SGD(params.values(), lr=lr, momentum=momentum)
    for t in range(N_STEPS - k):
        opt.zero_grad()
        train_loss(params, PHI0, BATCHES[t], t).backward()
        opt.step()
    manual_phi = PHI0.clone().requires_grad_()
    names = list(params)
    theta_m = [params[n].detach().requires_grad_() for n in names]
    bufs = [opt.state[params[n]]["momentum_buffer"] for n in names]
    for t in range(N_STEPS - k, N_STEPS):
        loss = train_loss(dict(zip(names, theta_m)), manual_phi, BATCHES[t], t)
        grads = torch.autograd.grad(loss, theta_m, create_graph=True)
        bufs = [momentum * b + g for b, g in zip(bufs, grads)]
        theta_m = [p - lr * b for p, b in zip(theta_m, bufs)]
    outer_loss(dict(zip(names, theta_m))).backward()

    torch.testing.assert_close(flat(theta), flat(dict(zip(names, theta_m))), rtol=0, atol=1e-14)
    torch.testing.assert_close(phi.grad, manual_phi.grad, rtol=1e-10, atol=1e-14)
    # ... and truncation does change the hypergradient.
    assert rel_err(phi.grad, hypergrads(ig.SGD(lr=lr, momentum=momentum))[1]) > 1e-3


def test_checkpoint_memory_grows_sublinearly():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=gen), torch.randn(64, generator=gen)
    theta0 = (0.3 * torch.randn(8, 32, generator=gen), 0.3 * torch.randn(32, generator=gen))

    def loss(theta, phi, batch, step):
        return (phi * (torch.tanh(x @ theta[0]) @ theta[1] - y) ** 2).mean()

    def peak(steps, checkpoint):
        gc.collect()
        phi = torch.ones(64, requires_grad=True)
        with PeakTensorMemory() as mem:
            theta = ig.unroll(
                loss, theta0, phi, None, ig.Adam(lr=0.01), steps=steps, checkpoint=checkpoint
            )
            after_forward = mem.live
            sum(t.square().sum() for t in theta).backward()
            del theta
        assert mem.live <= phi.grad.nbytes, "the unroll leaked tensors"  # only φ.grad remains
        return mem.peak, after_forward

    plain16, kept16 = peak(16, False)
    plain64, kept64 = peak(64, False)
    ck16, ck_kept16 = peak(16, True)
    ck64, ck_kept64 = peak(64, True)
    assert plain64 > 3.5 * plain16  # linear in N
    assert ck64 < 2.5 * ck16  # about sqrt(N): 4 times the steps, about twice the memory
    assert ck64 < plain64 / 3 and ck_kept64 < kept64 / 10


# --------------------------------------------------------------------------------------------
# (5) nn.Module students with BatchNorm in train mode.


def _bn_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 1)).double()


@pytest.mark.parametrize("checkpoint", [False, 2])
def test_batchnorm_student_matches_torch_training_loop(checkpoint):
    model, reference = _bn_model(), _bn_model()
    fn, params = ig.make_functional(model, detach=True)
    phi = PHI0.clone().requires_grad_()

    def loss(theta, phi, idx, step):
        return (torch.sigmoid(phi[idx]) * (fn(theta, X[idx]).squeeze(-1) - Y[idx]) ** 2).mean()

    theta = ig.unroll(
        loss, params, phi, BATCHES, ig.Adam(lr=0.05), checkpoint=checkpoint, buffers=model
    )
    model.eval()
    ((fn(theta, X_VAL).squeeze(-1) - Y_VAL) ** 2).mean().backward()
    assert torch.isfinite(phi.grad).all() and phi.grad.abs().sum() > 0

    opt = torch.optim.Adam(reference.parameters(), lr=0.05)
    for idx in BATCHES:
        opt.zero_grad()
        w = torch.sigmoid(PHI0[idx])
        (w * (reference(X[idx]).squeeze(-1) - Y[idx]) ** 2).mean().backward()
        opt.step()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(theta[name], p.detach(), rtol=1e-6, atol=1e-10)
    # Differentiable BatchNorm backward (create_graph=True) rounds differently from the fused
    # kernel torch.optim's loop uses, so parameters and statistics agree to ~1e-10, not to the
    # last bit; a second update per step would move the statistics by ~1e-1.
    for (name, b), (_, ref) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, ref, rtol=1e-6, atol=1e-10, msg=name)
    assert int(model[1].num_batches_tracked) == N_STEPS


def test_batchnorm_checkpoint_gradients_equal_plain():
    def run(checkpoint):
        model = _bn_model()
        fn, params = ig.make_functional(model, detach=True)
        phi = PHI0.clone().requires_grad_()

        def loss(theta, phi, idx, step):
            out = fn(theta, X[idx]).squeeze(-1)
            return (torch.sigmoid(phi[idx]) * (out - Y[idx]) ** 2).mean()

        theta = ig.unroll(
            loss,
            params,
            phi,
            BATCHES,
            ig.SGD(lr=0.1, momentum=0.9),
            checkpoint=checkpoint,
            buffers=model,
        )
        ((fn(theta, X_VAL).squeeze(-1) - Y_VAL) ** 2).mean().backward()
        return phi.grad, model[1].running_var.clone()

    (g_plain, rv_plain), (g_ck, rv_ck) = run(False), run(True)
    torch.testing.assert_close(g_ck, g_plain, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rv_ck, rv_plain, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Batches, state, info.


def test_info_state_and_continuation():
    opt = ig.Adam(lr=0.05)
    theta, info = ig.unroll(
        fixed_weights_loss,
        THETA0,
        None,
        BATCHES,
        opt,
        return_info=True,
        truncate=4,
        checkpoint=True,
    )
    assert (info.steps, info.differentiated_steps, info.segment_length) == (N_STEPS, 4, 2)
    assert info.losses.shape == (N_STEPS,) and info.state.step == N_STEPS
    assert math.isclose(info.losses[0], float(fixed_weights_loss(THETA0, None, BATCHES[0], 0)))
    first, mid = ig.unroll(fixed_weights_loss, THETA0, None, BATCHES[:4], opt, return_info=True)
    rest = ig.unroll(fixed_weights_loss, first, None, BATCHES[4:], opt, optimizer_state=mid.state)
    torch.testing.assert_close(flat(rest), flat(theta).detach(), rtol=0, atol=1e-15)


def test_batches_generator_steps_and_full_batch():
    a = ig.unroll(fixed_weights_loss, THETA0, None, iter(BATCHES), ig.SGD(lr=0.1))
    b = ig.unroll(
        fixed_weights_loss, THETA0, None, itertools.cycle(BATCHES), ig.SGD(lr=0.1), steps=N_STEPS
    )
    assert torch.equal(flat(a), flat(b))
    seen = []
    ig.unroll(
        lambda t, p, batch, step: seen.append((batch, step)) or outer_loss(t),
        THETA0,
        None,
        None,
        ig.SGD(lr=0.1),
        steps=3,
    )
    assert seen == [(None, 0), (None, 1), (None, 2)]


def test_no_grad_mode_trains_without_graph():
    with torch.no_grad():
        theta = ig.unroll(
            train_loss, THETA0, PHI0.clone().requires_grad_(), BATCHES, ig.SGD(lr=0.1)
        )
    assert not any(t.requires_grad for t in theta.values())
    assert torch.equal(flat(theta), flat(hypergrads(ig.SGD(lr=0.1))[0]).detach())


def test_custom_optimizer():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class SignGD(ig.AbstractOptimizer):
        lr: float

        def init(self, params):
            return None

        def step(self, params, grads, state):
            return pytree.tree_map(
                lambda p, g: p - self.lr * torch.tanh(10 * g), params, grads
            ), state

    _, grad = hypergrads(SignGD(0.01))
    fd = finite_difference_hypergrad(
        lambda phi: ig.unroll(train_loss, THETA0, phi, BATCHES, SignGD(0.01)), outer_loss, PHI0
    )
    assert rel_err(grad, fd) < 1e-6


# --------------------------------------------------------------------------------------------
# (6) Errors and warnings.


def _unroll(**overrides):
    kwargs = dict(
        train_loss=train_loss,
        inner_params=THETA0,
        outer_params=PHI0,
        batches=BATCHES,
        optimizer=ig.SGD(lr=0.1),
    )
    kwargs.update(overrides)
    loss, theta, phi, batches, opt = (kwargs.pop(k) for k in list(kwargs)[:5])
    return ig.unroll(loss, theta, phi, batches, opt, **kwargs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(batches=[]), r"`unroll\(batches=\.\.\.\)` is empty"),
        (dict(batches=iter([])), r"`unroll\(batches=\.\.\.\)` is empty"),
        (dict(batches=None), r"`unroll\(batches=None\)` .* needs steps=N"),
        (dict(batches=5), r"`unroll\(batches=\.\.\.\)` must be an iterable .* got int"),
        (dict(steps=0), r"`unroll\(steps=\.\.\.\)` must be a positive int, got 0"),
        (dict(steps=20), r"ran out after 9 batches, but 20 steps"),
        (dict(truncate=0), r"`unroll\(truncate=\.\.\.\)` must be a positive int, got 0"),
        (dict(checkpoint=0), r"`unroll\(checkpoint=\.\.\.\)` must be True, False or a positive"),
        (dict(train_loss=3), r"`unroll\(train_loss=\.\.\.\)` must be callable"),
        (dict(train_loss=lambda t, p: t), r"must accept four arguments .* \(t, p\)"),
        (
            dict(optimizer=torch.optim.SGD([torch.ones(1, requires_grad=True)], lr=0.1)),
            r"`unroll\(optimizer=\.\.\.\)` must be an implicitgrad optimizer .* got SGD",
        ),
        (dict(inner_params={}), r"`unroll\(inner_params=\.\.\.\)` received an empty tree"),
        (
            dict(inner_params={"w1": torch.full((3, 5), math.nan)}),
            r"`unroll\(inner_params=\.\.\.\)` holds NaN or Inf in leaf \['w1'\]",
        ),
        (dict(buffers=[1.0]), r"`unroll\(buffers=\.\.\.\)` must be an nn.Module or a tree"),
    ],
)
def test_input_errors(overrides, match):
    with pytest.raises(ig.InputError, match=match):
        _unroll(**overrides)


@pytest.mark.parametrize(
    "loss, match",
    [
        (
            lambda t, p, b, s: predict(t, X[b]),
            r"floating-point scalar, got a tensor of shape \(4,\)",
        ),
        (lambda t, p, b, s: 1.0, r"must return a scalar torch.Tensor, got float at step 0"),
        (lambda t, p, b, s: outer_loss(t).long(), r"dtype torch.int64"),
        (lambda t, p, b, s: p.sum(), r"train_loss does not depend on inner_params"),
        (lambda t, p, b, s: outer_loss(t) * math.nan, r"returned nan at step 0 of 9, at the init"),
    ],
)
def test_loss_errors(loss, match):
    with pytest.raises(ig.InputError, match=match):
        _unroll(train_loss=loss)


def test_divergence_names_the_step():
    def exploding(theta, phi, idx, step):
        return outer_loss(theta) * torch.tensor(1e300 if step == 4 else 1.0, dtype=DTYPE) ** 2

    with pytest.raises(ig.SolverError, match=r"train_loss became inf at step 4 of 9: .*diverged"):
        _unroll(train_loss=exploding)
    with pytest.raises(ig.SolverError, match=r"became NaN or Inf after step 0 of 9"):
        _unroll(optimizer=ig.SGD(lr=1e308), train_loss=lambda t, p, b, s: 1e10 * outer_loss(t))
    with pytest.raises(ig.SolverError, match=r"became NaN or Inf after step 8 of 9"):  # the last
        _unroll(
            optimizer=ig.SGD(lr=1e10),
            train_loss=lambda t, p, b, s: outer_loss(t) * (1e300 if s == 8 else 1e-20),
        )


def test_warns_when_outer_params_have_no_effect():
    def loss(theta, phi, idx, step):  # φ enters, but not the gradient with respect to θ
        return outer_loss(theta) + (phi**2).sum()

    with pytest.warns(UserWarning, match=r"hypergradient with respect to outer_params is exactly"):
        _unroll(train_loss=loss, outer_params=PHI0.clone().requires_grad_())
    with pytest.warns(UserWarning, match=r"exactly zero"):
        _unroll(train_loss=loss, outer_params=PHI0.clone().requires_grad_(), checkpoint=True)


def test_nondeterministic_loss_under_checkpoint():
    calls = itertools.count()

    def loss(theta, phi, idx, step):  # a different graph when called again
        extra = torch.tanh(theta["w2"]).sum() if next(calls) >= N_STEPS else 0.0
        return train_loss(theta, phi, idx, step) + extra

    phi = PHI0.clone().requires_grad_()
    theta = _unroll(train_loss=loss, outer_params=phi, checkpoint=N_STEPS)
    with pytest.raises(ig.ImplicitGradError, match=r"recomputing a segment produced .* train_loss"):
        outer_loss(theta).backward()


def test_make_functional_sets_tied_parameters_in_every_place():
    torch.manual_seed(0)
    first, second = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    second.weight = first.weight  # tied
    model = nn.Sequential(first, nn.Tanh(), second).double()
    fn, params = ig.make_functional(model, detach=True)
    assert list(params) == ["0.weight"]
    w = torch.randn(3, 3, dtype=DTYPE, requires_grad=True)
    x = torch.randn(2, 3, dtype=DTYPE)
    expected = torch.tanh(x @ w.T) @ w.T
    assert torch.allclose(fn({"0.weight": w}, x), expected)
    assert model[0].weight is model[2].weight and isinstance(model[0].weight, nn.Parameter)
    (g,) = torch.autograd.grad(fn({"0.weight": w}, x).sum(), w)
    (ref,) = torch.autograd.grad(expected.sum(), w)
    assert torch.allclose(g, ref)

"""`implicit()` inside autograd, hyperparameter optimization with torch.optim, nn.Module."""

from __future__ import annotations

import pytest
import torch
from helpers import flat, rel_err

import implicitgrad as ig
from implicitgrad.testing import random_quadratic, ridge_problem

F64 = torch.float64


@pytest.mark.parametrize("structure", ["tensor", "dict", "nested"])
def test_implicit_matches_hypergrad(structure):
    prob = random_quadratic(
        8, 4, condition=20.0, inner_structure=structure, outer_structure=structure, seed=7
    )
    solver = ig.CG(max_iter=100, tol=1e-12)
    expected = ig.hypergrad(
        prob.inner_loss, prob.outer_loss, prob.inner_params, prob.outer_params, solver
    )
    leaves, spec = torch.utils._pytree.tree_flatten(prob.outer_params)
    phi_leaves = [p.clone().requires_grad_(True) for p in leaves]
    phi = torch.utils._pytree.tree_unflatten(phi_leaves, spec)
    theta = ig.implicit(prob.inner_loss, prob.inner_params, phi, solver)
    # The outer loss uses φ directly too: autograd adds that term.
    prob.outer_loss(theta, phi).backward()
    got = torch.utils._pytree.tree_unflatten([p.grad for p in phi_leaves], spec)
    assert rel_err(got, expected) < 1e-9
    assert rel_err(got, prob.exact_hypergrad()) < 1e-9


def test_implicit_values_equal_inputs_and_are_cut_from_their_history():
    prob = ridge_problem(30, 3)
    w0 = prob.inner_params.clone().requires_grad_(True)
    phi = prob.outer_params.clone().requires_grad_(True)
    theta = ig.implicit(prob.inner_loss, w0 * 1.0, phi)
    assert torch.equal(theta, w0.detach())
    prob.outer_loss(theta).backward()
    assert w0.grad is None and phi.grad is not None


def test_hyperparameter_optimization_with_torch_optim_lowers_validation_loss():
    prob = ridge_problem(40, 8, n_val=200, seed=2)
    phi = torch.zeros(8, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([phi], lr=0.1)
    w = prob.inner_solution(phi.detach())
    losses = []
    for _ in range(40):
        # Re-solve the inner problem (a few steps of warm-started gradient descent would do
        # too; the closed form keeps the test focused on the outer loop).
        w = prob.inner_solution(phi.detach())
        theta = ig.implicit(prob.inner_loss, w, phi, ig.CG(max_iter=50, tol=1e-10))
        loss = prob.outer_loss(theta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(5, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.Tanh(),
            torch.nn.Linear(16, 3),
        )

    def forward(self, x):
        return self.net(x)


def test_nn_module_with_batchnorm_in_eval_mode_through_the_helper():
    torch.manual_seed(0)
    model = MLP().double()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model.train()
        for _ in range(5):
            model(torch.randn(32, 5, dtype=F64) * 2 + 1)
    model.eval()
    buffers_before = {k: v.clone() for k, v in model.named_buffers()}
    fn, params = ig.make_functional(model, detach=True)
    x, y = torch.randn(64, 5, dtype=F64), torch.randint(0, 3, (64,))
    xv, yv = torch.randn(32, 5, dtype=F64), torch.randint(0, 3, (32,))

    # φ: per-example log-weights of the training loss; θ: the network's parameter dict.
    def inner(theta, phi):
        ce = torch.nn.functional.cross_entropy(fn(theta, x), y, reduction="none")
        return (torch.sigmoid(phi) * ce).mean() + 1e-2 * sum((p**2).sum() for p in theta.values())

    def outer(theta, phi):
        return torch.nn.functional.cross_entropy(fn(theta, xv), yv)

    phi = torch.zeros(64, dtype=F64)
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.LBFGS(
        list(theta.values()),
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=0,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = inner(theta, phi)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    theta = {k: v.detach() for k, v in theta.items()}
    hg_cg, info = ig.hypergrad(
        inner, outer, theta, phi, ig.CG(max_iter=1000, tol=1e-10), return_info=True
    )
    hg_exact = ig.hypergrad(inner, outer, theta, phi, ig.Exact())
    assert info.stationarity < 1e-6
    assert hg_cg.shape == phi.shape
    assert rel_err(hg_cg, hg_exact) < 1e-6
    assert float(hg_cg.abs().max()) > 0
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers_before[k]), k
    # The module's own parameters are untouched by the functional calls.
    assert all(p.grad is None for p in model.parameters())


def test_make_functional_matches_module_and_reaches_parameters():
    model = torch.nn.Linear(3, 2)
    fn, params = ig.make_functional(model)
    x = torch.randn(4, 3)
    assert torch.allclose(fn(params, x), model(x))
    fn(params, x).sum().backward()
    assert model.weight.grad is not None
    fn2, detached = ig.make_functional(model, detach=True)
    assert all(p is not q for p, q in zip(detached.values(), model.parameters()))
    assert flat(detached).requires_grad is True

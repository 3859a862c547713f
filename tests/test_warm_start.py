"""Warm starts: the same hypergradient from fewer Hessian-vector products."""

from __future__ import annotations

import pytest
import torch

import implicitgrad as ig
from implicitgrad.testing import random_quadratic, ridge_problem


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _nearby(phi: torch.Tensor, scale: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return phi + scale * torch.randn(phi.shape, generator=gen, dtype=phi.dtype)


def _call(prob, phi, solver, warm_start=None):
    return ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_solution(phi),
        phi,
        solver=solver,
        return_info=True,
        warm_start=warm_start,
    )


@pytest.mark.parametrize("scale", [1e-4, 1e-2])
def test_warm_cg_same_answer_fewer_iterations(scale):
    prob = random_quadratic(40, 5, condition=1e3, seed=3)
    solver = ig.CG(max_iter=200, tol=1e-12)
    _, info = _call(prob, prob.outer_params, solver)
    phi = _nearby(prob.outer_params, scale)
    cold, cold_info = _call(prob, phi, solver)
    warm, warm_info = _call(prob, phi, solver, warm_start=info)
    exact = prob.exact_hypergrad(phi)
    assert _rel(cold, exact) < 1e-8
    assert _rel(warm, exact) < 1e-8
    assert warm_info.converged and cold_info.converged
    assert warm_info.iterations < cold_info.iterations


def test_warm_start_from_the_solution_costs_one_product():
    prob = random_quadratic(20, 3, condition=100.0, seed=1)
    solver = ig.CG(max_iter=100, tol=1e-10)
    hg, info = _call(prob, prob.outer_params, solver)
    again, again_info = _call(prob, prob.outer_params, solver, warm_start=info.linear_solution)
    assert again_info.iterations == 1
    assert _rel(again, hg) < 1e-10


def test_warm_start_with_fixed_point_form():
    prob = ridge_problem(100, 40, seed=2)
    lr = 0.1

    def update(w, phi):
        (g,) = torch.autograd.grad(prob.inner_loss(w, phi), w, create_graph=True)
        return w - lr * g

    solver = ig.CG(max_iter=100, tol=1e-12)
    phi = prob.outer_params
    _, info = ig.fixed_point_hypergrad(
        update,
        prob.outer_loss,
        prob.inner_solution(phi),
        phi,
        solver=solver,
        return_info=True,
        symmetric=True,
    )
    phi2 = _nearby(phi, 1e-5)
    hg, warm_info = ig.fixed_point_hypergrad(
        update,
        prob.outer_loss,
        prob.inner_solution(phi2),
        phi2,
        solver=solver,
        return_info=True,
        warm_start=info,
        symmetric=True,
    )
    assert _rel(hg, prob.exact_hypergrad(phi2)) < 1e-8
    assert warm_info.iterations < info.iterations


def test_outer_optimization_saves_products_and_tracks_exact():
    # A slowly changing outer loop: gradient descent on the per-feature L2 weights.
    prob = ridge_problem(100, 40, seed=2)
    solver = ig.CG(max_iter=200, tol=1e-10)
    phi_cold = phi_warm = prob.outer_params.clone()
    info = None
    cold_total = warm_total = 0
    for _ in range(15):
        hg_cold, cold_info = _call(prob, phi_cold, solver)
        hg_warm, info = _call(prob, phi_warm, solver, warm_start=info)
        assert _rel(hg_warm, prob.exact_hypergrad(phi_warm)) < 1e-8
        cold_total += cold_info.iterations
        warm_total += info.iterations
        phi_cold = phi_cold - hg_cold
        phi_warm = phi_warm - hg_warm
    assert _rel(phi_warm, phi_cold) < 1e-8
    # At a tight tolerance the warm start saves the digits the solution moved by per step
    # (here about 8% of the products); at loose tolerances the savings are larger.
    assert warm_total < 0.95 * cold_total


@pytest.mark.parametrize(
    "solver", [ig.Nystrom(rank=10, rho=0.0), ig.Neumann(terms=5, alpha=0.01), ig.Exact()]
)
def test_direct_and_series_solvers_ignore_the_warm_start(solver):
    # Nyström and Exact are direct; Neumann stays the fixed truncated series of the papers
    # it reproduces, so a warm start must not change their answer.
    prob = random_quadratic(10, 2, condition=10.0, seed=4)
    cold, _ = _call(prob, prob.outer_params, solver)
    guess = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    warm, _ = _call(prob, prob.outer_params, solver, warm_start=guess)
    assert torch.allclose(warm, cold, rtol=1e-12, atol=1e-14)


def test_bad_warm_start_names_the_call_and_shape():
    prob = random_quadratic(6, 2, seed=0)
    with pytest.raises(ig.InputError, match=r"hypergrad\(warm_start=\.\.\.\).*\(6,\)"):
        _call(prob, prob.outer_params, ig.CG(), warm_start=torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ig.InputError, match="warm_start"):
        _call(prob, prob.outer_params, ig.CG(), warm_start="previous")

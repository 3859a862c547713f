"""Hypergradients on random quadratic problems against closed forms (property-based)."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    SOLVERS,
    STRUCTURES,
    exported_subclasses,
    flat,
    problems,
    rel_err,
    same_structure,
)
from hypothesis import given
from hypothesis import strategies as st

import implicitgrad as ig
from implicitgrad.testing import random_quadratic


def test_every_exported_solver_is_in_the_registry():
    assert exported_subclasses(ig.AbstractSolver) == {case.name for case in SOLVERS}


def _dim(prob) -> int:
    return prob.A.shape[0]


@pytest.mark.parametrize("case", [c for c in SOLVERS if c.exact], ids=lambda c: c.name)
@given(prob=problems)
def test_exact_solvers_match_closed_form(case, prob):
    solver = case.make(_dim(prob), prob.largest_eigenvalue)
    hg, info = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        solver,
        return_info=True,
    )
    expected = prob.exact_hypergrad()
    assert same_structure(hg, prob.outer_params)
    assert rel_err(hg, expected) < case.tol
    # Direct methods (Nyström) have no tolerance and report converged=None.
    assert info.converged is not False
    assert info.residual is not None and info.residual < 1e-8
    assert info.stationarity < 1e-8


@given(prob=problems, terms=st.integers(0, 8), frac=st.floats(0.05, 1.9))
def test_neumann_equals_truncated_series(prob, terms, frac):
    alpha = frac / prob.largest_eigenvalue
    hg, info = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        ig.Neumann(terms=terms, alpha=alpha),
        return_info=True,
    )
    assert rel_err(hg, prob.neumann_hypergrad(terms, alpha)) < 1e-10
    assert info.iterations == terms
    assert info.converged is None


def test_neumann_approaches_exact_as_terms_grow():
    prob = random_quadratic(10, 4, condition=20.0, seed=3)
    alpha = 1.0 / prob.largest_eigenvalue
    errors = []
    for terms in [0, 5, 20, 80, 320]:
        hg = ig.hypergrad(
            prob.inner_loss,
            prob.outer_loss,
            prob.inner_params,
            prob.outer_params,
            ig.Neumann(terms=terms, alpha=alpha),
        )
        errors.append(rel_err(hg, prob.exact_hypergrad()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6


def test_neumann_residual_is_reported_when_asked():
    prob = random_quadratic(6, 2, condition=5.0, seed=1)
    alpha = 1.0 / prob.largest_eigenvalue
    _, info = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        ig.Neumann(terms=3, alpha=alpha, compute_residual=True),
        return_info=True,
    )
    v, _ = prob.outer_gradients()
    M = torch.eye(6, dtype=torch.float64) - alpha * prob.A
    expected = torch.linalg.vector_norm(torch.linalg.matrix_power(M, 4) @ v) / v.norm()
    assert info.residual == pytest.approx(float(expected), rel=1e-10)
    assert info.iterations == 4


def test_neumann_automatic_alpha_converges():
    prob = random_quadratic(8, 3, condition=4.0, seed=2)
    hg, info = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        ig.Neumann(terms=200),
        return_info=True,
    )
    assert rel_err(hg, prob.exact_hypergrad()) < 1e-8
    assert info.iterations == 200 + ig.Neumann().power_iters


@given(prob=problems, scale=st.floats(0.01, 10.0))
def test_identity_equals_definition(prob, scale):
    hg = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        ig.Identity(scale=scale),
    )
    assert rel_err(hg, prob.identity_hypergrad(scale)) < 1e-12


def _gd_update(prob, lr):
    def update(theta, phi):
        (g,) = torch.autograd.grad(prob.inner_loss(theta, phi), [theta], create_graph=True)
        return theta - lr * g

    return update


@given(prob=problems, terms=st.integers(0, 6), frac=st.floats(0.05, 1.5))
def test_fixed_point_neumann_reproduces_paper_estimator(prob, terms, frac):
    """fixed_point_hypergrad with T = θ - α∇f and the unit-step series Neumann(K, 1) is the
    paper's estimator p = α Σ_j (I - αH)^j v, which hypergrad gives with Neumann(K, α)."""
    alpha = frac / prob.largest_eigenvalue
    theta = flat(prob.inner_params)
    phi = prob.outer_params
    vec_prob_inner = lambda t, p: prob.inner_loss(prob._tree(t, prob.inner_template), p)  # noqa: E731
    vec_outer = lambda t, p: prob.outer_loss(prob._tree(t, prob.inner_template), p)  # noqa: E731

    def update(t, p):
        (g,) = torch.autograd.grad(vec_prob_inner(t, p), [t], create_graph=True)
        return t - alpha * g

    fp = ig.fixed_point_hypergrad(update, vec_outer, theta, phi, ig.Neumann(terms, 1.0))
    root = ig.hypergrad(
        prob.inner_loss, prob.outer_loss, prob.inner_params, phi, ig.Neumann(terms, alpha)
    )
    expected = prob.neumann_hypergrad(terms, alpha)
    assert rel_err(fp, expected) < 1e-10
    assert rel_err(root, expected) < 1e-10


@pytest.mark.parametrize(
    "solver",
    [ig.Exact(), ig.CG(max_iter=100, tol=1e-13), ig.GMRES(max_iter=100, tol=1e-13)],
    ids=["Exact", "CG", "GMRES"],
)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_root_and_fixed_point_forms_agree(solver, structure):
    prob = random_quadratic(
        7, 3, condition=10.0, inner_structure=structure, outer_structure=structure, seed=11
    )
    lr = 1.0 / prob.largest_eigenvalue
    theta, phi = prob.inner_params, prob.outer_params
    import torch.utils._pytree as pytree

    def update(t, p):
        leaves, spec = pytree.tree_flatten(t)
        grads = torch.autograd.grad(prob.inner_loss(t, p), leaves, create_graph=True)
        return pytree.tree_unflatten([x - lr * g for x, g in zip(leaves, grads)], spec)

    root = ig.hypergrad(prob.inner_loss, prob.outer_loss, theta, phi, solver)
    # A gradient step has a symmetric Jacobian: declaring it lets CG accept the operator.
    fixed = ig.fixed_point_hypergrad(
        update, prob.outer_loss, theta, phi, solver, symmetric=solver.requires_symmetric
    )
    assert same_structure(fixed, phi)
    assert rel_err(fixed, root) < 1e-9
    assert rel_err(root, prob.exact_hypergrad()) < 1e-9


def test_fixed_point_with_torch_func_grad_update():
    prob = random_quadratic(5, 2, condition=3.0, seed=5)
    lr = 0.5 / prob.largest_eigenvalue
    inner = lambda t, p: 0.5 * t @ (prob.A @ t) - t @ (prob.B @ p + prob.c)  # noqa: E731
    outer = lambda t, p: prob.outer_loss(t, p)  # noqa: E731
    update = lambda t, p: t - lr * torch.func.grad(inner)(t, p)  # noqa: E731
    hg = ig.fixed_point_hypergrad(update, outer, prob.inner_params, prob.outer_params, ig.Exact())
    assert rel_err(hg, prob.exact_hypergrad()) < 1e-10


def test_float32_follows_input_dtype():
    prob = random_quadratic(6, 3, condition=5.0, seed=4, dtype=torch.float32)
    hg = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        ig.CG(max_iter=50, tol=1e-6),
    )
    assert hg.dtype == torch.float32
    assert rel_err(hg, prob.exact_hypergrad()) < 1e-4


def test_cg_warm_start_from_solution_needs_no_iterations():
    prob = random_quadratic(9, 3, condition=50.0, seed=8)
    args = (prob.inner_loss, prob.outer_loss, prob.inner_params, prob.outer_params)
    hg1, info1 = ig.hypergrad(*args, ig.CG(max_iter=100, tol=1e-10), return_info=True)
    hg2, info2 = ig.hypergrad(
        *args, ig.CG(max_iter=100, tol=1e-10), return_info=True, warm_start=info1
    )
    assert info2.iterations < info1.iterations
    assert rel_err(hg2, hg1) < 1e-8


def test_direct_dependence_on_phi_is_included():
    prob = random_quadratic(4, 3, condition=2.0, seed=9)
    hg = ig.hypergrad(
        prob.inner_loss, prob.outer_loss, prob.inner_params, prob.outer_params, ig.Exact()
    )
    v, direct = prob.outer_gradients()
    implicit_only = prob.B.T @ torch.linalg.solve(prob.A, v)
    assert torch.allclose(flat(hg), direct + implicit_only, rtol=1e-10, atol=1e-12)
    assert float(direct.norm()) > 1e-3  # the direct term is really exercised

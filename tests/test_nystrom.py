"""The Nyström solver: exact at full rank, the documented low-rank formula below it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import implicitgrad as ig
from implicitgrad.testing import finite_difference_hypergrad, random_quadratic, ridge_problem

SKETCHES = ["gaussian", "columns"]


def _flat(tree) -> torch.Tensor:
    leaves = torch.utils._pytree.tree_leaves(tree)
    return torch.cat([t.reshape(-1) for t in leaves])


def _rel(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _dense_operator(A: torch.Tensor, batched: bool = True) -> ig.LinearOperator:
    return ig.LinearOperator(
        symmetric=True,
        matvec=lambda v: A @ v,
        size=A.shape[0],
        dtype=A.dtype,
        device=A.device,
        batched_matvec=(lambda vs: vs @ A.T) if batched else None,
    )


def _dense_low_rank_solve(solver: ig.Nystrom, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """$(H_k + \\rho I)^{-1} b$ with $H_k = A\\Omega(\\Omega^\\top A\\Omega)^{-1}\\Omega^\\top A$,
    formed densely: an independent check of the Woodbury evaluation."""
    omega = solver.sketch_matrix(A.shape[0], A.dtype, A.device)
    c = A @ omega
    h_k = c @ torch.linalg.solve(omega.T @ c, c.T)
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    return torch.linalg.solve(h_k + solver.rho * eye, b)


@pytest.mark.parametrize("sketch", SKETCHES)
@pytest.mark.parametrize("structure", ["tensor", "dict", "nested"])
def test_full_rank_matches_closed_form(sketch, structure):
    prob = random_quadratic(9, 4, condition=100.0, inner_structure=structure, seed=1)
    solver = ig.Nystrom(rank=9, rho=0.0, sketch=sketch, seed=3)
    hg, info = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        solver=solver,
        return_info=True,
    )
    assert _rel(hg, prob.exact_hypergrad()) < 1e-8
    assert info.iterations == 9
    assert info.residual is None and info.converged is None


@pytest.mark.parametrize("sketch", SKETCHES)
def test_full_rank_with_damping_inverts_shifted_hessian(sketch):
    prob = random_quadratic(8, 3, condition=20.0, seed=2)
    rho = 0.3
    hg = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        solver=ig.Nystrom(rank=8, rho=rho, sketch=sketch),
    )
    v, direct = prob.outer_gradients()
    x = torch.linalg.solve(prob.A + rho * torch.eye(8, dtype=prob.A.dtype), v)
    assert _rel(hg, direct + prob.B.T @ x) < 1e-10


@pytest.mark.parametrize("sketch", SKETCHES)
@pytest.mark.parametrize("rank", [1, 3, 7])
def test_low_rank_is_the_woodbury_formula(sketch, rank):
    prob = random_quadratic(12, 3, condition=50.0, seed=4)
    solver = ig.Nystrom(rank=rank, rho=0.5, sketch=sketch, seed=7)
    b = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sol = solver.solve(_dense_operator(prob.A), b)
    expected = _dense_low_rank_solve(solver, prob.A, b)
    assert sol.iterations == rank
    assert _rel(sol.value, expected) < 1e-10
    # A low-rank approximation with rank < n is not the exact inverse.
    assert _rel(sol.value, torch.linalg.solve(prob.A, b)) > 1e-3


def test_low_rank_hypergradient_uses_the_same_formula():
    prob = random_quadratic(10, 4, condition=30.0, seed=5)
    solver = ig.Nystrom(rank=4, rho=1.0, seed=1)
    hg = ig.hypergrad(
        prob.inner_loss, prob.outer_loss, prob.inner_params, prob.outer_params, solver=solver
    )
    v, direct = prob.outer_gradients()
    assert _rel(hg, direct + prob.B.T @ _dense_low_rank_solve(solver, prob.A, v)) < 1e-10


def test_exact_on_low_rank_hessian_once_rank_reaches_it():
    # Nyström is exact for a PSD matrix of rank r once k >= r; a singular W^+ handles k > r.
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(20, 3, generator=gen, dtype=torch.float64)).Q
    spike = u @ torch.diag(torch.tensor([50.0, 20.0, 5.0], dtype=torch.float64)) @ u.T
    b = torch.randn(20, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(spike + torch.eye(20, dtype=torch.float64), b)
    errors = [
        _rel(ig.Nystrom(rank=k, rho=1.0).solve(_dense_operator(spike), b).value, exact)
        for k in (1, 2, 3, 5)
    ]
    assert errors[0] > errors[1] > 1e-3
    assert errors[2] < 1e-10 and errors[3] < 1e-10


def test_matches_finite_differences_on_ridge():
    prob = ridge_problem(40, 5, seed=3)
    hg = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        solver=ig.Nystrom(rank=5, rho=0.0),
    )
    fd = finite_difference_hypergrad(prob.inner_solution, prob.outer_loss, prob.outer_params)
    # Central differences in float64 with eps=1e-5: O(eps^2) truncation plus O(1e-16/eps)
    # rounding, about 1e-9 relative on this problem.
    assert _rel(hg, fd) < 1e-7
    assert _rel(hg, prob.exact_hypergrad()) < 1e-10


def test_batched_and_looped_products_agree():
    prob = random_quadratic(15, 2, condition=10.0, seed=6)
    solver = ig.Nystrom(rank=6, rho=0.2)
    b = torch.randn(15, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    batched = solver.solve(_dense_operator(prob.A, batched=True), b).value
    looped = solver.solve(_dense_operator(prob.A, batched=False), b).value
    assert _rel(batched, looped) < 1e-12


def test_same_seed_same_answer_and_seed_matters():
    prob = random_quadratic(15, 2, condition=10.0, seed=6)
    b = torch.randn(15, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    op = _dense_operator(prob.A)
    first = ig.Nystrom(rank=4, seed=11).solve(op, b).value
    again = ig.Nystrom(rank=4, seed=11).solve(op, b).value
    other = ig.Nystrom(rank=4, seed=12).solve(op, b).value
    assert torch.equal(first, again)
    assert _rel(first, other) > 1e-6


def test_compute_residual_reports_true_residual():
    prob = random_quadratic(10, 2, condition=10.0, seed=8)
    b = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sol = ig.Nystrom(rank=5, rho=0.5, compute_residual=True).solve(_dense_operator(prob.A), b)
    true = float(torch.linalg.vector_norm(prob.A @ sol.value - b) / torch.linalg.vector_norm(b))
    assert sol.iterations == 6
    assert sol.residual == pytest.approx(true, rel=1e-10)


def test_rank_above_size_is_capped_and_zero_rhs():
    prob = random_quadratic(5, 2, seed=0)
    op = _dense_operator(prob.A)
    sol = ig.Nystrom(rank=50, rho=0.0).solve(op, torch.ones(5, dtype=torch.float64))
    assert sol.iterations == 5
    assert _rel(sol.value, torch.linalg.solve(prob.A, torch.ones(5, dtype=torch.float64))) < 1e-10
    zero = ig.Nystrom(rank=3).solve(op, torch.zeros(5, dtype=torch.float64))
    assert zero.iterations == 0 and torch.equal(zero.value, torch.zeros(5, dtype=torch.float64))


def test_float32_mlp_inner_problem_runs_batched():
    torch.manual_seed(0)
    x, y = torch.randn(30, 4), torch.randn(30)
    w1, w2 = torch.randn(4, 8) * 0.5, torch.randn(8) * 0.5

    def inner(params, lam):
        a, b = params
        return ((torch.tanh(x @ a) @ b - y) ** 2).mean() + lam.exp() * ((a**2).sum() + (b**2).sum())

    hg, info = ig.hypergrad(
        inner,
        lambda p, lam: ((torch.tanh(x @ p[0]) @ p[1]) ** 2).mean(),
        (w1, w2),
        torch.tensor(0.0),
        solver=ig.Nystrom(rank=40, rho=0.0),
        stationarity_tol=None,
        return_info=True,
    )
    assert hg.dtype == torch.float32 and torch.isfinite(hg)
    assert info.iterations == 40


def test_negative_definite_hessian_raises():
    with pytest.raises(ig.SolverError, match="no positive curvature"):
        ig.hypergrad(
            lambda t, p: -((t - p) ** 2).sum(),
            lambda t, p: t.sum(),
            torch.ones(3, dtype=torch.float64),
            torch.ones(3, dtype=torch.float64),
            solver=ig.Nystrom(rank=3),
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.0}, "rank"),
        ({"rho": -1.0}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"sketch": "svd"}, "sketch"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_invalid_fields_are_rejected(kwargs, match):
    with pytest.raises(ig.InputError, match=match):
        ig.Nystrom(**kwargs)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 14),
    rank=st.integers(1, 14),
    rho=st.floats(1e-3, 10.0),
    log_condition=st.floats(0.0, 3.0),
    sketch=st.sampled_from(SKETCHES),
    seed=st.integers(0, 2**16),
)
def test_property_solve_matches_dense_low_rank_formula(n, rank, rho, log_condition, sketch, seed):
    prob = random_quadratic(n, 1, condition=10.0**log_condition, seed=seed)
    b = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    solver = ig.Nystrom(rank=rank, rho=rho, sketch=sketch, seed=seed)
    sol = solver.solve(_dense_operator(prob.A), b)
    assert sol.iterations == min(rank, n)
    assert _rel(sol.value, _dense_low_rank_solve(solver, prob.A, b)) < 1e-8
    if rank >= n:
        shifted = prob.A + rho * torch.eye(n, dtype=torch.float64)
        assert _rel(sol.value, torch.linalg.solve(shifted, b)) < 1e-8

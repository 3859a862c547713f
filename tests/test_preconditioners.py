"""Preconditioned CG: exact on closed forms and against finite differences, honest about its
residual and its products, and reusable across outer steps."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    PRECONDITIONERS,
    exported_subclasses,
    preconditioned_cg,
    problems,
    rel_err,
    same_structure,
    seeded_recycled,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import implicitgrad as ig
from implicitgrad._solvers.base import LinearOperator
from implicitgrad.testing import finite_difference_hypergrad, random_quadratic, ridge_problem

F64 = torch.float64
CASES = pytest.mark.parametrize("case", PRECONDITIONERS, ids=lambda c: c.name)


def _operator(A: torch.Tensor, calls: list | None = None) -> LinearOperator:
    def matvec(v: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(1)
        return A @ v

    return LinearOperator(matvec, A.shape[0], A.dtype, A.device, symmetric=True)


def _spd(n: int, condition: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64)).Q
    return (
        q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(condition)), n, dtype=F64)) @ q.T
    )


def test_every_exported_preconditioner_is_in_the_registry():
    exported = exported_subclasses(ig.AbstractPreconditioner)
    assert exported == {case.name for case in PRECONDITIONERS}


@CASES
@given(prob=problems)
def test_preconditioned_cg_matches_closed_form(case, prob):
    n = prob.A.shape[0]
    hg, info = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        preconditioned_cg(case, n),
        return_info=True,
    )
    assert same_structure(hg, prob.outer_params)
    assert rel_err(hg, prob.exact_hypergrad()) < 1e-8
    assert info.converged is True
    assert info.residual is not None and info.residual < 1e-8
    assert 0 <= info.preconditioner_products <= info.iterations
    # Only the recycled preconditioner is built without products of its own.
    assert (info.preconditioner_products == 0) == (case.name == "RecycledPreconditioner")


@CASES
def test_preconditioned_cg_matches_finite_differences(case):
    prob = ridge_problem(40, 5, seed=3)
    hg = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        prob.inner_params,
        prob.outer_params,
        preconditioned_cg(case, 5),
    )
    fd = finite_difference_hypergrad(prob.inner_solution, prob.outer_loss, prob.outer_params)
    # Central differences in float64 with eps=1e-5: O(eps^2) truncation plus O(1e-16/eps)
    # rounding, about 1e-9 relative on this problem.
    assert rel_err(hg, fd) < 1e-7


@CASES
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 40),
    condition=st.sampled_from([10.0, 1e3, 1e5]),
    seed=st.integers(0, 1000),
    tol=st.sampled_from([1e-4, 1e-8, 1e-11]),
)
def test_reported_residual_is_the_true_unpreconditioned_one(case, n, condition, seed, tol):
    A = _spd(n, condition, seed)
    b = torch.randn(n, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    calls: list = []
    sol = ig.CG(max_iter=10 * n, tol=tol, preconditioner=case.make(n)).solve(_operator(A, calls), b)
    true = float(torch.linalg.vector_norm(A @ sol.value - b) / torch.linalg.vector_norm(b))
    assert sol.converged and true <= tol * 1.01
    # The reported residual is the true one up to rounding: relative to it, and at the
    # rounding floor eps·κ (where the recomputed value itself is rounding) absolutely.
    floor = torch.finfo(F64).eps * condition
    assert sol.residual == pytest.approx(true, rel=1e-3, abs=10 * floor)
    assert sol.iterations == len(calls)


def test_nystrom_preconditioner_cuts_iterations_on_outlying_eigenvalues():
    n = 60
    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64)).Q
    eig = torch.cat([torch.logspace(2, 5, 10, dtype=F64), torch.linspace(1, 2, n - 10, dtype=F64)])
    A = q @ torch.diag(eig) @ q.T
    b = torch.randn(n, dtype=F64, generator=gen)
    plain = ig.CG(max_iter=500, tol=1e-10).solve(_operator(A), b)
    pre = ig.CG(max_iter=500, tol=1e-10, preconditioner=ig.NystromPreconditioner(rank=12))
    sol = pre.solve(_operator(A), b)
    assert sol.preconditioner_products == 12
    assert sol.iterations - 12 < plain.iterations / 2
    assert torch.allclose(sol.value, torch.linalg.solve(A, b), rtol=1e-8)


def test_full_rank_nystrom_preconditioner_solves_in_one_step():
    A = _spd(20, 1e4, seed=1)
    b = torch.ones(20, dtype=F64)
    pc = ig.NystromPreconditioner(rank=20)
    sol = ig.CG(tol=1e-9, preconditioner=pc).solve(_operator(A), b)
    # P⁻¹A = λ_n I: one iteration, and at most one product to check the residual.
    assert sol.iterations - 20 <= 2
    assert sol.converged


def test_exact_diagonal_is_found_by_one_probe():
    scales = torch.logspace(0, 3, 30, dtype=F64)
    op = LinearOperator(lambda v: scales * v, 30, F64, torch.device("cpu"), symmetric=True)
    built = ig.DiagonalPreconditioner(probes=1).build(op)
    assert built.products == 1 and built.details["clamped"] == 0
    assert torch.allclose(built(torch.ones(30, dtype=F64)), 1 / scales)


def test_damping_reaches_the_preconditioner():
    A = _spd(10, 100.0, seed=2)
    b = torch.ones(10, dtype=F64)
    solver = ig.CG(tol=1e-12, damping=0.5, preconditioner=ig.NystromPreconditioner(rank=10))
    sol = solver.solve(_operator(A), b)
    assert torch.allclose(sol.value, torch.linalg.solve(A + 0.5 * torch.eye(10, dtype=F64), b))
    assert sol.iterations - 10 <= 2  # the full-rank sketch of A + 0.5 I is exact


def test_reuse_on_a_schedule_and_when_iterations_grow():
    A = _spd(30, 1e4, seed=3)
    b = torch.ones(30, dtype=F64)
    pc = ig.NystromPreconditioner(rank=10, refresh_every=3, refresh_growth=None)
    solver = ig.CG(tol=1e-10, max_iter=300, preconditioner=pc)
    spent = [solver.solve(_operator(A), b).preconditioner_products for _ in range(7)]
    assert spent == [10, 0, 0, 10, 0, 0, 10]
    assert pc.builds == 3
    # A drifted operator needs more iterations with the old build: rebuilt at once after.
    pc = ig.NystromPreconditioner(rank=10, refresh_every=100, refresh_growth=1.5)
    solver = ig.CG(tol=1e-10, max_iter=300, preconditioner=pc)
    first = solver.solve(_operator(A), b)
    other = _spd(30, 1e4, seed=4)
    stale = solver.solve(_operator(other), b)
    assert stale.preconditioner_products == 0
    assert torch.allclose(stale.value, torch.linalg.solve(other, b), rtol=1e-7)
    assert stale.iterations > 1.5 * (first.iterations - 10)
    assert solver.solve(_operator(other), b).preconditioner_products == 10


def _outer_steps(prob, solver: ig.CG, steps: int, warm: bool) -> list:
    """The HypergradInfo of `steps` hypergradients of the same problem with one solver,
    each checked against the closed form."""
    infos: list = []
    for _ in range(steps):
        hg, info = ig.hypergrad(
            prob.inner_loss,
            prob.outer_loss,
            prob.inner_params,
            prob.outer_params,
            solver,
            return_info=True,
            warm_start=infos[-1] if warm and infos else None,
        )
        assert rel_err(hg, prob.exact_hypergrad()) < 1e-8
        infos.append(info)
    return infos


def test_reuse_across_outer_steps_with_warm_start():
    prob = random_quadratic(12, 3, condition=1e3, seed=5)
    pc = ig.NystromPreconditioner(rank=6, refresh_every=10)
    solver = ig.CG(tol=1e-12, max_iter=100, preconditioner=pc)
    infos = _outer_steps(prob, solver, 3, warm=True)
    assert pc.builds == 1 and infos[-1].preconditioner_products == 0


def test_a_different_size_rebuilds():
    pc = ig.DiagonalPreconditioner(probes=2, refresh_every=50)
    solver = ig.CG(tol=1e-10, preconditioner=pc)
    for n in (5, 7, 5):
        sol = solver.solve(_operator(_spd(n, 10.0, seed=n)), torch.ones(n, dtype=F64))
        assert sol.preconditioner_products == 2
    assert pc.builds == 3


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ig.NystromPreconditioner(rank=0), "rank"),
        (lambda: ig.NystromPreconditioner(rho=-1.0), "rho"),
        (lambda: ig.NystromPreconditioner(sketch="sobol"), "sketch"),
        (lambda: ig.DiagonalPreconditioner(probes=0), "probes"),
        (lambda: ig.DiagonalPreconditioner(refresh_every=0), "refresh_every"),
        (lambda: ig.NystromPreconditioner(refresh_growth=0.5), "refresh_growth"),
        (lambda: ig.CG(preconditioner="nystrom"), "AbstractPreconditioner"),
        (lambda: ig.RecycledPreconditioner(memory=1), "memory"),
        (lambda: ig.RecycledPreconditioner(memory=2.5), "memory"),
        (lambda: ig.RecycledPreconditioner(refresh_every=0), "refresh_every"),
    ],
)
def test_invalid_settings_are_refused(make, match):
    with pytest.raises(ig.InputError, match=match):
        make()


def test_batches_are_refused_with_a_preconditioner():
    op = LinearOperator(lambda v: v, 3, F64, torch.device("cpu"), symmetric=True, batch_size=2)
    solver = ig.CG(preconditioner=ig.DiagonalPreconditioner())
    with pytest.raises(ig.InputError, match="one system at a time"):
        solver.solve(op, torch.ones(2, 3, dtype=F64))


def test_indefinite_operator_is_reported():
    A = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=F64))
    solver = ig.CG(preconditioner=ig.NystromPreconditioner(rank=3))
    with pytest.raises(ig.SolverError):
        solver.solve(_operator(A), torch.ones(3, dtype=F64))


# ---------------------------------------------------------------------------------------------
# RecycledPreconditioner: built from the products of earlier solves.


def _outliers(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64)).Q
    eig = torch.cat([torch.logspace(2, 5, 8, dtype=F64), torch.linspace(1, 2, n - 8, dtype=F64)])
    return q @ torch.diag(eig) @ q.T


def test_recycled_preconditioner_cuts_iterations_of_the_next_solve():
    A = _outliers(60, seed=0)
    gen = torch.Generator().manual_seed(1)
    b1, b2 = torch.randn(60, dtype=F64, generator=gen), torch.randn(60, dtype=F64, generator=gen)
    calls: list = []
    pc = ig.RecycledPreconditioner(memory=40)
    solver = ig.CG(max_iter=500, tol=1e-10, preconditioner=pc)
    first = solver.solve(_operator(A, calls), b1)
    plain = [ig.CG(max_iter=500, tol=1e-10).solve(_operator(A), b).iterations for b in (b1, b2)]
    second = solver.solve(_operator(A, calls), b2)
    assert first.iterations == plain[0]  # nothing recorded yet: plain CG
    assert (
        second.preconditioner_products == 0 and second.iterations == len(calls) - first.iterations
    )
    assert second.iterations < plain[1] / 2
    assert torch.allclose(second.value, torch.linalg.solve(A, b2), rtol=1e-8)
    assert pc.builds == 2


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 40),
    condition=st.sampled_from([10.0, 1e3, 1e5]),
    drift=st.sampled_from([0.0, 1e-2, 1.0]),
    memory=st.integers(2, 30),
    seed=st.integers(0, 1000),
)
def test_recycled_products_of_a_drifting_operator_keep_cg_exact(n, condition, drift, memory, seed):
    """Pairs recorded on A, reused on A + drift·E (SPD): the answer and the reported residual
    are those of the new system."""
    A = _spd(n, condition, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    e = torch.randn(n, n, dtype=F64, generator=gen)
    B = A + drift * (e @ e.T) / n
    b = torch.randn(n, dtype=F64, generator=gen)
    pc = ig.RecycledPreconditioner(memory=memory)
    solver = ig.CG(max_iter=10 * n, tol=1e-9, preconditioner=pc)
    first = solver.solve(_operator(A), b)
    sol = solver.solve(_operator(B), b)
    true = float(torch.linalg.vector_norm(B @ sol.value - b) / torch.linalg.vector_norm(b))
    assert sol.converged and true <= 1e-9 * 1.01
    assert sol.residual == pytest.approx(true, rel=1e-3, abs=10 * torch.finfo(F64).eps * condition)
    assert pc.recorded == min(memory, first.iterations + sol.iterations)


def test_recycled_hypergradients_of_an_outer_loop_match_closed_forms():
    pc = ig.RecycledPreconditioner(memory=12)
    solver = ig.CG(tol=1e-12, max_iter=200, preconditioner=pc)
    prob = random_quadratic(12, 3, condition=1e3, seed=5)
    infos = _outer_steps(prob, solver, 3, warm=False)  # the same system at every step
    assert all(info.preconditioner_products == 0 for info in infos)
    assert infos[1].iterations < infos[0].iterations


def test_recycled_preconditioner_matches_finite_differences_after_another_problem():
    other = ridge_problem(40, 5, seed=4)
    prob = ridge_problem(40, 5, seed=3)
    pc = ig.RecycledPreconditioner(memory=4)
    solver = ig.CG(max_iter=100, tol=1e-13, preconditioner=pc)
    for p in (other, prob):
        hg = ig.hypergrad(p.inner_loss, p.outer_loss, p.inner_params, p.outer_params, solver)
    fd = finite_difference_hypergrad(prob.inner_solution, prob.outer_loss, prob.outer_params)
    assert rel_err(hg, fd) < 1e-7


def test_nystrom_from_pairs_is_exact_on_a_full_set_and_drops_dependent_directions():
    from implicitgrad._preconditioners.recycled import nystrom_from_pairs

    A = _spd(8, 1e3, seed=6)
    s = torch.randn(8, 8, dtype=F64, generator=torch.Generator().manual_seed(7))

    def factor(s):  # rows: vectors; their products are the rows of s @ A
        y = s @ A
        coef, lam = nystrom_from_pairs(s @ s.T, s @ y.T, y @ y.T)
        return y.T @ coef, lam

    u, lam = factor(s)
    assert torch.allclose(u @ torch.diag(lam) @ u.T, A, rtol=1e-6, atol=1e-6)
    assert torch.allclose(u.T @ u, torch.eye(8, dtype=F64), atol=1e-6)
    # A repeated direction (and a zero one) adds nothing and does not break the factorization.
    s2 = torch.cat([s[:3], 2 * s[:1], torch.zeros(1, 8, dtype=F64)])
    u2, lam2 = factor(s2)
    assert lam2.numel() == 3 and bool((lam2 > 0).all())


def test_recycled_preconditioner_forgets_products_of_another_size():
    pc = seeded_recycled(5)
    assert pc.recorded == pc.memory
    solver = ig.CG(tol=1e-10, preconditioner=pc)
    A = _spd(7, 10.0, seed=8)
    sol = solver.solve(_operator(A), torch.ones(7, dtype=F64))
    assert torch.allclose(sol.value, torch.linalg.solve(A, torch.ones(7, dtype=F64)), rtol=1e-8)
    assert pc._store.rows.shape == (2 * pc.memory, 7) and pc.recorded == min(
        sol.iterations, pc.memory
    )


@pytest.mark.parametrize("kind", ["negative", "zero"])
def test_recycled_pairs_that_are_all_dropped_give_plain_cg(kind):
    # Only negative curvature (products of -I), or only zero vectors: every kept pair is
    # dropped, and the next solve must run as if nothing had been recorded.
    n = 6
    A = _spd(n, 10.0, seed=3)
    gen = torch.Generator().manual_seed(4)
    pc = ig.RecycledPreconditioner(memory=4)
    for _ in range(3):
        v = (
            torch.randn(n, dtype=F64, generator=gen)
            if kind == "negative"
            else torch.zeros(n, dtype=F64)
        )
        pc.record(v, -v)
    b = torch.randn(n, dtype=F64, generator=gen)
    sol = ig.CG(max_iter=50, tol=1e-12, damping=5.0, preconditioner=pc).solve(_operator(A), b)
    want = torch.linalg.solve(A + 5.0 * torch.eye(n, dtype=F64), b)
    assert sol.converged and torch.allclose(sol.value, want, rtol=1e-10)

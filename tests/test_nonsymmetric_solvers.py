"""GMRES and BiCGStab on non-symmetric systems, at the level of the solver contract.

The systems are $A = I - J$ with $J$ a contraction, the form of the fixed-point operator
$I - (\\partial T/\\partial\\theta)^\\top$; the reference is a dense LU solve in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import implicitgrad as ig
from implicitgrad._solvers.base import LinearOperator
from implicitgrad._solvers.bicgstab import BiCGStab
from implicitgrad._solvers.gmres import GMRES

F64 = torch.float64
SOLVERS = {"GMRES": GMRES, "BiCGStab": BiCGStab}


def make_operator(A: torch.Tensor, *, symmetric: bool = False, calls: list | None = None):
    """A matrix-free operator for the dense `A`; `calls` (a list) counts the products."""

    def matvec(v: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(1)
        return A @ v

    return LinearOperator(
        matvec=matvec, size=A.shape[0], dtype=A.dtype, device=A.device, symmetric=symmetric
    )


def true_residual64(A: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> float:
    """The relative residual of `x`, recomputed in float64 from the same `A` and `b`."""
    A, x, b = A.to(F64), x.to(F64), b.to(F64)
    return float(torch.linalg.vector_norm(b - A @ x) / torch.linalg.vector_norm(b))


def relative_error(x: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> float:
    """||x - A⁻¹b|| / ||A⁻¹b|| against the dense LU solve."""
    expected = torch.linalg.solve(A, b)
    return float(torch.linalg.vector_norm(x - expected) / torch.linalg.vector_norm(expected))


def contraction_system(
    kind: str, n: int, rho: float, nonnormal: float, seed: int, cond_cap: float = 1e3
) -> tuple[torch.Tensor, torch.Tensor]:
    """$A = I - J$ with spectral radius of $J$ at most `rho` < 1, and a right-hand side.

    - `dense`: a Gaussian matrix scaled to spectral radius `rho` (mildly non-normal);
    - `normal`: $Q D Q^\\top$ with $D$ made of 2x2 rotation-scaling blocks (complex
      eigenvalues of modulus <= `rho`);
    - `triangular`: upper triangular, diagonal in [-rho, rho] and a strictly upper part of
      size `nonnormal` relative to it: highly non-normal, with the spectrum on the diagonal.

    The non-normal (or, for `dense` and `normal`, the whole) part of $J$ is halved until
    cond(A) <= `cond_cap`, so that a residual tolerance bounds the error of the solution.
    """
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(n, dtype=F64)
    if kind == "triangular":
        diag = torch.diag((2 * torch.rand(n, dtype=F64, generator=g) - 1) * rho)
        upper = torch.triu(torch.randn(n, n, dtype=F64, generator=g), 1) * nonnormal
        while torch.linalg.cond(eye - diag - upper) > cond_cap:
            upper = upper / 2
        A = eye - diag - upper
    else:
        if kind == "dense":
            G = torch.randn(n, n, dtype=F64, generator=g)
            J = G * (rho / torch.linalg.eigvals(G).abs().max())
        else:
            Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
            D = torch.zeros(n, n, dtype=F64)
            moduli = rho * torch.rand(n, dtype=F64, generator=g)
            angles = math.pi * torch.rand(n, dtype=F64, generator=g)
            for i in range(0, n - 1, 2):
                a, c = moduli[i] * angles[i].cos(), moduli[i] * angles[i].sin()
                D[i : i + 2, i : i + 2] = torch.stack([torch.stack([a, -c]), torch.stack([c, a])])
            if n % 2:
                D[-1, -1] = moduli[-1]
            J = Q @ D @ Q.T
        while torch.linalg.cond(eye - J) > cond_cap:
            J = J / 2
        A = eye - J
    return A, torch.randn(n, dtype=F64, generator=g)


def mild_system(n: int = 30, norm: float = 0.5, seed: int = 0, dtype=F64):
    """$A = I - J$ with $\\lVert J\\rVert_2$ = `norm` < 1: the field of values of $A$ lies in
    the disc of radius `norm` around 1, so every restarted GMRES(m) converges (Elman's bound)
    and BiCGStab behaves."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, n, dtype=F64, generator=g)
    A = torch.eye(n, dtype=F64) - G * (norm / torch.linalg.matrix_norm(G, ord=2))
    b = torch.randn(n, dtype=F64, generator=g)
    return A.to(dtype), b.to(dtype)


# --------------------------------------------------------------------------------------------
# Accuracy against the dense solve.


@pytest.mark.parametrize("name", SOLVERS)
@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["dense", "normal", "triangular"]),
    n=st.integers(1, 30),
    rho=st.floats(0.0, 0.95),
    nonnormal=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_dense_solve(name, kind, n, rho, nonnormal, seed):
    A, b = contraction_system(kind, n, rho, nonnormal, seed)
    # Full GMRES (restart >= n); budgets far above the n + 1 products exact arithmetic needs.
    solver = GMRES(max_iter=10 * n + 10, restart=30, tol=1e-12) if name == "GMRES" else None
    solver = solver or BiCGStab(max_iter=10 * n + 10, tol=1e-12)
    sol = solver.solve(make_operator(A), b)
    assert sol.converged is True
    assert sol.iterations <= solver.max_iter
    # cond(A) <= 1e3 and residual <= 1e-12 bound the relative error by 1e-9 (plus the
    # reference's own cond * eps ~ 2e-13); 1e-8 leaves a factor 10.
    assert relative_error(sol.value, A, b) <= 1e-8
    # The reported residual is the true one: two float64 evaluations of ||b - Ax|| / ||b||
    # differ by rounding, at most ~ n eps (||A|| ||x|| / ||b|| + 1) <= 30 * 2.2e-16 * 1e3.
    assert sol.residual <= 1e-12
    assert abs(sol.residual - true_residual64(A, sol.value, b)) <= 1e-11


@pytest.mark.parametrize("name", SOLVERS)
def test_symmetric_operator_is_accepted(name):
    g = torch.Generator().manual_seed(1)
    G = torch.randn(12, 12, dtype=F64, generator=g)
    A = G @ G.T + 12 * torch.eye(12, dtype=F64)
    b = torch.randn(12, dtype=F64, generator=g)
    sol = SOLVERS[name](tol=1e-12).solve(make_operator(A, symmetric=True), b)
    assert sol.converged
    # cond(A) is about 4, so a residual of 1e-12 gives an error of a few 1e-12.
    assert relative_error(sol.value, A, b) <= 1e-10


@pytest.mark.parametrize("restart", [1, 3, 10])
def test_gmres_restart_smaller_than_n_converges(restart):
    A, b = mild_system(n=30, norm=0.9)
    sol = GMRES(max_iter=2000, restart=restart, tol=1e-10).solve(make_operator(A), b)
    assert sol.converged and sol.residual <= 1e-10
    # cond(A) <= (1 + 0.9) / (1 - 0.9) = 19, so a residual of 1e-10 bounds the error by 2e-9.
    assert relative_error(sol.value, A, b) <= 5e-9


# --------------------------------------------------------------------------------------------
# Warm starts.


@pytest.mark.parametrize("name", SOLVERS)
def test_warm_start_at_the_solution(name):
    A, b = mild_system()
    calls = []
    sol = SOLVERS[name](tol=1e-10).solve(
        make_operator(A, calls=calls), b, x0=torch.linalg.solve(A, b)
    )
    # The residual of the LU solution, ~1e-16, is below tol: only its check is spent.
    assert sol.converged and sol.iterations <= 2 and len(calls) == sol.iterations


@pytest.mark.parametrize("name", SOLVERS)
def test_warm_start_near_the_solution_saves_products(name):
    A, b = mild_system()
    g = torch.Generator().manual_seed(3)
    x0 = torch.linalg.solve(A, b) + 1e-6 * torch.randn(30, dtype=F64, generator=g)
    solver = SOLVERS[name](tol=1e-10)
    cold = solver.solve(make_operator(A), b)
    warm = solver.solve(make_operator(A), b, x0=x0)
    assert cold.converged and warm.converged
    # From 1e-6 the residual has 4 orders of magnitude to go instead of 10.
    assert warm.iterations < cold.iterations


@pytest.mark.parametrize("name", SOLVERS)
def test_inputs_are_not_modified(name):
    A, b = mild_system(n=8)
    x0 = torch.ones(8, dtype=F64)
    b_copy, x0_copy = b.clone(), x0.clone()
    SOLVERS[name](tol=1e-10).solve(make_operator(A), b, x0=x0)
    assert torch.equal(b, b_copy) and torch.equal(x0, x0_copy)


# --------------------------------------------------------------------------------------------
# Honest residuals and the max_iter budget.


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("max_iter", [1, 2, 3, 7])
def test_max_iter_too_small_warns_with_the_true_residual(name, max_iter):
    A, b = mild_system(n=30, norm=0.9)
    calls = []
    with pytest.warns(ig.ConvergenceWarning, match="did not converge"):
        sol = SOLVERS[name](max_iter=max_iter, tol=1e-10).solve(make_operator(A, calls=calls), b)
    assert sol.converged is False
    assert sol.iterations <= max_iter and len(calls) == sol.iterations
    # In float64 the residual (>= 1e-3 here) is evaluated to ~1e-16: 1e-10 relative is loose.
    assert sol.residual == pytest.approx(true_residual64(A, sol.value, b), rel=1e-10)
    if max_iter == 1:
        # The only product is kept for the residual check, so nothing moves from x = 0.
        assert sol.residual == 1.0 and not sol.value.any()
    elif name == "GMRES":
        # One Arnoldi step minimizes the residual over span{b}, and (b, A b) > 0 for this A
        # (its field of values lies in the disc of radius 0.9 around 1).
        assert sol.residual < 1.0


@pytest.mark.parametrize("name", SOLVERS)
def test_float32_unreachable_tol_mid_solve(name):
    A, b = mild_system(n=30, norm=0.9, dtype=torch.float32)
    with pytest.warns(ig.ConvergenceWarning, match="float32"):
        sol = SOLVERS[name](max_iter=6, tol=1e-10).solve(make_operator(A), b)
    assert sol.converged is False
    true = true_residual64(A, sol.value, b)
    # The solve stops far from the float32 rounding level (~1e-7), where evaluating the
    # residual in float32 is accurate to ~1e-7 / 1e-3 = 1e-4 relative: 10% is loose.
    assert true > 1e-3
    assert sol.residual == pytest.approx(true, rel=0.1)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_unreachable_tol_at_the_rounding_floor(name, seed):
    # In float32 GMRES's Givens estimate and BiCGStab's recursive residual fall below
    # tol = 1e-10 while the true residual stalls near 1e-7; an estimate-based solver would
    # stop early and report converged=True with a residual <= tol.
    A, b = mild_system(n=20, norm=0.8, seed=seed, dtype=torch.float32)
    with pytest.warns(ig.ConvergenceWarning, match="float32"):
        sol = SOLVERS[name](max_iter=80, tol=1e-10).solve(make_operator(A), b)
    assert sol.converged is False and sol.iterations <= 80
    true = true_residual64(A, sol.value, b)
    # At the rounding floor the residual and the float32 error of evaluating it are both
    # O(eps32 ||A|| ||x|| / ||b||) ~ 1e-7, so the float32 report agrees with the float64
    # recomputation in order of magnitude only: over 100 seeds the ratio ranged 0.23-1.6 and
    # the report never fell below 2e-8. A factor 10 either way, and a floor of 10 * tol,
    # still tell it from an estimate <= tol.
    assert true / 10 <= sol.residual <= 10 * true
    assert sol.residual > 1e-9


# --------------------------------------------------------------------------------------------
# Errors: NaN, breakdown, singular systems, invalid settings.


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("bad_call", [1, 2, 3, 6])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_product_raises(name, bad_call, bad):
    A, b = mild_system(n=10)
    calls = []

    def matvec(v):
        calls.append(1)
        out = A @ v
        return out * bad if len(calls) == bad_call else out

    op = LinearOperator(matvec=matvec, size=10, dtype=F64, device=A.device)
    with pytest.raises(ig.SolverError, match="a matrix-vector product became non-finite"):
        SOLVERS[name](tol=1e-12).solve(op, b)


@pytest.mark.parametrize("name", SOLVERS)
def test_non_finite_warm_start_product_raises(name):
    A, b = mild_system(n=5)
    op = LinearOperator(matvec=lambda v: A @ v * math.nan, size=5, dtype=F64, device=A.device)
    with pytest.raises(ig.SolverError, match="a matrix-vector product became non-finite"):
        SOLVERS[name]().solve(op, b, x0=torch.zeros(5, dtype=F64))


@pytest.mark.parametrize("name", SOLVERS)
def test_non_finite_rhs_raises(name):
    A, b = mild_system(n=5)
    b[2] = math.nan
    with pytest.raises(ig.SolverError, match="right-hand side"):
        SOLVERS[name]().solve(make_operator(A), b)


# Exact 2x2 and 3x3 breakdowns (every quantity is exact in binary floating point), found by
# a search over small integer matrices with rational arithmetic.
BREAKDOWNS = {
    # A 90-degree rotation: (x, A x) = 0 for every x, so (r_hat, A p) = 0 at once.
    "r_hat_v": ([[0.0, -1.0], [1.0, 0.0]], [1.0, 2.0], r"\(r_hat, v\).* is 0\.0"),
    # alpha = 1, s = (0, 1), A s = (1, 0) is orthogonal to s: omega = 0.
    "omega": ([[1.0, 1.0], [-1.0, 0.0]], [1.0, 0.0], r"omega = .* is 0\.0"),
    # alpha = omega = -1 and r_1 = (0, 0, 1) is orthogonal to r_hat = r_0 = e_1: rho = 0.
    "rho": (
        [[-1.0, -1.0, -1.0], [-1.0, -1.0, 0.0], [1.0, -1.0, -1.0]],
        [1.0, 0.0, 0.0],
        r"iteration 2: rho = \(r_hat, r\) is 0\.0",
    ),
}


@pytest.mark.parametrize("case", BREAKDOWNS)
def test_bicgstab_breakdown_raises_and_gmres_solves(case):
    rows, rhs, message = BREAKDOWNS[case]
    A, b = torch.tensor(rows, dtype=F64), torch.tensor(rhs, dtype=F64)
    with pytest.raises(ig.SolverError, match=message) as info:
        BiCGStab(tol=1e-12).solve(make_operator(A), b)
    assert "broke down at iteration" in str(info.value) and "ig.GMRES()" in str(info.value)
    sol = GMRES(tol=1e-12).solve(make_operator(A), b)
    assert sol.converged
    # The matrices have determinant +-1 and small entries (cond < 10): 1e-10 is loose.
    assert relative_error(sol.value, A, b) <= 1e-10


@pytest.mark.parametrize("name", SOLVERS)
def test_singular_operator_raises(name):
    # b = e_2 spans the kernel of A = diag(1, 0): the first product is exactly zero.
    A = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)
    b = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ig.SolverError, match="broke down at iteration 1"):
        SOLVERS[name]().solve(make_operator(A), b)


@pytest.mark.parametrize("name", SOLVERS)
def test_zero_rhs(name):
    calls = []
    op = make_operator(torch.eye(4, dtype=F64), calls=calls)
    sol = SOLVERS[name]().solve(op, torch.zeros(4, dtype=F64), x0=torch.ones(4, dtype=F64))
    assert torch.equal(sol.value, torch.zeros(4, dtype=F64))
    assert (sol.iterations, sol.residual, sol.converged) == (0, 0.0, True) and not calls


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GMRES(max_iter=0), r"`GMRES\(max_iter=\.\.\.\)` must be a positive int, got 0\."),
        (lambda: GMRES(max_iter=2.5), r"`GMRES\(max_iter=\.\.\.\)` must be a positive int"),
        (lambda: GMRES(max_iter=True), r"`GMRES\(max_iter=\.\.\.\)` must be a positive int"),
        (lambda: GMRES(restart=0), r"`GMRES\(restart=\.\.\.\)` must be a positive int, got 0\."),
        (lambda: GMRES(tol=-1e-3), r"`GMRES\(tol=\.\.\.\)` must be a number >= 0"),
        (lambda: GMRES(tol=math.nan), r"`GMRES\(tol=\.\.\.\)` must be a number >= 0"),
        (lambda: BiCGStab(max_iter=-3), r"`BiCGStab\(max_iter=\.\.\.\)` must be a positive int"),
        (lambda: BiCGStab(tol="1e-6"), r"`BiCGStab\(tol=\.\.\.\)` must be a number >= 0"),
    ],
)
def test_invalid_settings_raise(make, message):
    with pytest.raises(ig.InputError, match=message):
        make()


@pytest.mark.parametrize("name", SOLVERS)
def test_batched_operator_is_refused(name):
    A = torch.eye(3, dtype=F64)
    op = LinearOperator(matvec=lambda v: v @ A.T, size=3, dtype=F64, device=A.device, batch_size=2)
    with pytest.raises(ig.InputError, match="independent systems"):
        SOLVERS[name]().solve(op, torch.ones(2, 3, dtype=F64))


@pytest.mark.parametrize("name", SOLVERS)
def test_warm_start_of_the_wrong_shape_is_refused(name):
    with pytest.raises(ig.InputError, match=r"solve\(x0=\.\.\.\)` must have the shape of b"):
        SOLVERS[name]().solve(
            make_operator(torch.eye(3, dtype=F64)), torch.ones(3, dtype=F64), x0=torch.ones(4)
        )


def test_unreachable_tol_warns_up_front():
    A, b = mild_system(n=4, dtype=torch.float32)
    with pytest.warns(ig.ConvergenceWarning) as record:
        GMRES(max_iter=3, tol=1e-10).solve(make_operator(A), b)
    messages = [str(w.message) for w in record]
    assert "GMRES(tol=1.0e-10) asks for a relative residual below" in messages[0]
    assert "torch.float32" in messages[0]

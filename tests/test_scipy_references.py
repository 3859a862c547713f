"""scipy as an independent reference.

- `implicitgrad.testing.solve_inner` (scipy.optimize trust-region Newton) reaches
  ||grad f|| < 1e-12 in float64, and its solutions make finite differences of a
  hypergradient without a closed form accurate enough to check `ig.hypergrad` to 1e-7.
- The core's GMRES, BiCGStab and CG agree with scipy.sparse.linalg's, run on the same
  matrix-free operator, on sparse systems of the kind scipy is built for.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch

import implicitgrad as ig
from implicitgrad.testing import finite_difference_hypergrad, solve_inner

F64 = torch.float64


def logistic_problem(n: int = 60, d: int = 4, seed: int = 0):
    """L2-regularized logistic regression with one log-weight per feature: no closed form."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, dtype=F64, generator=g)
    y = (
        X @ torch.randn(d, dtype=F64, generator=g) + 0.5 * torch.randn(n, dtype=F64, generator=g)
    ) > 0
    y = y.to(F64)
    X_val, y_val = X[: n // 2] + 0.1, y[: n // 2]

    def inner_loss(w, log_l2):
        fit = torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y)
        return fit + 0.5 * (log_l2.exp() * w**2).sum()

    def outer_loss(w, log_l2):
        return torch.nn.functional.binary_cross_entropy_with_logits(X_val @ w, y_val)

    return inner_loss, outer_loss, torch.zeros(d, dtype=F64), torch.full((d,), -2.0, dtype=F64)


# --------------------------------------------------------------------------------------------
# solve_inner


@pytest.mark.parametrize("method", ["trust-exact", "trust-ncg", "L-BFGS-B"])
def test_solve_inner_reaches_the_tolerance(method: str) -> None:
    inner_loss, _, w0, phi = logistic_problem()
    w = solve_inner(inner_loss, w0, phi, tol=1e-12, method=method)
    assert w.dtype == F64 and not w.requires_grad
    assert torch.func.grad(inner_loss)(w, phi).norm() < 1e-12


def test_solve_inner_keeps_the_tree_and_dtypes() -> None:
    def inner_loss(theta, phi):
        return ((theta["a"] - phi) ** 4).sum() + (theta["a"] ** 2).sum() + (theta["b"] ** 2).sum()

    theta0 = {"a": torch.zeros(2, dtype=F64), "b": torch.ones(3, dtype=torch.float32)}
    theta = solve_inner(inner_loss, theta0, torch.ones(2, dtype=F64))
    assert theta["b"].dtype == torch.float32 and torch.equal(theta["b"], torch.zeros(3))
    # The minimizer of (a - 1)^4 + a^2 solves 4 (a - 1)^3 + 2 a = 0.
    a = theta["a"]
    assert torch.all((4 * (a - 1) ** 3 + 2 * a).abs() < 1e-12)


def test_solve_inner_reports_what_it_did_not_reach() -> None:
    # exp(w) has no minimizer: the gradient only vanishes as w -> -inf.
    with pytest.raises(ig.SolverError, match=r"solve_inner.*\|grad f\| = .* not below tol=1e-12"):
        solve_inner(
            lambda w, p: (w.exp() * p).sum(),
            torch.zeros(1, dtype=F64),
            1.0 + 0 * torch.ones(1, dtype=F64),
            max_iter=3,
        )
    with pytest.raises(ig.InputError, match=r"`solve_inner\(method=\.\.\.\)` must be one of"):
        solve_inner(
            lambda w, p: (w**2).sum(), torch.zeros(1, dtype=F64), torch.ones(1), method="bfgs"
        )


def test_hypergradient_matches_finite_differences_through_solve_inner() -> None:
    inner_loss, outer_loss, w0, phi = logistic_problem()

    def solve(p):
        return solve_inner(inner_loss, w0, p, tol=1e-13)

    hg = ig.hypergrad(inner_loss, outer_loss, solve(phi), phi, solver=ig.CG(tol=1e-12))
    fd = finite_difference_hypergrad(solve, outer_loss, phi, eps=1e-5)
    # Central differences err by O(eps^2) ~ 1e-10 times the third derivative, plus the inner
    # error (< 1e-13) over eps, ~1e-8 at most; the hypergradient entries are ~1e-2.
    assert torch.allclose(hg, fd, rtol=1e-6, atol=1e-9), (hg, fd)


# --------------------------------------------------------------------------------------------
# The core's Krylov solvers against scipy.sparse.linalg


def convection_diffusion(n: int, peclet: float) -> scipy.sparse.csr_matrix:
    """1-D convection-diffusion, central differences: tridiagonal, non-symmetric for
    `peclet` > 0, symmetric positive definite for `peclet` = 0."""
    h = 1.0 / (n + 1)
    main = np.full(n, 2.0)
    lower = np.full(n - 1, -1.0 - peclet * h / 2)
    upper = np.full(n - 1, -1.0 + peclet * h / 2)
    return scipy.sparse.diags([lower, main, upper], [-1, 0, 1], format="csr") / h**2


def torch_operator(A: scipy.sparse.csr_matrix, symmetric: bool) -> ig.LinearOperator:
    At = torch.from_numpy(A.toarray())
    return ig.LinearOperator(
        matvec=lambda v: At @ v,
        size=A.shape[0],
        dtype=F64,
        device=torch.device("cpu"),
        symmetric=symmetric,
    )


@pytest.mark.parametrize(
    "name, peclet",
    [("GMRES", 50.0), ("BiCGStab", 50.0), ("GMRES", 0.0), ("CG", 0.0)],
)
def test_krylov_solvers_agree_with_scipy(name: str, peclet: float) -> None:
    n = 64
    A = convection_diffusion(n, peclet)
    b = np.random.default_rng(0).standard_normal(n)
    operator = torch_operator(A, symmetric=peclet == 0.0)
    # scipy runs the same matrix-free products through its own LinearOperator.
    reference_op = scipy.sparse.linalg.LinearOperator(
        A.shape,
        matvec=lambda v: operator.matvec(torch.from_numpy(np.asarray(v).ravel())).numpy(),
        dtype=np.float64,
    )
    tol, budget = 1e-11, 20 * n
    if name == "GMRES":
        solver = ig.GMRES(max_iter=budget, restart=n, tol=tol)
        ref, info = scipy.sparse.linalg.gmres(reference_op, b, rtol=tol, restart=n, maxiter=20)
    elif name == "BiCGStab":
        solver = ig.BiCGStab(max_iter=budget, tol=tol)
        ref, info = scipy.sparse.linalg.bicgstab(reference_op, b, rtol=tol, maxiter=budget)
    else:
        solver = ig.CG(max_iter=budget, tol=tol)
        ref, info = scipy.sparse.linalg.cg(reference_op, b, rtol=tol, maxiter=budget)
    assert info == 0, f"scipy's {name.lower()} did not converge ({info})"
    sol = solver.solve(operator, torch.from_numpy(b))
    assert sol.converged and sol.residual <= tol
    direct = scipy.sparse.linalg.spsolve(A.tocsc(), b)
    # cond(A) is about 2e3 here, so residuals of 1e-11 bound both errors by a few 1e-8.
    scale = np.linalg.norm(direct)
    assert np.linalg.norm(sol.value.numpy() - direct) / scale < 1e-7
    assert np.linalg.norm(sol.value.numpy() - ref) / scale < 1e-7

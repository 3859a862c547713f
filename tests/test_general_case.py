"""The general case (issue 10): exact, or a documented error.

Every check compares against an answer computed independently of the library: a closed
form with dense float64 linear algebra, central finite differences, or a Python loop over
the same public call. Tolerances are stated where they are used, with the reason.

1. Non-symmetric fixed points (random contractions, momentum and Adam-like steps).
2. Each item under "What was observed" in the issue.
3. `Neumann(alpha=...)` in the fixed-point form.
4. Batched and vmapped solves against the loop, each problem on its own residual.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils._pytree as pytree
from helpers import flat, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import implicitgrad as ig
from implicitgrad.testing import random_quadratic, ridge_problem

F64 = torch.float64
SYMMETRIC_ONLY = r"assumes a symmetric operator"
ONE_SYSTEM = r"solves one system at a time"


# --------------------------------------------------------------------------------------------
# Helpers


def contraction(kind: str, n: int, rho: float, nonnormal: float, seed: int) -> torch.Tensor:
    """A random $n \\times n$ matrix $A$ of spectral radius at most `rho` < 1.

    - `dense`: Gaussian, scaled to spectral radius `rho` (complex eigenvalues, non-normal);
    - `triangular`: upper triangular with the spectrum on the diagonal (one entry equal to
      `rho`) and a strictly upper part `nonnormal` times a Gaussian: strongly non-normal.

    The non-normal part (for `dense`, the whole matrix) is halved until cond(I - A) <= 1e3,
    so that a relative residual of 1e-12 bounds the relative error of a solve by 1e-9.
    """
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(n, dtype=F64)
    if kind == "dense":
        G = torch.randn(n, n, dtype=F64, generator=g)
        A = G * (rho / max(float(torch.linalg.eigvals(G).abs().max()), 1e-300))
        while torch.linalg.cond(eye - A) > 1e3:
            A = A / 2
        return A
    diag = (2 * torch.rand(n, dtype=F64, generator=g) - 1) * rho
    diag[0] = rho
    upper = torch.triu(torch.randn(n, n, dtype=F64, generator=g), 1) * nonnormal
    while torch.linalg.cond(eye - torch.diag(diag) - upper) > 1e3:
        upper = upper / 2
    return torch.diag(diag) + upper


def spectral_radius(M: torch.Tensor) -> float:
    return float(torch.linalg.eigvals(M).abs().max())


def as_tree(vec: torch.Tensor, structure: str):
    """Lay a flat vector out as a tensor, a tuple, or a dict holding a matrix leaf."""
    n = vec.numel()
    if structure == "tensor":
        return vec
    k = max(1, n // 2)
    parts = [vec[:k], vec[k:]] if n > 1 else [vec]
    if structure == "tuple":
        return tuple(parts)
    tree = {"w": parts[0].reshape(-1, 1)}
    if len(parts) > 1:
        tree["b"] = parts[1]
    return tree


def as_vec(tree) -> torch.Tensor:
    return flat(tree)


def norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x))


def op_norm(M: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(M, ord=2))


class LinearFixedPoint:
    """$T(\\theta, \\phi) = A\\theta + B\\phi + c$ and $g = \\frac12\\lVert E\\theta - e\\rVert^2
    + \\frac12\\phi^\\top D\\phi + d^\\top\\phi$, with θ laid out as `structure`.

    Closed forms: $\\theta^* = (I - A)^{-1}(B\\phi + c)$ and
    $\\mathrm{d}g/\\mathrm{d}\\phi = D\\phi + d + B^\\top (I - A^\\top)^{-1}
    E^\\top(E\\theta^* - e)$.
    """

    def __init__(self, A: torch.Tensor, m: int, structure: str, seed: int):
        g = torch.Generator().manual_seed(seed + 1)
        n = A.shape[0]
        randn = lambda *s: torch.randn(*s, dtype=F64, generator=g)  # noqa: E731
        self.A, self.B, self.c = A, randn(n, m), randn(n)
        self.E, self.e = randn(n + 1, n) / (n + 1) ** 0.5, randn(n + 1)
        G = randn(m, m)
        self.D, self.d = G @ G.T / m, randn(m)
        self.phi = randn(m)
        self.structure = structure
        self.eye = torch.eye(n, dtype=F64)

    def update(self, theta, phi):
        return as_tree(self.A @ as_vec(theta) + self.B @ phi + self.c, self.structure)

    def outer_loss(self, theta, phi):
        r = self.E @ as_vec(theta) - self.e
        return 0.5 * r @ r + 0.5 * phi @ (self.D @ phi) + self.d @ phi

    @property
    def theta_star(self):
        return as_tree(
            torch.linalg.solve(self.eye - self.A, self.B @ self.phi + self.c), self.structure
        )

    def rhs(self) -> torch.Tensor:
        """$v = \\partial g/\\partial\\theta$ at θ*."""
        return self.E.T @ (self.E @ as_vec(self.theta_star) - self.e)

    def exact(self) -> torch.Tensor:
        w = torch.linalg.solve((self.eye - self.A).T, self.rhs())
        return self.D @ self.phi + self.d + self.B.T @ w

    def residual_bound(self, residual: float) -> float:
        """How far a solve with relative residual `residual` can put the hypergradient:
        $\\lVert B^\\top (x - x^*)\\rVert \\le \\lVert B\\rVert \\lVert (I - A^\\top)^{-1}\\rVert
        \\cdot \\text{residual} \\cdot \\lVert v\\rVert$."""
        inv = torch.linalg.inv((self.eye - self.A).T)
        return op_norm(self.B) * op_norm(inv) * residual * norm(self.rhs())


def dense_parts(update, state, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """$J = \\partial T/\\partial\\theta$ and $\\partial T/\\partial\\phi$ of a tree-valued update,
    as dense matrices on the flattened state (by autograd, for the default-solver bound)."""
    leaves, spec = pytree.tree_flatten(state)
    sizes = [t.numel() for t in leaves]

    def flat_update(s_vec, p):
        parts = [c.reshape(t.shape) for c, t in zip(s_vec.split(sizes), leaves)]
        return flat(update(pytree.tree_unflatten(parts, spec), p))

    J, Jp = torch.autograd.functional.jacobian(flat_update, (flat(state), phi))
    return J, Jp


def fixed_point_bound(update, state, phi, v: torch.Tensor, residual: float) -> float:
    """$\\lVert(\\partial T/\\partial\\phi)^\\top\\rVert\\lVert(I - J^\\top)^{-1}\\rVert
    \\cdot\\text{residual}\\cdot\\lVert v\\rVert$: the hypergradient error a solve with that
    relative residual can cause."""
    J, Jp = dense_parts(update, state, phi)
    inv = torch.linalg.inv(torch.eye(J.shape[0], dtype=F64) - J.T)
    return op_norm(Jp) * op_norm(inv) * residual * norm(v)


# --------------------------------------------------------------------------------------------
# 1. Non-symmetric fixed points


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["dense", "triangular"]),
    n=st.integers(1, 12),
    m=st.integers(1, 4),
    rho=st.floats(0.0, 0.95),
    nonnormal=st.floats(0.0, 5.0),
    structure=st.sampled_from(["tensor", "tuple", "dict"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_contractions_match_the_closed_form(kind, n, m, rho, nonnormal, structure, seed):
    A = contraction(kind, n, rho, nonnormal, seed)
    assert spectral_radius(A) <= 0.95 + 1e-9
    prob = LinearFixedPoint(A, m, structure, seed)
    exact, theta, phi = prob.exact(), prob.theta_star, prob.phi
    budget = 10 * n + 10
    for solver in [
        ig.GMRES(max_iter=budget, tol=1e-12),
        ig.BiCGStab(max_iter=budget, tol=1e-12),
        ig.Exact(),
    ]:
        hg, info = ig.fixed_point_hypergrad(
            prob.update, prob.outer_loss, theta, phi, solver, return_info=True
        )
        # cond(I - Aᵀ) <= 1e3 and a residual of 1e-12 bound the relative error of the adjoint
        # by 1e-9 (Exact: cond · eps); the closed form carries ~2e-13 of its own. 1e-8
        # leaves a factor of 10.
        assert rel_err(hg, exact) <= 1e-8, (type(solver).__name__, info)

    # The default solver is GMRES, correct for any contraction; with its default tol=1e-6 it
    # is exact up to what its (true) residual allows, not to 1e-8.
    hg, info = ig.fixed_point_hypergrad(prob.update, prob.outer_loss, theta, phi, return_info=True)
    assert isinstance(info.solver, ig.GMRES)
    assert info.converged and info.residual <= 1e-6
    # The bound is exact math on the residual the solver reports; 1e-12 absorbs the rounding
    # of the closed form itself.
    assert norm(hg - exact) <= 1.01 * prob.residual_bound(info.residual) + 1e-12 * norm(exact)

    for solver in [ig.CG(), ig.Nystrom(rank=n, rho=0.0)]:
        with pytest.raises(ig.InputError, match=SYMMETRIC_ONLY):
            ig.fixed_point_hypergrad(prob.update, prob.outer_loss, theta, phi, solver)


@pytest.mark.parametrize(
    "solver",
    [None, ig.GMRES(tol=1e-12), ig.BiCGStab(max_iter=200, tol=1e-12), ig.Exact()],
    ids=["default", "GMRES", "BiCGStab", "Exact"],
)
def test_strongly_non_normal_triangular_map(solver):
    n = 8
    spectrum = torch.tensor([0.9, -0.9, 0.5, -0.5, 0.3, 0.0, -0.2, 0.8], dtype=F64)
    A = torch.diag(spectrum) + 0.5 * torch.triu(torch.ones(n, n, dtype=F64), 1)
    assert abs(spectral_radius(A) - 0.9) < 1e-12
    # Strongly non-normal: ||A||₂ ~ 2.5 against a spectral radius of 0.9, and the strictly
    # upper part carries over 80% of the Frobenius norm (Henrici's departure from normality).
    assert op_norm(A) > 2.5 * 0.9
    henrici = (torch.linalg.matrix_norm(A) ** 2 - (spectrum**2).sum()).sqrt()
    assert float(henrici / torch.linalg.matrix_norm(A)) > 0.8
    assert float(torch.linalg.cond(torch.eye(n, dtype=F64) - A)) < 1e3
    prob = LinearFixedPoint(A, 3, "dict", seed=5)
    hg, info = ig.fixed_point_hypergrad(
        prob.update, prob.outer_loss, prob.theta_star, prob.phi, solver, return_info=True
    )
    if solver is None:
        assert isinstance(info.solver, ig.GMRES)
        assert norm(hg - prob.exact()) <= 1.01 * prob.residual_bound(info.residual) + 1e-12
    else:
        # cond ~8e2 times the residual 1e-12 (Exact: times eps): below 1e-8.
        assert rel_err(hg, prob.exact()) <= 1e-8


def _issue_example():
    """The issue's case: T = Aθ + Bφ with a non-symmetric A of spectral radius 0.55 whose
    I - Aᵀ has a positive-definite symmetric part, so CG, wrongly told the operator is
    symmetric, runs without breakdown and converges to nothing."""
    A = torch.tensor([[0.5, 0.9], [-0.6, 0.1]], dtype=F64)
    A = A * (0.55 / spectral_radius(A))
    B = torch.tensor([[1.0, 0.5], [-0.5, 2.0]], dtype=F64)
    phi = torch.tensor([1.0, -2.0], dtype=F64)
    target = torch.tensor([1.0, 3.0], dtype=F64)
    eye = torch.eye(2, dtype=F64)
    theta = torch.linalg.solve(eye - A, B @ phi)
    exact = B.T @ torch.linalg.solve((eye - A).T, theta - target)
    update = lambda t, p: A @ t + B @ p  # noqa: E731
    outer = lambda t, p: 0.5 * ((t - target) ** 2).sum()  # noqa: E731
    return A, update, outer, theta, phi, exact


def test_issue_example_default_is_exact_and_symmetric_solvers_refuse():
    A, update, outer, theta, phi, exact = _issue_example()
    assert abs(spectral_radius(A) - 0.55) < 1e-12
    assert not torch.allclose(A, A.T)
    hg, info = ig.fixed_point_hypergrad(update, outer, theta, phi, return_info=True)
    # GMRES on a 2x2 system is exact after 2 products (the Krylov space is all of R²): only
    # rounding remains, cond(I - A) ~ 2 times eps.
    assert isinstance(info.solver, ig.GMRES)
    assert rel_err(hg, exact) <= 1e-8
    for solver in [ig.CG(), ig.Nystrom(rank=2, rho=0.0), "cg", "nystrom"]:
        with pytest.raises(ig.InputError, match=SYMMETRIC_ONLY):
            ig.fixed_point_hypergrad(update, outer, theta, phi, solver)
    # Why the refusal matters: declared symmetric (a false claim), CG answers far off with
    # nothing but a ConvergenceWarning, as the issue observed.
    with pytest.warns(ig.ConvergenceWarning, match=r"CG did not converge"):
        wrong = ig.fixed_point_hypergrad(update, outer, theta, phi, ig.CG(), symmetric=True)
    assert rel_err(wrong, exact) > 1.0


def _momentum_problem(n: int, seed: int):
    """A strongly convex quadratic f(θ, φ) = ½θᵀHθ - θᵀ(Bφ + c) and its closed form."""
    return random_quadratic(n, 3, condition=10.0, seed=seed)


def _heavy_ball(prob, lr: float, beta: float):
    """Polyak's heavy ball on state (θ, v): v' = βv - lr ∇f(θ), θ' = θ + v'. Its fixed point
    is (θ*, 0); its Jacobian [[I - lr H, βI], [-lr H, βI]] is not symmetric."""

    def update(state, phi):
        theta, v = state
        (grad,) = torch.autograd.grad(prob.inner_loss(theta, phi), theta, create_graph=True)
        v_new = beta * v - lr * grad
        return (theta + v_new, v_new)

    return update


def _adam_like(prob, lr: float, beta: float, precond: torch.Tensor):
    """Adam with a frozen second-moment estimate on state {"theta", "m"}:
    m' = βm + (1 - β)∇f(θ), θ' = θ - lr P m' with a fixed diagonal P > 0. Fixed point
    (θ*, 0); the Jacobian involves P H, which is not symmetric."""

    def update(state, phi):
        theta, m = state["theta"], state["m"]
        (grad,) = torch.autograd.grad(prob.inner_loss(theta, phi), theta, create_graph=True)
        m_new = beta * m + (1 - beta) * grad
        return {"theta": theta - lr * precond * m_new, "m": m_new}

    return update


def _optimizer_cases():
    n = 6
    prob = _momentum_problem(n, seed=11)
    lam = prob.largest_eigenvalue
    theta = prob.inner_params
    zeros = torch.zeros(n, dtype=F64)
    precond = 1.0 / (torch.linspace(0.5, 2.0, n, dtype=F64).sqrt() + 1e-8)
    lam_p = float(torch.linalg.eigvalsh(precond.sqrt()[:, None] * prob.A * precond.sqrt()).max())
    return {
        "heavy_ball": (prob, _heavy_ball(prob, 1.0 / lam, 0.9), (theta, zeros)),
        "adam_like": (
            prob,
            _adam_like(prob, 0.5 / lam_p, 0.8, precond),
            {"theta": theta, "m": zeros},
        ),
    }


OPTIMIZERS = _optimizer_cases()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize(
    "solver",
    [None, ig.GMRES(tol=1e-12), ig.BiCGStab(max_iter=300, tol=1e-12)],
    ids=["default", "GMRES", "BiCGStab"],
)
def test_optimizer_steps_at_their_fixed_points(name, solver):
    prob, update, state = OPTIMIZERS[name]
    phi = prob.outer_params
    J, _ = dense_parts(update, state, phi)
    # The step is a contraction that is not a symmetric map: a genuine non-symmetric system.
    assert spectral_radius(J) < 1.0
    assert not torch.allclose(J, J.T)
    outer = lambda s, p: prob.outer_loss(s[0] if isinstance(s, tuple) else s["theta"], p)  # noqa: E731
    hg, info = ig.fixed_point_hypergrad(update, outer, state, phi, solver, return_info=True)
    exact = prob.exact_hypergrad()
    if solver is None:
        assert isinstance(info.solver, ig.GMRES) and info.converged
        v, _ = prob.outer_gradients()
        bound = fixed_point_bound(update, state, phi, v, info.residual)
        # Exact math on the reported residual; 1e-12 covers the closed form's rounding.
        assert norm(flat(hg) - flat(exact)) <= 1.01 * bound + 1e-12
    else:
        # cond(I - J) is at most a few hundred here; residual 1e-12 gives ~1e-10.
        assert rel_err(hg, exact) <= 1e-8
    for refused in [ig.CG(), ig.Nystrom(rank=12, rho=0.0)]:
        with pytest.raises(ig.InputError, match=SYMMETRIC_ONLY):
            ig.fixed_point_hypergrad(update, outer, state, phi, refused)


# --------------------------------------------------------------------------------------------
# 2. What was observed: non-finite and complex inputs


def _quad(theta, phi):
    """f = ½·3|θ|² - θ·(φ₁ + φ₂) on trees θ = {"w", "b"}, φ = {"lam": ..., "mu": ...}."""
    t = torch.cat([theta["w"].reshape(-1), theta["b"]])
    p = torch.cat([phi["lam"], phi["mu"]])
    return 1.5 * (t**2).sum() - (t * p).sum()


def _quad_outer(theta, phi):
    return (theta["w"] ** 2).sum() + theta["b"].sum()


def _quad_update(theta, phi):
    """A gradient step of `_quad` with step 0.1."""
    w = theta["w"] - 0.1 * (3 * theta["w"] - phi["lam"].reshape(2, 1))
    return {"w": w, "b": theta["b"] - 0.1 * (3 * theta["b"] - phi["mu"])}


def _quad_point():
    phi = {"lam": torch.tensor([1.0, 2.0], dtype=F64), "mu": torch.tensor([0.5], dtype=F64)}
    theta = {"w": (phi["lam"] / 3).reshape(2, 1), "b": phi["mu"] / 3}
    return theta, phi


def _call(entry: str, theta, phi):
    if entry == "hypergrad":
        return ig.hypergrad(_quad, _quad_outer, theta, phi)
    if entry == "fixed_point_hypergrad":
        return ig.fixed_point_hypergrad(_quad_update, _quad_outer, theta, phi)
    phi = pytree.tree_map(lambda p: p.requires_grad_(True), phi)
    return ig.implicit(_quad, theta, phi)


ENTRIES = ["hypergrad", "fixed_point_hypergrad", "implicit"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kind", ["NaN", "Inf"])
@pytest.mark.parametrize(
    "where, key", [("inner_params", "w"), ("inner_params", "b"), ("outer_params", "mu")]
)
def test_non_finite_parameters_are_named(entry, kind, where, key):
    theta, phi = _quad_point()
    tree = theta if where == "inner_params" else phi
    bad = tree[key].clone()
    bad.view(-1)[0] = float("nan") if kind == "NaN" else float("inf")
    tree[key] = bad
    # The exact text of check_finite_leaves: "`call`: NaN in inner_params['w']. <fix>".
    message = rf"`{entry}`: {kind} in {where}\['{key}'\]\. Check"
    with pytest.raises(ig.InputError, match=message):
        _call(entry, theta, phi)


def test_negative_infinity_is_reported_as_inf():
    theta, phi = _quad_point()
    phi["lam"] = torch.tensor([1.0, -float("inf")], dtype=F64)
    with pytest.raises(ig.InputError, match=r"Inf in outer_params\['lam'\]"):
        ig.hypergrad(_quad, _quad_outer, theta, phi)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("where", ["inner_params", "outer_params"])
def test_complex_tensors_are_refused(entry, where):
    theta, phi = _quad_point()
    if where == "inner_params":
        theta["b"] = theta["b"].to(torch.complex128)
    else:
        phi["lam"] = phi["lam"].to(torch.complex128)
    with pytest.raises(ig.InputError, match=rf"`{entry}\({where}=\.\.\.\)`.*complex dtype"):
        _call(entry, theta, phi)


# --------------------------------------------------------------------------------------------
# 2. What was observed: slow divergence of the Neumann series


@pytest.mark.parametrize("condition", [3.0, 10.0, 100.0])
def test_neumann_slow_divergence_just_above_two_over_lambda_max(condition):
    prob = random_quadratic(8, 3, condition=condition, seed=1)
    lam = prob.largest_eigenvalue
    args = (prob.inner_loss, prob.outer_loss, prob.inner_params, prob.outer_params)
    # |1 - αλmax| = 1.002: the top mode grows by 0.2% per term, slowly enough that after
    # 200 terms the partial sum still looks plausible.
    with pytest.raises(ig.SolverError, match=r"Neumann series diverges"):
        ig.hypergrad(*args, ig.Neumann(terms=200, alpha=1.001 * 2 / lam))
    # Just below the bound the series converges: no error, and the result is the series'
    # closed form (matrix powers in float64; 1e-10 allows the rounding of 200 products).
    alpha = 0.999 * 2 / lam
    hg = ig.hypergrad(*args, ig.Neumann(terms=200, alpha=alpha))
    assert rel_err(hg, prob.neumann_hypergrad(200, alpha)) <= 1e-10


def _gradient_step(prob, eta: float):
    def update(theta, phi):
        (grad,) = torch.autograd.grad(prob.inner_loss(theta, phi), theta, create_graph=True)
        return theta - eta * grad

    return update


@pytest.mark.parametrize("condition", [3.0, 10.0])
@pytest.mark.parametrize("symmetric", [True, False])
def test_neumann_slow_divergence_in_the_fixed_point_form(condition, symmetric):
    prob = random_quadratic(8, 3, condition=condition, seed=1)
    lam = prob.largest_eigenvalue
    eta = 0.5 / lam
    # I - Jᵀ = ηH, so the series on it diverges for alpha > 2 / (η λmax).
    alpha = 1.001 * 2 / (eta * lam)
    with pytest.raises(ig.SolverError, match=r"Neumann series (diverges|does not converge)"):
        ig.fixed_point_hypergrad(
            _gradient_step(prob, eta),
            prob.outer_loss,
            prob.inner_params,
            prob.outer_params,
            ig.Neumann(terms=200, alpha=alpha),
            symmetric=symmetric,
        )


@pytest.mark.xfail(
    strict=True,
    reason="known limitation, documented in Neumann's docstring: a slowly diverging series "
    "whose growing mode is still masked by decaying ones cannot be told from a converging one "
    "by its term norms; GMRES or compute_residual=True show it",
)
def test_neumann_slow_divergence_fixed_point_form_ill_conditioned():
    prob = random_quadratic(8, 3, condition=100.0, seed=1)
    lam = prob.largest_eigenvalue
    eta = 0.5 / lam
    with pytest.raises(ig.SolverError, match=r"Neumann series (diverges|does not converge)"):
        ig.fixed_point_hypergrad(
            _gradient_step(prob, eta),
            prob.outer_loss,
            prob.inner_params,
            prob.outer_params,
            ig.Neumann(terms=200, alpha=1.001 * 2 / (eta * lam)),
        )


# --------------------------------------------------------------------------------------------
# 2. What was observed: honest residuals in float32


def _float64_residual(prob, theta32, x32) -> float:
    """||H x - v|| / ||v|| in float64, with H and v built from the float32 problem's values."""
    A, E, e = prob.A.double(), prob.E.double(), prob.e.double()
    v = E.T @ (E @ theta32.double() - e)
    return norm(A @ x32.double() - v) / norm(v)


def test_float32_unreachable_tol_warns_and_reports_the_true_residual():
    prob = random_quadratic(30, 3, condition=10.0, seed=0, dtype=torch.float32)
    args = (prob.inner_loss, prob.outer_loss, prob.inner_params, prob.outer_params)
    with pytest.warns(ig.ConvergenceWarning) as record:
        _, info = ig.hypergrad(*args, ig.CG(tol=1e-10), return_info=True)
    messages = [str(w.message) for w in record]
    assert any("torch.float32" in m and "tol=1.0e-10" in m for m in messages), messages
    assert info.converged is False
    true = _float64_residual(prob, prob.inner_params, info.linear_solution)
    # The issue saw 7.5e-11 reported against a true 2.9e-6 (a factor 4e4). Both numbers now
    # sit at float32's rounding floor, where two evaluations of one residual differ by a
    # small factor; 2 is what the brief allows.
    assert true / 2 <= info.residual <= 2 * true
    assert info.residual > 1e-10


def test_float32_default_tol_is_reachable_and_does_not_warn():
    prob = random_quadratic(30, 3, condition=10.0, seed=0, dtype=torch.float32)
    args = (prob.inner_loss, prob.outer_loss, prob.inner_params, prob.outer_params)
    # pytest turns any ConvergenceWarning into an error (pyproject), so no warning here.
    _, info = ig.hypergrad(*args, return_info=True)
    assert info.converged is True and info.residual <= 1e-6
    true = _float64_residual(prob, prob.inner_params, info.linear_solution)
    assert true <= 2e-6


# --------------------------------------------------------------------------------------------
# 2. What was observed: higher order through ig.implicit


RIDGE_HO = ridge_problem(40, 5, seed=3)


def _ho_outer(w, phi, direct: bool):
    """Validation loss, plus (direct=True) terms in φ alone and in φ and w together."""
    out = RIDGE_HO.outer_loss(w)
    if direct:
        out = out + 0.15 * (phi.exp() * w**2).sum() + 0.1 * (phi**2).sum()
    return out


def _ho_first_closed_form(phi: torch.Tensor, direct: bool) -> torch.Tensor:
    """dG/dφ of G(φ) = g(w*(φ), φ) in closed form: ∂g/∂φ - e^φ ⊙ w* ⊙ A⁻¹ ∂g/∂w."""
    p = RIDGE_HO
    w = p.inner_solution(phi)
    A = p.X.T @ p.X / len(p.y) + torch.diag(phi.exp())
    gw = p.X_val.T @ (p.X_val @ w - p.y_val) / len(p.y_val)
    gphi = torch.zeros_like(phi)
    if direct:
        gw = gw + 0.3 * phi.exp() * w
        gphi = 0.15 * phi.exp() * w**2 + 0.2 * phi
    return gphi - phi.exp() * w * torch.linalg.solve(A, gw)


@pytest.mark.parametrize("direct", [True, False], ids=["direct_term", "no_direct_term"])
def test_second_derivative_through_implicit_matches_finite_differences(direct):
    phi0 = RIDGE_HO.outer_params + torch.linspace(-0.5, 0.5, 5, dtype=F64)
    phi = phi0.clone().requires_grad_(True)
    w = ig.implicit(
        RIDGE_HO.inner_loss, RIDGE_HO.inner_solution(phi0), phi, ig.CG(max_iter=100, tol=1e-13)
    )
    (first,) = torch.autograd.grad(_ho_outer(w, phi, direct), phi, create_graph=True)
    # cond(A) ~ 20 and CG to 1e-13: the first derivative is exact to ~1e-12.
    assert torch.allclose(first.detach(), _ho_first_closed_form(phi0, direct), atol=1e-11)
    hessian = torch.stack(
        [torch.autograd.grad(first[i], phi, retain_graph=True)[0] for i in range(5)]
    )
    eps = 1e-4
    first_at = lambda p: _ho_first_closed_form(p, direct)  # noqa: E731
    fd = torch.stack(
        [
            (first_at(phi0 + eps * e) - first_at(phi0 - eps * e)) / (2 * eps)
            for e in torch.eye(5, dtype=F64)
        ]
    )
    # Central differences: truncation eps² · |third derivative| ~ 1e-8 · O(1), rounding
    # 1e-16 / eps ~ 1e-12. 1e-6 is the issue's bound, two orders above both.
    assert float((hessian - fd).abs().max()) <= 1e-6
    # ... and symmetric, as a Hessian must be.
    assert float((hessian - hessian.T).abs().max()) <= 1e-10


def test_third_order_through_implicit_is_an_input_error():
    phi0 = RIDGE_HO.outer_params
    phi = phi0.clone().requires_grad_(True)
    w = ig.implicit(RIDGE_HO.inner_loss, RIDGE_HO.inner_solution(phi0), phi, ig.CG(tol=1e-12))
    (first,) = torch.autograd.grad(_ho_outer(w, phi, True), phi, create_graph=True)
    with pytest.raises(ig.InputError, match=r"third order and higher .* not supported"):
        torch.autograd.grad(first.sum(), phi, create_graph=True)


def test_second_order_under_torch_func_is_an_input_error():
    def loss(phi):
        w = ig.implicit(RIDGE_HO.inner_loss, RIDGE_HO.inner_params, phi, ig.CG(tol=1e-12))
        return RIDGE_HO.outer_loss(w)

    with pytest.raises(ig.InputError, match=r"second-order derivatives .* not for"):
        torch.func.jacrev(torch.func.grad(loss))(RIDGE_HO.outer_params)


# --------------------------------------------------------------------------------------------
# 2. What was observed: torch.func transforms (64 ridge problems, d = 20)

N_PROBLEMS, D = 64, 20
RIDGES = [ridge_problem(50, D, seed=s) for s in range(N_PROBLEMS)]
# One L2 weight per problem and feature, spread so that the problems differ in conditioning.
RIDGE_PHI = torch.stack(
    [p.outer_params + torch.linspace(-2.0, 2.0, D, dtype=F64).roll(i) for i, p in enumerate(RIDGES)]
)
RIDGE_DATA = {
    name: torch.stack([getattr(p, name) for p in RIDGES]) for name in ("X", "y", "X_val", "y_val")
}
RIDGE_W = torch.stack([p.inner_solution(phi) for p, phi in zip(RIDGES, RIDGE_PHI)])
RIDGE_EXACT = torch.stack([p.exact_hypergrad(phi) for p, phi in zip(RIDGES, RIDGE_PHI)])
RIDGE_CG = ig.CG(max_iter=200, tol=1e-12)
# Four problems on the data of the first, for the checks that close over its losses.
SMALL_PHI = RIDGE_PHI[:4]
SMALL_W = torch.stack([RIDGES[0].inner_solution(phi) for phi in SMALL_PHI])


def _ridge_losses(X, y, X_val, y_val):
    def inner(w, phi):
        r = X @ w - y
        return 0.5 * (r @ r) / y.shape[-1] + 0.5 * (phi.exp() * w**2).sum()

    def outer(w, phi):
        r = X_val @ w - y_val
        return 0.5 * (r @ r) / y_val.shape[-1]

    return inner, outer


def _ridge_hypergrad(X, y, X_val, y_val, w, phi):
    inner, outer = _ridge_losses(X, y, X_val, y_val)
    return ig.hypergrad(inner, outer, w, phi, RIDGE_CG)


def _data_inner(w, params):
    """The ridge inner loss with the problem's training data carried in outer_params, the
    form that works under vmap(grad(...)) with per-problem data (see the xfail below)."""
    phi, X, y = params
    r = X @ w - y
    return 0.5 * (r @ r) / y.shape[-1] + 0.5 * (phi.exp() * w**2).sum()


def _ridge_implicit_loss(phi, X, y, X_val, y_val, w):
    theta = ig.implicit(_data_inner, w, (phi, X, y), RIDGE_CG)
    r = X_val @ theta - y_val
    return 0.5 * (r @ r) / y_val.shape[-1]


@pytest.fixture(scope="module")
def ridge_loop():
    """The Python loop over the 64 problems: the reference for every batched form."""
    d = RIDGE_DATA
    rows = [[d[k][i] for k in ("X", "y", "X_val", "y_val")] for i in range(N_PROBLEMS)]
    out = torch.stack(
        [_ridge_hypergrad(*row, RIDGE_W[i], RIDGE_PHI[i]) for i, row in enumerate(rows)]
    )
    # Closed form per problem: cond(A) <= ~1e2, CG to 1e-12, so ~1e-10 relative.
    for got, want in zip(out, RIDGE_EXACT):
        assert rel_err(got, want) <= 1e-9
    return out


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest per-problem relative error over the leading (problem) dimension."""
    return max(rel_err(x, y) for x, y in zip(a, b))


def test_vmap_over_hypergrad_equals_the_loop(ridge_loop):
    d = RIDGE_DATA
    got = torch.func.vmap(_ridge_hypergrad)(
        d["X"], d["y"], d["X_val"], d["y_val"], RIDGE_W, RIDGE_PHI
    )
    # Same solver, same tolerance, each problem stopping on its own residual: the two differ
    # by the solver's error on each problem (<= cond · 1e-12) plus rounding of a different
    # operation order. 1e-10 is the issue's bound.
    assert _max_rel(got, ridge_loop) <= 1e-10


def test_vmap_over_grad_of_implicit_equals_the_loop(ridge_loop):
    d = RIDGE_DATA
    args = (RIDGE_PHI, d["X"], d["y"], d["X_val"], d["y_val"], RIDGE_W)
    got = torch.func.vmap(torch.func.grad(_ridge_implicit_loss))(*args)
    assert _max_rel(got, ridge_loop) <= 1e-10  # as above


def test_vmap_over_grad_of_implicit_with_captured_per_problem_data_is_a_clear_error():
    """The solve runs below the transform, so a closure over vmapped data cannot be seen there;
    the error says so and how to pass the data instead (as the passing forms above do)."""
    d = RIDGE_DATA

    def loss(X, y, X_val, y_val, w, phi):
        inner, outer = _ridge_losses(X, y, X_val, y_val)
        return outer(ig.implicit(inner, w, phi, RIDGE_CG), phi)

    with pytest.raises(ig.InputError, match=r"captured in a closure.*Pass such data through"):
        torch.func.vmap(torch.func.grad(loss, argnums=5))(
            d["X"], d["y"], d["X_val"], d["y_val"], RIDGE_W, RIDGE_PHI
        )


def test_forward_mode_through_implicit_is_a_clear_error():
    inner = lambda t, p: 0.5 * 3.0 * (t**2).sum() - (t * p).sum()  # noqa: E731
    phi = torch.ones(2, dtype=F64)
    with pytest.raises(ig.InputError, match=r"forward-mode differentiation .* not supported"):
        torch.func.jacfwd(lambda p: ig.implicit(inner, (p / 3).detach(), p))(phi)


def test_batched_hypergrad_equals_the_loop_with_per_problem_residuals(ridge_loop):
    d = RIDGE_DATA

    def outer(w, params):
        _, _, _, X_val, y_val = params
        r = X_val @ w - y_val
        return 0.5 * (r @ r) / y_val.shape[-1]

    def inner(w, params):
        return _data_inner(w, params[:3])

    params = (RIDGE_PHI, d["X"], d["y"], d["X_val"], d["y_val"])
    hg, info = ig.hypergrad(inner, outer, RIDGE_W, params, RIDGE_CG, batched=True, return_info=True)
    assert _max_rel(hg[0], ridge_loop) <= 1e-10  # as above
    assert info.batch_residual.shape == (N_PROBLEMS,)
    assert bool((info.batch_residual <= RIDGE_CG.tol).all())
    assert bool(info.batch_converged.all()) and info.converged
    assert info.residual == pytest.approx(float(info.batch_residual.max()))
    assert info.iterations >= int(info.batch_iterations.max())
    assert info.batch_stationarity.shape == (N_PROBLEMS,)


def test_jacrev_of_implicit_matches_finite_differences_and_the_closed_form():
    prob = ridge_problem(30, 5, seed=4)
    phi = prob.outer_params + torch.linspace(-1.0, 1.0, 5, dtype=F64)
    w = prob.inner_solution(phi)

    def solution(p):
        return ig.implicit(prob.inner_loss, w, p, ig.CG(max_iter=100, tol=1e-13))

    jac = torch.func.jacrev(solution)(phi)
    # Closed form: dw*/dφ = -A⁻¹ diag(e^φ ⊙ w*).
    A = prob.X.T @ prob.X / len(prob.y) + torch.diag(phi.exp())
    closed = -torch.linalg.solve(A, torch.diag(phi.exp() * w))
    # cond(A) ~ 10 and CG to 1e-13: ~1e-12.
    assert rel_err(jac, closed) <= 1e-10
    # Autodiff through the dense solve of the closed-form solution.
    assert rel_err(jac, torch.func.jacrev(prob.inner_solution)(phi)) <= 1e-10
    eps = 1e-5
    fd = torch.stack(
        [
            (prob.inner_solution(phi + eps * e) - prob.inner_solution(phi - eps * e)) / (2 * eps)
            for e in torch.eye(5, dtype=F64)
        ],
        dim=1,
    )
    # Central differences in float64: truncation eps² ~ 1e-10, rounding eps_mach / eps ~ 1e-11.
    assert rel_err(jac, fd) <= 1e-8


@pytest.mark.parametrize("structure", ["tensor", "dict", "nested"])
def test_grad_and_vjp_over_implicit_match_backward(structure):
    prob = random_quadratic(
        7, 4, condition=30.0, inner_structure=structure, outer_structure=structure, seed=9
    )
    solver = ig.CG(max_iter=100, tol=1e-13)

    def loss(phi):
        theta = ig.implicit(prob.inner_loss, prob.inner_params, phi, solver)
        return prob.outer_loss(theta, phi)

    leaves, spec = pytree.tree_flatten(prob.outer_params)
    phi_leaves = [p.clone().requires_grad_(True) for p in leaves]
    loss(pytree.tree_unflatten(phi_leaves, spec)).backward()
    backward = pytree.tree_unflatten([p.grad for p in phi_leaves], spec)

    grad = torch.func.grad(loss)(prob.outer_params)
    value, vjp_fn = torch.func.vjp(loss, prob.outer_params)
    (vjp,) = vjp_fn(torch.ones((), dtype=F64))
    # Both run the same solve on the same data: only rounding of the operation order differs.
    assert rel_err(grad, backward) <= 1e-12
    assert rel_err(vjp, backward) <= 1e-12
    # ... and all equal the closed form (cond 30, CG to 1e-13).
    assert rel_err(grad, prob.exact_hypergrad()) <= 1e-10


@pytest.mark.parametrize(
    "solver",
    [ig.GMRES(), ig.Exact(), ig.Nystrom(rank=D, rho=0.0), ig.BiCGStab()],
    ids=["GMRES", "Exact", "Nystrom", "BiCGStab"],
)
@pytest.mark.parametrize("entry", ["hypergrad", "implicit", "batched"])
def test_solvers_without_batch_support_refuse_a_batch(solver, entry):
    p = RIDGES[0]
    W, PHI = SMALL_W, SMALL_PHI
    with pytest.raises(ig.InputError, match=rf"`{type(solver).__name__}` {ONE_SYSTEM}"):
        if entry == "hypergrad":
            torch.func.vmap(lambda w, f: ig.hypergrad(p.inner_loss, p.outer_loss, w, f, solver))(
                W, PHI
            )
        elif entry == "implicit":
            loss = lambda f, w: p.outer_loss(ig.implicit(p.inner_loss, w, f, solver))  # noqa: E731
            torch.func.vmap(torch.func.grad(loss))(PHI, W)
        else:
            ig.hypergrad(p.inner_loss, p.outer_loss, W, PHI, solver, batched=True)


def test_vmap_over_fixed_point_hypergrad():
    # GMRES, the fixed-point default, solves one system at a time, so vmap needs a solver
    # with batch support: the adjoint fixed-point iteration, Neumann(alpha=1).
    p = RIDGES[0]
    W, PHI = SMALL_W, SMALL_PHI

    def update(w, f):
        return w - 0.1 * torch.func.grad(p.inner_loss)(w, f)

    with pytest.raises(ig.InputError, match=rf"`GMRES` {ONE_SYSTEM}"):
        torch.func.vmap(lambda w, f: ig.fixed_point_hypergrad(update, p.outer_loss, w, f))(W, PHI)
    solver = ig.Neumann(terms=60, alpha=1.0)
    got = torch.func.vmap(
        lambda w, f: ig.fixed_point_hypergrad(update, p.outer_loss, w, f, solver)
    )(W, PHI)
    loop = torch.stack(
        [ig.fixed_point_hypergrad(update, p.outer_loss, w, f, solver) for w, f in zip(W, PHI)]
    )
    # The same fixed series on each problem: equal up to rounding.
    assert _max_rel(got, loop) <= 1e-12


@pytest.mark.parametrize(
    "kwargs", [{"return_info": True}, {"batched": True}, {"warm_start": torch.zeros(D, dtype=F64)}]
)
def test_diagnostics_under_vmap_are_an_input_error(kwargs):
    p = RIDGES[0]
    with pytest.raises(
        ig.InputError, match=r"under torch\.func transforms returns the hypergradient"
    ):
        torch.func.vmap(lambda w, f: ig.hypergrad(p.inner_loss, p.outer_loss, w, f, **kwargs))(
            SMALL_W, SMALL_PHI
        )


# --------------------------------------------------------------------------------------------
# 3. Neumann's alpha in the fixed-point form


@pytest.mark.parametrize("terms", [0, 1, 5, 40])
def test_neumann_alpha_one_in_the_fixed_point_form_is_the_paper_estimator(terms):
    prob = random_quadratic(6, 3, condition=20.0, inner_structure="dict", seed=3)
    eta = 1.0 / prob.largest_eigenvalue

    def update(theta, phi):
        grads = torch.autograd.grad(
            prob.inner_loss(theta, phi), list(theta.values()), create_graph=True
        )
        return {k: t - eta * g for (k, t), g in zip(theta.items(), grads)}

    args = (prob.outer_loss, prob.inner_params, prob.outer_params)
    fixed = ig.fixed_point_hypergrad(update, *args, ig.Neumann(terms=terms, alpha=1.0))
    root = ig.hypergrad(prob.inner_loss, *args, ig.Neumann(terms=terms, alpha=eta))
    # The same series Σ (I - ηH)^j v, formed as v - (v - ηHv) on one side and v - ηHv on the
    # other: rounding apart.
    assert rel_err(fixed, root) <= 1e-10
    assert rel_err(root, prob.neumann_hypergrad(terms, eta)) <= 1e-10


@pytest.mark.parametrize("terms", [0, 4, 25])
@pytest.mark.parametrize("alpha", [0.5, 0.8, 1.3])
def test_neumann_alpha_in_the_fixed_point_form_is_the_damped_series(alpha, terms):
    n = 7
    A = contraction("dense", n, 0.6, 0.0, seed=21)
    prob = LinearFixedPoint(A, 2, "tuple", seed=21)
    M = torch.eye(n, dtype=F64) - A.T  # the operator I - Jᵀ

    def dense_series(a: float) -> torch.Tensor:
        """The hypergradient with the adjoint a Σ_{j=0}^{K} (I - a M)^j v, by matrix powers."""
        step = torch.eye(n, dtype=F64) - a * M
        series = a * sum(torch.linalg.matrix_power(step, j) for j in range(terms + 1))
        return prob.D @ prob.phi + prob.d + prob.B.T @ (series @ prob.rhs())

    assert spectral_radius(torch.eye(n, dtype=F64) - alpha * M) < 1.0  # a convergent series
    got = ig.fixed_point_hypergrad(
        prob.update,
        prob.outer_loss,
        prob.theta_star,
        prob.phi,
        ig.Neumann(terms=terms, alpha=alpha),
    )
    # The same finite sum in a different order: rounding only.
    assert rel_err(got, dense_series(alpha)) <= 1e-10
    # alpha is used: the undamped series (alpha=1) is a different truncated estimate.
    assert rel_err(got, dense_series(1.0)) > 1e-6


# --------------------------------------------------------------------------------------------
# 4. Batched and looped results agree; each problem converges on its own residual


QUAD_FIELDS = ("A", "B", "c", "E", "e", "D", "d")


def _quad_losses(A, B, c, E, e, D, d):
    inner = lambda t, p: 0.5 * t @ (A @ t) - t @ (B @ p + c)  # noqa: E731

    def outer(t, p):
        r = E @ t - e
        return 0.5 * r @ r + 0.5 * p @ (D @ p) + d @ p

    return inner, outer


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 10),
    m=st.integers(1, 4),
    log_conditions=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=6),
    seed=st.integers(0, 2**20),
)
def test_vmap_and_batched_agree_with_the_loop_on_random_quadratics(n, m, log_conditions, seed):
    # Always one perfectly conditioned (H = I) and one ill-conditioned problem in the batch.
    conditions = [1.0, 1e3] + [10.0**k for k in log_conditions]
    probs = [random_quadratic(n, m, condition=k, seed=seed + i) for i, k in enumerate(conditions)]
    stacked = {f: torch.stack([getattr(p, f) for p in probs]) for f in QUAD_FIELDS}
    theta = torch.stack([p.inner_params for p in probs])
    phi = torch.stack([p.outer_params for p in probs])
    solver = ig.CG(max_iter=200, tol=1e-12)

    def one(A, B, c, E, e, D, d, t, p):
        inner, outer = _quad_losses(A, B, c, E, e, D, d)
        return ig.hypergrad(inner, outer, t, p, solver)

    fields = [stacked[f] for f in QUAD_FIELDS]
    vmapped = torch.func.vmap(one)(*fields, theta, phi)
    loop = torch.stack([one(*(x[i] for x in fields), theta[i], phi[i]) for i in range(len(probs))])
    # The same CG on each problem, each stopping on its own residual <= 1e-12: the two forms
    # differ by rounding and at most one iteration's worth of error (~1e-13 measured).
    assert _max_rel(vmapped, loop) <= 1e-10
    for got, p in zip(loop, probs):
        # cond <= 1e3 times the residual 1e-12, plus a factor 10.
        assert rel_err(got, p.exact_hypergrad()) <= 1e-8

    # batched=True: the per-problem matrices travel in outer_params (the losses are written
    # for one problem); the φ part of the hypergradient is the same quantity.
    def inner(t, params):
        p, A, B, c = params[:4]
        return _quad_losses(A, B, c, None, None, None, None)[0](t, p)

    def outer(t, params):
        p, E, e, D, d = params[0], *params[4:]
        return _quad_losses(None, None, None, E, e, D, d)[1](t, p)

    params = (phi, *fields)
    hg, info = ig.hypergrad(inner, outer, theta, params, solver, batched=True, return_info=True)
    assert _max_rel(hg[0], loop) <= 1e-10  # as above
    assert bool((info.batch_residual <= solver.tol).all()) and bool(info.batch_converged.all())
    # Each problem converges on its own residual: H = I is solved in one CG step (plus the
    # final residual product), while cond 1e3 with n >= 2 distinct eigenvalues needs more.
    iters = info.batch_iterations
    assert int(iters[0]) < int(iters[1])
    assert int(iters[0]) <= 2
    assert int(iters.max()) <= info.iterations


def test_batch_iterations_follow_each_problems_conditioning():
    # Curvature learned per problem: H(φ) = Q diag(e^s) Qᵀ, so one batch mixes condition
    # numbers 1, 10, 1e2, 1e3 and the CG rows must stop at different times.
    n, B = 40, 4
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
    c = torch.randn(n, dtype=F64, generator=g)
    spreads = [0.0, 1.0, 2.0, 3.0]
    s = torch.stack([torch.linspace(0.0, k * math.log(10.0), n, dtype=F64) for k in spreads])
    shift = torch.randn(B, n, dtype=F64, generator=g)

    def hessian(log_eig):
        return (Q * log_eig.exp()) @ Q.T

    def inner(t, p):
        return 0.5 * t @ (hessian(p["s"]) @ t) - t @ (c + p["shift"])

    def outer(t, p):
        return 0.5 * (t**2).sum()

    theta = torch.stack([torch.linalg.solve(hessian(s[i]), c + shift[i]) for i in range(B)])
    params = {"s": s, "shift": shift}
    solver = ig.CG(max_iter=300, tol=1e-12)
    hg, info = ig.hypergrad(inner, outer, theta, params, solver, batched=True, return_info=True)
    loop = [
        ig.hypergrad(inner, outer, theta[i], {"s": s[i], "shift": shift[i]}, solver)
        for i in range(B)
    ]
    for i in range(B):
        # Same CG per problem, each to 1e-12 with cond <= 1e3.
        assert rel_err(pytree.tree_map(lambda x: x[i], hg), loop[i]) <= 1e-8
    assert bool((info.batch_residual <= solver.tol).all())
    iters = info.batch_iterations.tolist()
    # H = I takes one CG step plus the residual check; each tenfold of conditioning costs
    # CG about sqrt(10) times more steps (here some 20 more out of 40 dimensions), a margin
    # that no rounding detail of the counts can close.
    assert iters[0] <= 2
    assert iters[0] < iters[1] < iters[2] < iters[3]
    assert info.iterations >= iters[3]

"""Measure the solvers for non-symmetric systems, for docs/choosing-a-solver.md.

Run from the repository root: `python docs/scripts/nonsymmetric_solvers.py`. Every number
is deterministic (seeded problems, float64).

The problems are fixed points θ* = T(θ*, φ) whose adjoint system (I - ∂T/∂θ)ᵀ w = v is not
symmetric, solved with `fixed_point_hypergrad` to a relative residual of 1e-8:

- `random contraction`: the linear map T(θ, φ) = Aθ + Bφ with a random Gaussian 100 × 100 matrix
  A scaled to spectral radius ρ (its eigenvalues fill the disc of radius ρ, and A is
  non-normal: its 2-norm exceeds ρ), closed form dg/dφ = Bᵀ (I - A)⁻ᵀ ∂g/∂θ;
- `heavy ball`: one step of gradient descent with momentum (β = 0.9, η = 1/λmax) on
  `random_quadratic(100, 10, condition=100)`, whose state is (θ, m); its fixed point is the
  minimizer, so the closed form is the quadratic's exact hypergradient.

For GMRES and BiCGStab, "products" is what the solver spent to reach the tolerance
(`HypergradInfo.iterations`, which counts the products that check the true residual). For
Neumann(alpha=1), the adjoint fixed-point iteration, it is the smallest number of terms
whose true residual (one more product, `compute_residual=True`) is at most 1e-8, found by
bisection; a series that the solver declares divergent counts as not reaching it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

import implicitgrad as ig
from implicitgrad.testing import random_quadratic

F64 = torch.float64
TOL = 1e-8
MAX_PRODUCTS = 5000


@dataclass(frozen=True)
class Problem:
    name: str
    radius: float  # spectral radius of ∂T/∂θ
    norm: float  # its 2-norm: above the radius for a non-normal map
    update: Callable[[Any, Any], Any]
    outer_loss: Callable[[Any, Any], torch.Tensor]
    inner_params: Any
    outer_params: torch.Tensor
    exact: torch.Tensor


@dataclass(frozen=True)
class Row:
    problem: str
    radius: float
    solver: str
    products: int | None  # None: did not reach the tolerance within MAX_PRODUCTS
    rel_error: float | None


def contraction(rho: float, n: int = 100, m: int = 5, seed: int = 0) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=F64)
    a = rho * a / torch.linalg.eigvals(a).abs().max()
    b = torch.randn(n, m, generator=gen, dtype=F64)
    c = torch.randn(n, generator=gen, dtype=F64)
    phi = torch.ones(m, dtype=F64)
    eye = torch.eye(n, dtype=F64)
    theta = torch.linalg.solve(eye - a, b @ phi)
    exact = b.T @ torch.linalg.solve((eye - a).T, theta - c)
    return Problem(
        "random contraction",
        rho,
        float(torch.linalg.matrix_norm(a, 2)),
        lambda t, p: a @ t + b @ p,
        lambda t, p: 0.5 * ((t - c) ** 2).sum(),
        theta,
        phi,
        exact,
    )


def heavy_ball(beta: float = 0.9) -> Problem:
    prob = random_quadratic(100, 10, condition=100.0, seed=0)
    lr = 1.0 / prob.largest_eigenvalue

    def update(state, phi):
        theta, m = state["theta"], state["m"]
        (grad,) = torch.autograd.grad(prob.inner_loss(theta, phi), theta, create_graph=True)
        m = beta * m + grad
        return {"theta": theta - lr * m, "m": m}

    theta = prob.inner_solution(prob.outer_params)
    state = {"theta": theta, "m": torch.zeros_like(theta)}
    # ∂T/∂(θ, m) = [[I - ηH, -ηβI], [H, βI]]; its spectrum and norm, densely.
    h = prob.A
    eye = torch.eye(len(theta), dtype=F64)
    jac = torch.cat(
        [torch.cat([eye - lr * h, -lr * beta * eye], 1), torch.cat([h, beta * eye], 1)], 0
    )
    return Problem(
        f"heavy ball β={beta}",
        float(torch.linalg.eigvals(jac).abs().max()),
        float(torch.linalg.matrix_norm(jac, 2)),
        update,
        lambda s, p: prob.outer_loss(s["theta"], p),
        state,
        prob.outer_params,
        prob.exact_hypergrad(),
    )


def problems() -> list[Problem]:
    return [contraction(0.5), contraction(0.9), contraction(0.99), heavy_ball()]


def _solve(prob: Problem, solver: ig.AbstractSolver) -> tuple[torch.Tensor, ig.HypergradInfo]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ig.ConvergenceWarning)
        return ig.fixed_point_hypergrad(
            prob.update,
            prob.outer_loss,
            prob.inner_params,
            prob.outer_params,
            solver,
            return_info=True,
        )


def _rel(hg: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(hg - exact) / torch.linalg.vector_norm(exact))


def _neumann(prob: Problem, terms: int) -> tuple[torch.Tensor, ig.HypergradInfo] | None:
    """The series with `terms` terms, or None if it does not reach TOL (or diverges)."""
    try:
        hg, info = _solve(prob, ig.Neumann(terms=terms, alpha=1.0, compute_residual=True))
    except ig.SolverError:
        return None
    return (hg, info) if info.residual <= TOL else None


def neumann_row(prob: Problem) -> Row:
    name = "Neumann(alpha=1.0)"
    hi = 8
    while _neumann(prob, hi) is None:
        if hi >= MAX_PRODUCTS:
            return Row(prob.name, prob.radius, name, None, None)
        hi *= 2
    lo = hi // 2  # does not reach TOL (or is below 8)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _neumann(prob, mid) is not None else (mid, hi)
    hg, info = _neumann(prob, hi)
    return Row(prob.name, prob.radius, name, info.iterations, _rel(hg, prob.exact))


def rows() -> Iterator[Row]:
    for prob in problems():
        for name, solver in {
            "GMRES(restart=20)": ig.GMRES(max_iter=MAX_PRODUCTS, tol=TOL),
            "GMRES(restart=50)": ig.GMRES(max_iter=MAX_PRODUCTS, restart=50, tol=TOL),
            "BiCGStab()": ig.BiCGStab(max_iter=MAX_PRODUCTS, tol=TOL),
        }.items():
            try:
                hg, info = _solve(prob, solver)
            except ig.SolverError:
                yield Row(prob.name, prob.radius, name, None, None)
                continue
            products = info.iterations if info.converged else None
            yield Row(prob.name, prob.radius, name, products, _rel(hg, prob.exact))
        yield neumann_row(prob)
        hg, info = _solve(prob, ig.Exact())
        yield Row(prob.name, prob.radius, "Exact()", info.iterations, _rel(hg, prob.exact))


def main() -> None:
    torch.set_num_threads(1)
    print(f"fixed_point_hypergrad to a relative residual of {TOL:.0e}, float64")
    for prob in problems():
        print(f"  {prob.name}: spectral radius {prob.radius:.3f}, 2-norm {prob.norm:.2f}")
    print("| Problem | ρ | Solver | Products | Rel. error |")
    print("|---|---:|---|---:|---:|")
    for r in rows():
        products = "—" if r.products is None else str(r.products)
        error = "—" if r.rel_error is None else f"{r.rel_error:.1e}"
        print(f"| {r.problem} | {r.radius:.3f} | `{r.solver}` | {products} | {error} |")


if __name__ == "__main__":
    main()

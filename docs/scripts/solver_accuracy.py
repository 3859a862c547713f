"""Measure accuracy against cost of the solvers, for docs/choosing-a-solver.md.

Run from the repository root: `python docs/scripts/solver_accuracy.py`. Deterministic
(seeded problems); the timings depend on the machine.
"""

from __future__ import annotations

import time
import warnings

import torch

import implicitgrad as ig
from implicitgrad.testing import random_quadratic, ridge_problem

torch.set_num_threads(1)


def flat(tree) -> torch.Tensor:
    return tree.reshape(-1)


def compare(hg: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    rel = float(torch.linalg.vector_norm(hg - exact) / torch.linalg.vector_norm(exact))
    cos = float(
        torch.dot(hg, exact) / (torch.linalg.vector_norm(hg) * torch.linalg.vector_norm(exact))
    )
    return rel, cos


def measure(prob, solver, exact, repeats: int = 5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ig.ConvergenceWarning)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            hg, info = ig.hypergrad(
                prob.inner_loss,
                prob.outer_loss,
                prob.inner_params,
                prob.outer_params,
                solver=solver,
                return_info=True,
            )
            times.append(time.perf_counter() - start)
    rel, cos = compare(flat(hg), flat(exact))
    return rel, cos, info.iterations, sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    print("random_quadratic(n_inner=200, n_outer=20), float64")
    print(f"{'kappa':>6} | {'solver':<34} | {'rel. error':>10} | {'cosine':>7} | {'HVPs':>5} | ms")
    for kappa in (10.0, 100.0, 1000.0):
        prob = random_quadratic(200, 20, condition=kappa, seed=0)
        exact = prob.exact_hypergrad()
        lam_max = prob.largest_eigenvalue
        solvers = {
            "Identity(scale=1/λmax)": ig.Identity(scale=1 / lam_max),
            "Neumann(terms=1, alpha=1/λmax)": ig.Neumann(terms=1, alpha=1 / lam_max),
            "Neumann(terms=10, alpha=1/λmax)": ig.Neumann(terms=10, alpha=1 / lam_max),
            "Neumann(terms=100, alpha=1/λmax)": ig.Neumann(terms=100, alpha=1 / lam_max),
            "CG(max_iter=10)": ig.CG(max_iter=10, tol=1e-12),
            "CG(max_iter=30)": ig.CG(max_iter=30, tol=1e-12),
            "CG(tol=1e-10)": ig.CG(max_iter=1000, tol=1e-10),
            "Nystrom(rank=20, rho=1.0)": ig.Nystrom(rank=20, rho=1.0),
            "Nystrom(rank=100, rho=1.0)": ig.Nystrom(rank=100, rho=1.0),
            "Exact()": ig.Exact(),
        }
        for name, solver in solvers.items():
            rel, cos, its, ms = measure(prob, solver, exact)
            print(f"{kappa:6.0f} | {name:<34} | {rel:10.2e} | {cos:7.3f} | {its:5d} | {ms:.1f}")
    print()
    print("ridge_problem(n_samples=100, n_features=20): the paper's setting, α = a learning rate")
    prob = ridge_problem(100, 20, seed=0)
    exact = prob.exact_hypergrad()
    for lr in (0.1, 0.01):
        for name, solver in {
            f"Neumann(terms=1, alpha={lr})": ig.Neumann(terms=1, alpha=lr),
            f"Neumann(terms=100, alpha={lr})": ig.Neumann(terms=100, alpha=lr),
        }.items():
            rel, cos, its, ms = measure(prob, solver, exact)
            print(f"{name:<34} | {rel:10.2e} | {cos:7.3f} | {its:5d}")
    rel, cos, its, ms = measure(prob, ig.CG(max_iter=100, tol=1e-10), exact)
    print(f"{'CG(tol=1e-10)':<34} | {rel:10.2e} | {cos:7.3f} | {its:5d}")
    hessian = prob.X.T @ prob.X / len(prob.y) + torch.diag(prob.outer_params.exp())
    lam_max = float(torch.linalg.eigvalsh(hessian)[-1])
    print(f"largest eigenvalue of the ridge Hessian: {lam_max:.3f}")


if __name__ == "__main__":
    main()

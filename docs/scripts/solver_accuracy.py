"""Measure accuracy against cost of the solvers, for docs/choosing-a-solver.md.

Run from the repository root: `python docs/scripts/solver_accuracy.py`. The errors, cosines
and products are deterministic (seeded problems); the timings depend on the machine. They are
the CPU time of the calling thread (torch runs on one thread here) of the fastest of five
calls: other processes on a shared machine disturb it far less than wall-clock time, and
interference only ever adds time.
`tests/test_docs.py` reruns the measurement and compares it with the tables of the page.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

import implicitgrad as ig
from implicitgrad.testing import random_quadratic, ridge_problem


@dataclass(frozen=True)
class Row:
    """One measured solver: its setting, accuracy against the closed form, and cost."""

    problem: str
    solver: str
    rel_error: float
    cosine: float
    hvps: int
    ms: float


def measure(prob, solver: ig.AbstractSolver, repeats: int) -> tuple[float, float, int, float]:
    exact = prob.exact_hypergrad().reshape(-1)
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ig.ConvergenceWarning)
        for _ in range(repeats):
            start = time.thread_time()
            hg, info = ig.hypergrad(
                prob.inner_loss,
                prob.outer_loss,
                prob.inner_params,
                prob.outer_params,
                solver=solver,
                return_info=True,
            )
            times.append(time.thread_time() - start)
    hg = hg.reshape(-1)
    rel = float(torch.linalg.vector_norm(hg - exact) / torch.linalg.vector_norm(exact))
    cos = float(hg @ exact / (torch.linalg.vector_norm(hg) * torch.linalg.vector_norm(exact)))
    # The fastest call: interference from other work only ever adds time.
    return rel, cos, info.iterations, min(times) * 1e3


def quadratic_rows(repeats: int = 5) -> Iterator[Row]:
    """The solvers on `random_quadratic(200, 20)` at condition numbers 10, 100, 1000."""
    for kappa in (10.0, 100.0, 1000.0):
        prob = random_quadratic(200, 20, condition=kappa, seed=0)
        step = 1 / prob.largest_eigenvalue
        solvers = {
            "Identity(scale=1/λmax)": ig.Identity(scale=step),
            "Neumann(terms=1, alpha=1/λmax)": ig.Neumann(terms=1, alpha=step),
            "Neumann(terms=10, alpha=1/λmax)": ig.Neumann(terms=10, alpha=step),
            "Neumann(terms=100, alpha=1/λmax)": ig.Neumann(terms=100, alpha=step),
            "CG(max_iter=10)": ig.CG(max_iter=10, tol=1e-12),
            "CG(max_iter=30)": ig.CG(max_iter=30, tol=1e-12),
            "CG(tol=1e-10)": ig.CG(max_iter=1000, tol=1e-10),
            "Nystrom(rank=20, rho=1.0)": ig.Nystrom(rank=20, rho=1.0),
            "Nystrom(rank=100, rho=1.0)": ig.Nystrom(rank=100, rho=1.0),
            "Exact()": ig.Exact(),
        }
        for name, solver in solvers.items():
            yield Row(f"{kappa:.0f}", name, *measure(prob, solver, repeats))


def ridge_rows(repeats: int = 5) -> Iterator[Row]:
    """The paper's one-term Neumann estimator against CG on `ridge_problem(100, 20)`."""
    prob = ridge_problem(100, 20, seed=0)
    solvers = {
        "Neumann(terms=1, alpha=0.1)": ig.Neumann(terms=1, alpha=0.1),
        "Neumann(terms=1, alpha=0.01)": ig.Neumann(terms=1, alpha=0.01),
        "Neumann(terms=100, alpha=0.1)": ig.Neumann(terms=100, alpha=0.1),
        "Neumann(terms=100, alpha=0.01)": ig.Neumann(terms=100, alpha=0.01),
        "CG(tol=1e-10)": ig.CG(max_iter=100, tol=1e-10),
    }
    for name, solver in solvers.items():
        yield Row("ridge", name, *measure(prob, solver, repeats))


def main() -> None:
    torch.set_num_threads(1)
    print("random_quadratic(n_inner=200, n_outer=20), float64; thread CPU time, fastest of 5 calls")
    print(f"{'kappa':>6} | {'solver':<34} | {'rel. error':>10} | {'cosine':>7} | {'HVPs':>5} | ms")
    for r in quadratic_rows():
        print(
            f"{r.problem:>6} | {r.solver:<34} | {r.rel_error:10.2e} | {r.cosine:7.3f} | "
            f"{r.hvps:5d} | {r.ms:.1f}"
        )
    prob = ridge_problem(100, 20, seed=0)
    hessian = prob.X.T @ prob.X / len(prob.y) + torch.diag(prob.outer_params.exp())
    lam_max = float(torch.linalg.eigvalsh(hessian)[-1])
    print(f"\nridge_problem(100, 20), largest Hessian eigenvalue {lam_max:.3f}")
    for r in ridge_rows():
        print(f"{r.solver:<34} | {r.rel_error:10.2e} | {r.cosine:7.3f} | {r.hvps:5d}")


if __name__ == "__main__":
    main()

"""Shared test helpers: tree comparison and the registry of solvers checked on every problem."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

import implicitgrad as ig


def flat(tree) -> torch.Tensor:
    leaves, _ = pytree.tree_flatten(tree)
    return torch.cat([leaf.reshape(-1) for leaf in leaves])


def rel_err(a, b) -> float:
    a, b = flat(a), flat(b)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def same_structure(a, b) -> bool:
    return pytree.tree_structure(a) == pytree.tree_structure(b)


@dataclass(frozen=True)
class SolverCase:
    """A solver built for a problem, with the accuracy it must reach against the exact answer.

    `exact=True` marks solvers that converge to the exact IFT hypergradient; the others are
    checked against their own closed-form definitions elsewhere.
    """

    name: str
    make: Callable[[int, float], ig.AbstractSolver]  # (dimension, lambda_max) -> solver
    exact: bool
    tol: float


# Every solver the library exports must appear here; test_hypergrad.py checks that.
SOLVERS: list[SolverCase] = [
    SolverCase("Exact", lambda n, lam: ig.Exact(), True, 1e-8),
    # CG is exact after n steps in exact arithmetic; allow a few more for rounding.
    SolverCase("CG", lambda n, lam: ig.CG(max_iter=3 * n + 10, tol=1e-13), True, 1e-8),
    SolverCase("GMRES", lambda n, lam: ig.GMRES(max_iter=3 * n + 10, tol=1e-13), True, 1e-8),
    SolverCase("BiCGStab", lambda n, lam: ig.BiCGStab(max_iter=3 * n + 10, tol=1e-13), True, 1e-8),
    SolverCase("Neumann", lambda n, lam: ig.Neumann(terms=5, alpha=1.0 / lam), False, 0.0),
    SolverCase("Identity", lambda n, lam: ig.Identity(scale=0.5), False, 0.0),
    # At full rank with rho=0 the Nyström approximation is the Hessian itself.
    SolverCase(
        "Nystrom", lambda n, lam: ig.Nystrom(rank=n, rho=0.0, compute_residual=True), True, 1e-8
    ),
]

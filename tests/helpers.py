"""Shared test helpers: tree comparison and the registry of solvers checked on every problem."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from hypothesis import strategies as st

import implicitgrad as ig
from implicitgrad.testing import random_quadratic

STRUCTURES = ["tensor", "tuple", "list", "dict", "nested"]

#: Random quadratic problems over sizes, conditioning and tree structures (hypothesis).
problems = st.builds(
    random_quadratic,
    n_inner=st.integers(1, 12),
    n_outer=st.integers(1, 6),
    condition=st.sampled_from([1.0, 3.0, 30.0, 1e3]),
    inner_structure=st.sampled_from(STRUCTURES),
    outer_structure=st.sampled_from(STRUCTURES),
    seed=st.integers(0, 10_000),
)


def flat(tree) -> torch.Tensor:
    leaves, _ = pytree.tree_flatten(tree)
    return torch.cat([leaf.reshape(-1) for leaf in leaves])


def rel_err(a, b) -> float:
    a, b = flat(a), flat(b)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def same_structure(a, b) -> bool:
    return pytree.tree_structure(a) == pytree.tree_structure(b)


def exported_subclasses(base: type) -> set[str]:
    """The names in `ig.__all__` of the exported concrete subclasses of `base`."""
    return {
        name
        for name in ig.__all__
        if isinstance(getattr(ig, name), type)
        and issubclass(getattr(ig, name), base)
        and getattr(ig, name) is not base
    }


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


@dataclass(frozen=True)
class PreconditionerCase:
    """A preconditioner built for a problem of dimension `n`; CG with it must be exact."""

    name: str
    make: Callable[[int], ig.AbstractPreconditioner]


# Every preconditioner the library exports must appear here; test_preconditioners.py checks
# that and runs preconditioned CG on every problem of the solver tests.
PRECONDITIONERS: list[PreconditionerCase] = [
    # A rank below n: the preconditioner is approximate, CG must still be exact.
    PreconditionerCase(
        "NystromPreconditioner", lambda n: ig.NystromPreconditioner(rank=1 + n // 2)
    ),
    PreconditionerCase("DiagonalPreconditioner", lambda n: ig.DiagonalPreconditioner(probes=4)),
    # Seeded with products of an unrelated matrix: a stale but SPD preconditioner.
    PreconditionerCase("RecycledPreconditioner", lambda n: seeded_recycled(n)),
]


def seeded_recycled(n: int, seed: int = 0) -> ig.RecycledPreconditioner:
    """A RecycledPreconditioner holding products of a random SPD matrix other than the
    system's (as after the solves of earlier outer steps)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64)).Q
    other = q @ torch.diag(torch.logspace(0, 3, n, dtype=torch.float64)) @ q.T
    pc = ig.RecycledPreconditioner(memory=max(2, 1 + n // 2))
    for _ in range(pc.memory):
        v = torch.randn(n, generator=gen, dtype=torch.float64)
        pc.record(v, other @ v)
    return pc


def preconditioned_cg(case: PreconditionerCase, n: int, **kwargs) -> ig.CG:
    """CG with the preconditioner of `case`, with the budget of the exact CG case."""
    return ig.CG(max_iter=3 * n + 10, tol=1e-13, preconditioner=case.make(n), **kwargs)

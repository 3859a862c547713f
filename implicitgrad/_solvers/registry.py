"""Solver shorthands and the default solver of each form of the implicit condition."""

from __future__ import annotations

from collections.abc import Callable

from .._errors import InputError
from .base import AbstractSolver
from .bicgstab import BiCGStab
from .cg import CG
from .exact import Exact
from .gmres import GMRES
from .identity import Identity
from .neumann import Neumann
from .nystrom import Nystrom

__all__ = ["SHORTHANDS", "default_solver", "resolve_solver"]

#: The strings a public `solver=` argument accepts, each for the solver's defaults.
SHORTHANDS: dict[str, Callable[[], AbstractSolver]] = {
    "cg": CG,
    "gmres": GMRES,
    "bicgstab": BiCGStab,
    "neumann": Neumann,
    "identity": Identity,
    "exact": Exact,
    "nystrom": Nystrom,
}


def default_solver(symmetric: bool) -> AbstractSolver:
    """CG for a symmetric operator (a Hessian), GMRES for a general one: both are exact in
    the limit for every operator they accept, and GMRES for every nonsingular one."""
    return CG() if symmetric else GMRES()


def resolve_solver(
    solver: AbstractSolver | str | None, *, call: str, symmetric: bool
) -> AbstractSolver:
    """Turn the `solver=` argument of a public call into a solver object."""
    if isinstance(solver, AbstractSolver):
        return solver
    if solver is None:
        return default_solver(symmetric)
    if isinstance(solver, str) and solver.lower() in SHORTHANDS:
        return SHORTHANDS[solver.lower()]()
    raise InputError(
        f"`{call}(solver=...)` received {solver!r}. Pass a solver object such as "
        "ig.CG(max_iter=50, tol=1e-8), ig.GMRES(), ig.Neumann(terms=5, alpha=0.1), "
        f"ig.Identity() or ig.Exact(), or one of the shorthands {sorted(SHORTHANDS)}."
    )

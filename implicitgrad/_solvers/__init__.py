"""Linear solvers for the inverse-Hessian-vector product (private; see `implicitgrad`)."""

from .base import AbstractSolver, LinearOperator, Solution
from .bicgstab import BiCGStab
from .cg import CG
from .exact import Exact
from .gmres import GMRES
from .identity import Identity
from .neumann import Neumann
from .nystrom import Nystrom
from .registry import SHORTHANDS, default_solver, resolve_solver

__all__ = [
    "AbstractSolver",
    "LinearOperator",
    "Solution",
    "SHORTHANDS",
    "default_solver",
    "resolve_solver",
    "BiCGStab",
    "CG",
    "Exact",
    "GMRES",
    "Identity",
    "Neumann",
    "Nystrom",
]

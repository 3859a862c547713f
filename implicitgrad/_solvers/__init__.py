"""Linear solvers for the inverse-Hessian-vector product (private; see `implicitgrad`)."""

from .base import AbstractSolver, LinearOperator, Solution, resolve_solver
from .cg import CG
from .exact import Exact
from .identity import Identity
from .neumann import Neumann
from .nystrom import Nystrom

__all__ = [
    "AbstractSolver",
    "LinearOperator",
    "Solution",
    "resolve_solver",
    "CG",
    "Exact",
    "Identity",
    "Neumann",
    "Nystrom",
]

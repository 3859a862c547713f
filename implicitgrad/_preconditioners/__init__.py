"""Preconditioners for CG (private; see `implicitgrad`)."""

from .base import AbstractPreconditioner, BuiltPreconditioner
from .diagonal import DiagonalPreconditioner
from .nystrom import NystromPreconditioner
from .recycled import RecycledPreconditioner

__all__ = [
    "AbstractPreconditioner",
    "BuiltPreconditioner",
    "DiagonalPreconditioner",
    "NystromPreconditioner",
    "RecycledPreconditioner",
]

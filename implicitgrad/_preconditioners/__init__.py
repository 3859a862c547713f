"""Preconditioners for CG (private; see `implicitgrad`)."""

from .base import AbstractPreconditioner, BuiltPreconditioner
from .diagonal import DiagonalPreconditioner
from .nystrom import NystromPreconditioner

__all__ = [
    "AbstractPreconditioner",
    "BuiltPreconditioner",
    "DiagonalPreconditioner",
    "NystromPreconditioner",
]

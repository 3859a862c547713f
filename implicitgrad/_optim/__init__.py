"""Differentiable optimizers for unrolled training (private; see `implicitgrad`)."""

from .adam import Adam, AdamState, AdamW
from .base import AbstractOptimizer
from .sgd import SGD, SGDState

__all__ = ["AbstractOptimizer", "Adam", "AdamState", "AdamW", "SGD", "SGDState"]

"""Exceptions and warnings raised by implicitgrad."""

from __future__ import annotations

__all__ = [
    "ImplicitGradError",
    "InputError",
    "SolverError",
    "ConvergenceWarning",
    "StationarityWarning",
]


class ImplicitGradError(Exception):
    """Base class of every exception raised by implicitgrad."""


class InputError(ImplicitGradError, ValueError):
    """A public call received arguments it cannot use.

    The message names the call, what it received, and how to fix it. Typical causes: a loss
    that returns a non-scalar, a parameter tree whose leaves are not floating-point tensors,
    or a tree that does not match what the loss uses.
    """


class SolverError(ImplicitGradError, RuntimeError):
    """A linear solve failed in a way that would make the hypergradient wrong.

    Raised for NaN/Inf appearing during a solve, conjugate-gradient breakdown on an
    indefinite or singular Hessian ($p^\\top H p \\le 0$), a diverging Neumann series, or a
    singular dense system. The message carries the numbers and suggests a fix.
    """


class ConvergenceWarning(UserWarning):
    """An iterative solve stopped at `max_iter` before reaching its tolerance.

    The result is returned but is less accurate than asked for; the warning carries the
    final relative residual.
    """


class StationarityWarning(UserWarning):
    """The given inner parameters are far from a stationary point of the inner problem.

    Implicit differentiation assumes $\\nabla_\\theta f(\\theta, \\phi) = 0$ (or
    $\\theta = T(\\theta, \\phi)$); when it does not hold the hypergradient is biased.
    """

"""Exceptions and warnings raised by implicitgrad."""

from __future__ import annotations

import os
import sys
import warnings

__all__ = [
    "ImplicitGradError",
    "InputError",
    "SolverError",
    "DivergenceError",
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
    indefinite or singular Hessian ($p^\\top H p \\le 0$), a BiCGStab breakdown, a diverging
    Neumann series, or a singular dense system. The message carries the numbers and suggests
    a fix. Divergence of the inner *training* is the subclass
    [`DivergenceError`][implicitgrad.DivergenceError].
    """


class DivergenceError(SolverError):
    """The inner optimization diverged: its loss or parameters became NaN or Inf.

    Raised by [`unroll`][implicitgrad.unroll], [`minimize`][implicitgrad.minimize] and
    [`fixed_point`][implicitgrad.fixed_point] naming the step where it happened. A subclass
    of [`SolverError`][implicitgrad.SolverError], so code that catches failed solves catches
    it too. Lower the learning rate, clip the gradients or rescale the loss.
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


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Warnings raised in a backward pass run below torch's autograd frames; skip those too.
_TORCH_DIR = os.path.dirname(os.path.abspath(__import__("torch").__file__))


def warn(message: str, category: type[Warning]) -> None:
    """Warn with the location of the first caller outside implicitgrad.

    Solvers are called several frames below the public entry point; a fixed `stacklevel`
    would point into the library instead of at the user's call.
    """
    frame = sys._getframe(0)
    level = 1
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


_INTERNAL: dict[str, bool] = {}


def _is_internal(filename: str) -> bool:
    known = _INTERNAL.get(filename)
    if known is None:
        known = _INTERNAL[filename] = os.path.abspath(filename).startswith(
            (_PACKAGE_DIR, _TORCH_DIR)
        )
    return known

"""The identity approximation of the inverse Hessian."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._errors import InputError
from .base import AbstractSolver, LinearOperator, Solution, check_finite

__all__ = ["Identity"]


@dataclass(frozen=True)
class Identity(AbstractSolver):
    """Approximate the inverse Hessian by a multiple of the identity: $H^{-1} \\approx sI$.

    The cheapest estimator: no Hessian-vector products at all, so the hypergradient costs one
    gradient and one mixed vector-Jacobian product,
    $\\mathrm{d}g/\\mathrm{d}\\phi \\approx \\partial g/\\partial\\phi - s\\,
    (\\partial^2 f/\\partial\\phi\\partial\\theta)\\,\\partial g/\\partial\\theta$.
    It equals a zero-term [`Neumann`][implicitgrad.Neumann] series with $\\alpha = s$, and is
    the "one-step lookahead" used by DARTS-style first-order methods.

    **Arguments:**

    - `scale`: $s > 0$ (default `1.0`).

    The residual is not computed (`Solution.residual is None`).

    **Example:**

    ```python
    import torch, implicitgrad as ig
    inner = lambda t, p: ((t - p) ** 2).sum()
    hg = ig.hypergrad(inner, lambda t, p: t.sum(), torch.ones(2), torch.ones(2),
                      solver=ig.Identity(scale=0.5))
    assert torch.allclose(hg, torch.ones(2))   # -(-2 I) · 0.5 · 1
    ```
    """

    scale: float = 1.0

    supports_batch = True

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (int, float)) and 0 < self.scale < float("inf")):
            raise InputError(
                f"`Identity(scale=...)` must be a finite float > 0, got {self.scale!r}."
            )

    def solve(
        self, operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> Solution:
        self.check_operator(operator)
        x = self.scale * b
        check_finite(x, solver="Identity", what="the right-hand side", iteration=0)
        return Solution(x, 0, None, None)

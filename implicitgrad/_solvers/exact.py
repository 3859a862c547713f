"""Dense solve with the materialized Hessian."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._errors import ConvergenceWarning, InputError, SolverError, warn
from .base import AbstractSolver, LinearOperator, Solution, check_finite, rhs_norm

__all__ = ["Exact"]


@dataclass(frozen=True)
class Exact(AbstractSolver):
    """Materialize the Hessian and solve the dense system exactly.

    Builds the $n \\times n$ matrix $A$ column by column from $n$ matrix-vector products
    (batched with `vmap` when possible) and solves $A x = b$ with an LU factorization. The
    cost is $O(n)$ products, $O(n^2)$ memory and $O(n^3)$ time: meant for small problems,
    references and tests. It works for any nonsingular system: indefinite or non-symmetric ones too.

    **Arguments:**

    - `max_size`: refuse problems with more than this many inner parameters (default
      `10_000`), to avoid an accidental multi-gigabyte matrix.
    - `warn_residual`: warn with [`ConvergenceWarning`][implicitgrad.ConvergenceWarning]
      when the relative residual after the solve exceeds this (ill-conditioning; default
      `1e-4`).

    **Example:**

    ```python
    import torch, implicitgrad as ig
    inner = lambda t, p: 0.5 * (t ** 2).sum() * 3.0 - (t * p).sum()
    hg = ig.hypergrad(inner, lambda t, p: t.sum(), torch.ones(4) / 3, torch.ones(4),
                      solver=ig.Exact())
    assert torch.allclose(hg, torch.full((4,), 1 / 3))
    ```
    """

    max_size: int = 10_000
    warn_residual: float = 1e-4

    def __post_init__(self) -> None:
        if not isinstance(self.max_size, int) or self.max_size < 1:
            raise InputError(
                f"`Exact(max_size=...)` must be a positive int, got {self.max_size!r}."
            )
        if not self.warn_residual > 0:
            raise InputError(f"`Exact(warn_residual=...)` must be > 0, got {self.warn_residual!r}.")

    def solve(
        self, operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> Solution:
        self.check_operator(operator)
        if operator.size > self.max_size:
            raise InputError(
                f"`Exact()` would materialize a {operator.size} x {operator.size} matrix, more "
                f"than max_size={self.max_size}. Use an iterative solver such as ig.CG(), or "
                "raise Exact(max_size=...) if you really want the dense solve."
            )
        b_norm = rhs_norm(b, solver="Exact")
        if b_norm == 0.0:
            return Solution(torch.zeros_like(b), 0, 0.0, True)
        matrix = operator.materialize()
        check_finite(matrix, solver="Exact", what="the materialized matrix", iteration=0)
        try:
            x = torch.linalg.solve(matrix, b)
        except RuntimeError as err:  # torch raises on an exactly singular matrix
            raise SolverError(
                f"Exact: the {operator.size} x {operator.size} system is singular ({err}). The "
                "inner Hessian has a zero eigenvalue at the given parameters: add a "
                "regularizer to the inner loss, or use ig.CG(damping=...)."
            ) from err
        check_finite(x, solver="Exact", what="the solution", iteration=0)
        residual = float(torch.linalg.vector_norm(matrix @ x - b)) / b_norm
        if residual > self.warn_residual:
            warn(
                f"Exact: relative residual {residual:.3e} after the dense solve; the system is "
                "ill-conditioned and the hypergradient may be inaccurate.",
                ConvergenceWarning,
            )
        return Solution(x, operator.size, residual, residual <= self.warn_residual)

"""The solver contract: a matrix-free operator in, a solution with diagnostics out."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .._errors import InputError, SolverError

__all__ = ["AbstractSolver", "LinearOperator", "Solution", "resolve_solver", "rhs_norm"]


@dataclass(frozen=True)
class LinearOperator:
    """A matrix-free square linear operator $A$ on flat vectors.

    This is what every solver receives. In [`hypergrad`][implicitgrad.hypergrad] $A$ is the
    inner Hessian $H = \\partial^2 f / \\partial\\theta^2$; in
    [`fixed_point_hypergrad`][implicitgrad.fixed_point_hypergrad] it is
    $I - (\\partial T/\\partial\\theta)^\\top$.

    **Fields:**

    - `matvec`: `v ↦ A v` for a flat vector `v` of length `size`.
    - `size`: the dimension $n$.
    - `dtype`, `device`: those of the vectors `matvec` takes.
    - `symmetric`: whether $A$ is known to be symmetric (true for Hessians).
    - `fixed_point`: `True` when $A = I - J^\\top$ for the Jacobian $J$ of an update map; the
      Neumann solver then sums the series in the update map's own step size.
    - `batched_matvec`: optional `V ↦ (A Vᵀ)ᵀ` for a batch of vectors (rows), used to build
      dense matrices quickly.
    """

    matvec: Callable[[torch.Tensor], torch.Tensor]
    size: int
    dtype: torch.dtype
    device: torch.device
    symmetric: bool = True
    fixed_point: bool = False
    batched_matvec: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None)

    def materialize(self) -> torch.Tensor:
        """Build the dense $n \\times n$ matrix with $n$ matrix-vector products."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        if self.batched_matvec is not None:
            try:
                return self.batched_matvec(eye).T
            except RuntimeError:
                # Some operators have no batching rule; fall back to one product per column.
                pass
        return torch.stack([self.matvec(eye[i]) for i in range(self.size)], dim=1)


@dataclass(frozen=True)
class Solution:
    """The result of a linear solve $A x = b$ together with how far to trust it.

    **Fields:**

    - `value`: the approximate solution $x$ (a flat vector).
    - `iterations`: matrix-vector products with $A$ spent on the solve.
    - `residual`: the final relative residual $\\lVert A x - b\\rVert / \\lVert b\\rVert$, or
      `None` when the solver does not compute it (fixed series such as `Identity`).
    - `converged`: `True`/`False` for solvers with a stopping tolerance; `None` for solvers
      that by design run a fixed number of steps.
    """

    value: torch.Tensor
    iterations: int
    residual: float | None
    converged: bool | None


class AbstractSolver(abc.ABC):
    """Base class of the inverse-Hessian-vector-product solvers.

    **Contract.** A solver is a small frozen dataclass whose fields are its settings,
    validated in `__post_init__`. It implements one method,

    `solve(operator, b, x0=None) -> Solution`,

    which approximately solves $A x = b$ for the matrix-free
    [`LinearOperator`][implicitgrad.LinearOperator] `operator` and a flat right-hand side
    `b`, optionally starting from the guess `x0`. It must not change `b`, must raise
    [`SolverError`][implicitgrad.SolverError] where its answer would be wrong (NaN/Inf,
    breakdown, divergence), and should warn with
    [`ConvergenceWarning`][implicitgrad.ConvergenceWarning] where it is merely imprecise.

    **Example:** a diagonal-only (Jacobi) approximation.

    ```python
    from dataclasses import dataclass
    import torch, implicitgrad as ig

    @dataclass(frozen=True)
    class Jacobi(ig.AbstractSolver):
        def solve(self, operator, b, x0=None):
            diag = operator.materialize().diagonal()
            return ig.Solution(value=b / diag, iterations=operator.size,
                               residual=None, converged=None)

    hg = ig.hypergrad(lambda t, p: ((t - p) ** 2).sum(), lambda t, p: t.sum(),
                      torch.ones(3), torch.ones(3), solver=Jacobi())
    ```
    """

    @abc.abstractmethod
    def solve(
        self, operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> Solution:
        """Approximately solve `operator @ x = b`."""


def check_finite(x: torch.Tensor, *, solver: str, what: str, iteration: int) -> None:
    """Raise `SolverError` if `x` holds NaN or Inf."""
    if not bool(torch.isfinite(x).all()):
        raise SolverError(
            f"{solver}: {what} became non-finite (NaN/Inf) at iteration {iteration}. The inner "
            "Hessian or the outer gradient contains NaN/Inf, or the system is badly scaled. "
            "Check the losses at the given parameters, or add damping."
        )


def rhs_norm(b: torch.Tensor, *, solver: str) -> float:
    """$\\lVert b\\rVert$ with one host sync, raising `SolverError` if `b` holds NaN/Inf.

    A norm is finite exactly when every entry is (short of overflow), so the finiteness
    check costs no second synchronization.
    """
    norm = float(torch.linalg.vector_norm(b))
    if not math.isfinite(norm):
        check_finite(b, solver=solver, what="the right-hand side", iteration=0)
        raise SolverError(
            f"{solver}: the norm of the right-hand side overflows ({norm}); rescale the outer "
            "loss or use float64."
        )
    return norm


def resolve_solver(solver: AbstractSolver | str | None, *, call: str) -> AbstractSolver:
    """Turn the `solver=` argument of a public call into a solver object."""
    if isinstance(solver, AbstractSolver):
        return solver
    from .cg import CG
    from .exact import Exact
    from .identity import Identity
    from .neumann import Neumann

    if solver is None:
        return CG()
    if isinstance(solver, AbstractSolver):
        return solver
    shorthands: dict[str, Callable[[], AbstractSolver]] = {
        "cg": CG,
        "neumann": Neumann,
        "identity": Identity,
        "exact": Exact,
    }
    if isinstance(solver, str) and solver.lower() in shorthands:
        return shorthands[solver.lower()]()
    raise InputError(
        f"`{call}(solver=...)` received {solver!r}. Pass a solver object such as "
        "ig.CG(max_iter=50, tol=1e-8), ig.Neumann(terms=5, alpha=0.1), ig.Identity() or "
        f"ig.Exact(), or one of the shorthands {sorted(shorthands)}."
    )

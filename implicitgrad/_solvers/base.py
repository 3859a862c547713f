"""The solver contract: a matrix-free operator that says what it is in, a solution with
diagnostics out."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .._errors import ConvergenceWarning, InputError, SolverError, warn

__all__ = [
    "AbstractSolver",
    "LinearOperator",
    "Solution",
    "check_finite",
    "rhs_norm",
    "true_residual",
    "warn_unreachable_tol",
    "initial_residual",
    "residual_norm",
    "precision_hint",
]


@dataclass(frozen=True)
class LinearOperator:
    """A matrix-free square linear operator $A$ on flat vectors, tagged with its structure.

    This is what every solver receives. In [`hypergrad`][implicitgrad.hypergrad] $A$ is the
    inner Hessian $H = \\partial^2 f / \\partial\\theta^2$ (symmetric); in
    [`fixed_point_hypergrad`][implicitgrad.fixed_point_hypergrad] it is
    $I - (\\partial T/\\partial\\theta)^\\top$, symmetric only when $T$ is a gradient step.
    Solvers read the tags to refuse operators outside their assumptions (CG refuses a
    non-symmetric operator) instead of returning a wrong answer.

    **Fields:**

    - `matvec`: `v ↦ A v` for a flat vector `v` of length `size` (or, with `batch_size`, a
      `(batch_size, size)` matrix whose rows are the vectors of independent systems).
    - `size`: the dimension $n$.
    - `dtype`, `device`: those of the vectors `matvec` takes.
    - `symmetric`: whether $A$ is known to be symmetric (default `False`: unknown, so only
      solvers for general systems accept it).
    - `positive_definite`: `True` if $A$ is known to be positive definite, `False` if known
      not to be, `None` (default) if unknown. CG accepts `None` and detects negative
      curvature as it goes.
    - `batched_matvec`: optional `V ↦ (A Vᵀ)ᵀ` for a batch of vectors (rows) of one
      system, used to build dense matrices and sketches quickly.
    - `batch_size`: `None` for one system; $B$ for $B$ independent systems of the same size
      solved together (from `torch.func.vmap` or the `batched=True` form), whose vectors are
      the rows of a `(B, size)` matrix. Only solvers with `supports_batch` accept it.
    """

    matvec: Callable[[torch.Tensor], torch.Tensor]
    size: int
    dtype: torch.dtype
    device: torch.device
    symmetric: bool = False
    positive_definite: bool | None = None
    batched_matvec: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None)
    batch_size: int | None = None

    def materialize(self) -> torch.Tensor:
        """Build the dense $n \\times n$ matrix with $n$ matrix-vector products."""
        if self.batch_size is not None:
            raise InputError(
                "`LinearOperator.materialize()` builds one dense matrix, but this operator "
                f"holds {self.batch_size} independent systems."
            )
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

    - `value`: the approximate solution $x$ (a flat vector, or `(B, n)` for a batch).
    - `iterations`: matrix-vector products with $A$ spent on the solve (for a batch, the
      most any system needed; see `batch_iterations`).
    - `residual`: the true final relative residual $\\lVert A x - b\\rVert / \\lVert b\\rVert$
      of the returned `value`, or `None` when the solver does not compute it (fixed series
      such as `Identity`). For a batch, the largest over the systems.
    - `converged`: `True`/`False` for solvers with a stopping tolerance; `None` for solvers
      that by design run a fixed number of steps. For a batch, whether all converged.
    - `batch_residual`, `batch_iterations`, `batch_converged`: for a batch, one entry per
      system (`None` for a single system).
    - `preconditioner_products`: of `iterations`, the products spent building a
      preconditioner in this solve (0 without one, or when a previous build was reused).
    """

    value: torch.Tensor
    iterations: int
    residual: float | None
    converged: bool | None
    batch_residual: torch.Tensor | None = None
    batch_iterations: torch.Tensor | None = None
    batch_converged: torch.Tensor | None = None
    preconditioner_products: int = 0


# For the messages that say which solvers fit an operator a solver refuses.
_GENERAL = "ig.GMRES(), ig.BiCGStab(), ig.Neumann() or ig.Exact()"
_BATCHED = "ig.CG(), ig.Neumann() or ig.Identity()"


class AbstractSolver(abc.ABC):
    """Base class of the inverse-Hessian-vector-product solvers.

    **Contract.** A solver is a small frozen dataclass whose fields are its settings,
    validated in `__post_init__`. It implements one method,

    `solve(operator, b, x0=None) -> Solution`,

    which approximately solves $A x = b$ for the matrix-free
    [`LinearOperator`][implicitgrad.LinearOperator] `operator` and a flat right-hand side
    `b`, optionally starting from the guess `x0`. It must

    - first call `self.check_operator(operator)`, which refuses with
      [`InputError`][implicitgrad.InputError] an operator outside the solver's
      assumptions, as declared by the class attributes `requires_symmetric`,
      `requires_positive_definite` and `supports_batch`;
    - not change `b`;
    - raise [`SolverError`][implicitgrad.SolverError] where its answer would be wrong
      (NaN/Inf, breakdown, divergence);
    - report in `Solution.residual` the true relative residual of the value it returns (or
      `None` if it does not compute one), and warn with
      [`ConvergenceWarning`][implicitgrad.ConvergenceWarning] where it is merely imprecise.

    **Example:** a diagonal-only (Jacobi) approximation.

    ```python
    from dataclasses import dataclass
    import torch, implicitgrad as ig

    @dataclass(frozen=True)
    class Jacobi(ig.AbstractSolver):
        def solve(self, operator, b, x0=None):
            self.check_operator(operator)
            diag = operator.materialize().diagonal()
            return ig.Solution(value=b / diag, iterations=operator.size,
                               residual=None, converged=None)

    hg = ig.hypergrad(lambda t, p: ((t - p) ** 2).sum(), lambda t, p: t.sum(),
                      torch.ones(3), torch.ones(3), solver=Jacobi())
    ```
    """

    #: The solver is only correct for symmetric operators (CG, Nyström).
    requires_symmetric: ClassVar[bool] = False
    #: The solver is only correct for positive-definite operators; it refuses those tagged
    #: `positive_definite=False` (and detects negative curvature in the others, like CG).
    requires_positive_definite: ClassVar[bool] = False
    #: The solver accepts `operator.batch_size` (independent systems solved together).
    supports_batch: ClassVar[bool] = False

    def check_operator(self, operator: LinearOperator) -> None:
        """Raise `InputError` if `operator` is outside this solver's assumptions."""
        name = type(self).__name__
        if self.requires_symmetric and not operator.symmetric:
            raise InputError(
                f"`{name}` assumes a symmetric operator, but it received one not known to be "
                "symmetric (the fixed-point form's I - ∂T/∂θ is symmetric only when the update "
                "map is a gradient step). A symmetric solver could return a wrong answer here. "
                f"Use a solver for general systems: {_GENERAL}; or, if the update map T is "
                "a gradient step θ - α∇f, declare it with symmetric=True (fixed_point_hypergrad "
                "and fixed_point take it)."
            )
        if self.requires_positive_definite and operator.positive_definite is False:
            raise InputError(
                f"`{name}` needs a positive-definite operator, but it received one known not to "
                f"be. Use {_GENERAL}."
            )
        if operator.batch_size is not None and not self.supports_batch:
            raise InputError(
                f"`{name}` solves one system at a time, but it received {operator.batch_size} "
                "independent systems (from torch.func.vmap or batched=True). Use a solver "
                f"that solves a batch with one residual per system: {_BATCHED}; or loop over "
                "the problems."
            )

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
    check costs no second synchronization. For a batch `(B, n)` it is the largest row norm.
    """
    norms = torch.linalg.vector_norm(b, dim=-1)
    norm = float(norms.max()) if b.dim() > 1 else float(norms)
    if not math.isfinite(norm):
        check_finite(b, solver=solver, what="the right-hand side", iteration=0)
        raise SolverError(
            f"{solver}: the norm of the right-hand side overflows ({norm}); rescale the outer "
            "loss or use float64."
        )
    return norm


def true_residual(operator: LinearOperator, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """$\\lVert b - A x\\rVert / \\lVert b\\rVert$ computed with one product (per row for a batch).

    Rows with $b = 0$ report 0 (their solution is 0).
    """
    r = torch.linalg.vector_norm(b - operator.matvec(x), dim=-1)
    bn = torch.linalg.vector_norm(b, dim=-1)
    return torch.where(bn > 0, r / torch.where(bn > 0, bn, torch.ones_like(bn)), 0.0)


def warn_unreachable_tol(solver: str, tol: float, dtype: torch.dtype) -> None:
    """Warn when `tol` is below the relative accuracy `dtype` can represent."""
    eps = torch.finfo(dtype).eps
    if 0 < tol < eps:
        warn(
            f"{solver}(tol={tol:.1e}) asks for a relative residual below what {dtype} can "
            f"reach (machine epsilon {eps:.1e}); the solve cannot meet it and will report "
            "converged=False with its true residual. Use float64, or tol >= "
            f"{10 * eps:.0e}.",
            ConvergenceWarning,
        )


def residual_norm(r: torch.Tensor, *, solver: str, iteration: int) -> float:
    """$\\lVert r\\rVert$ of a residual $b - A x$ with one host sync, raising on NaN/Inf."""
    norm = float(torch.linalg.vector_norm(r))
    if not math.isfinite(norm):
        check_finite(r, solver=solver, what="a matrix-vector product", iteration=iteration)
        raise SolverError(
            f"{solver}: the norm of the residual overflows ({norm}) at iteration {iteration}; "
            "rescale the system or use float64."
        )
    return norm


def precision_hint(residual: float, dtype: torch.dtype) -> str:
    """The end of a non-convergence message: `.`, or a hint when the dtype is the limit."""
    eps = torch.finfo(dtype).eps
    if residual < math.sqrt(eps):
        return (
            f"; the residual is close to what {dtype} can resolve (machine epsilon "
            f"{eps:.1e}), so more iterations may not help: solve in float64."
        )
    return "."


def initial_residual(
    operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None, *, solver: str, tol: float
) -> Solution | tuple[torch.Tensor, torch.Tensor, int, float, float]:
    """The start every Krylov solver shares: `(x, r, products, |r|, |b|)` from the guess
    `x0`, or the finished `Solution` for $b = 0$."""
    b_norm = rhs_norm(b, solver=solver)
    if b_norm == 0.0:
        return Solution(torch.zeros_like(b), 0, 0.0, True)
    warn_unreachable_tol(solver, tol, b.dtype)
    if x0 is None:
        return torch.zeros_like(b), b.clone(), 0, b_norm, b_norm
    if x0.shape != b.shape:
        raise InputError(
            f"`{solver}.solve(x0=...)` must have the shape of b, {tuple(b.shape)}, got "
            f"{tuple(x0.shape)}."
        )
    x = x0.detach().to(dtype=b.dtype, device=b.device, copy=True)
    r = b - operator.matvec(x)
    return x, r, 1, residual_norm(r, solver=solver, iteration=1), b_norm

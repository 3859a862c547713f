"""BiCGStab for general (non-symmetric) systems."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._errors import ConvergenceWarning, InputError, SolverError, warn
from .base import (
    AbstractSolver,
    LinearOperator,
    Solution,
    check_finite,
    initial_residual,
    precision_hint,
    residual_norm,
)

__all__ = ["BiCGStab"]


@dataclass(frozen=True)
class BiCGStab(AbstractSolver):
    """Biconjugate gradient stabilized: a short-recurrence solver for non-symmetric systems.

    Solves $A x = b$ with BiCGStab (van der Vorst, *SIAM J. Sci. Stat. Comput.* 13(2), 1992;
    Algorithm 7.7 of Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., 2003).
    Each iteration takes a BiCG step along $p$ and then a one-dimensional minimal-residual
    step along $s$:

    $$\\alpha = \\frac{(\\hat r, r)}{(\\hat r, A p)}, \\quad s = r - \\alpha A p, \\quad
    \\omega = \\frac{(A s, s)}{(A s, A s)}, \\quad x \\leftarrow x + \\alpha p + \\omega s, \\quad
    r \\leftarrow s - \\omega A s,$$

    with the shadow residual $\\hat r = r_0$. It costs two matrix-vector products per
    iteration and stores a fixed handful of vectors, whatever the number of iterations:
    cheaper than [`GMRES`][implicitgrad.GMRES] per product and in memory, but its residual
    is not monotone and it can break down.

    **Arguments:**

    - `max_iter`: the most matrix-vector products to spend (default `100`), counting both
      products of each iteration and the residual checks; `iterations` never exceeds it.
      The last product is kept for the true residual, so at least 2 are needed to improve
      on the initial guess.
    - `tol`: relative-residual tolerance $\\lVert b - A x\\rVert / \\lVert b\\rVert$ (default
      `1e-6`).

    The reported `residual` is the true relative residual of the returned value. `x0`
    warm-starts the solve (one product for its residual).

    **Where this departs from the textbook algorithm, and why:**

    - *Honest residual.* The recursively updated residual drifts from $b - A x$ (visibly in
      float32). When it claims convergence, the true residual is recomputed with one
      product; if that is above `tol`, BiCGStab restarts from the true residual (with a
      fresh shadow residual $\\hat r$) instead of stopping. The last product of the
      `max_iter` budget is always kept for this check.
    - *Early exit at the half step.* As in the Templates book (Barrett et al., *Templates for
      the Solution of Linear Systems*, SIAM 1994, Section 2.3.8), the iteration stops after
      the BiCG half step when $\\lVert s\\rVert$ is already small enough, saving the second
      product; when the budget runs out at the half step, the half step is kept if it lowers
      the residual.
    - *One host synchronization per product*, which serves both the breakdown checks and
      the convergence test.

    !!! warning
        BiCGStab breaks down when $(\\hat r, r)$, $(\\hat r, A p)$ or $\\omega$ vanishes (for
        example when $A$ is close to a rotation, so that $(x, A x) \\approx 0$). It then
        raises [`SolverError`][implicitgrad.SolverError], naming the quantity; use
        [`GMRES`][implicitgrad.GMRES], which cannot break down on a nonsingular system.

    **Example:**

    ```python
    import torch, implicitgrad as ig
    A = torch.tensor([[2.0, 1.0], [-1.0, 3.0]], dtype=torch.float64)  # not symmetric
    op = ig.LinearOperator(matvec=lambda v: A @ v, size=2, dtype=A.dtype, device=A.device)
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    sol = ig.BiCGStab(tol=1e-12).solve(op, b)
    assert sol.converged and sol.residual <= 1e-12
    assert torch.allclose(sol.value, torch.linalg.solve(A, b))
    ```
    """

    max_iter: int = 100
    tol: float = 1e-6

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_iter, bool)
            or not isinstance(self.max_iter, int)
            or self.max_iter < 1
        ):
            raise InputError(
                f"`BiCGStab(max_iter=...)` must be a positive int, got {self.max_iter!r}."
            )
        if not (isinstance(self.tol, int | float) and self.tol >= 0):
            raise InputError(f"`BiCGStab(tol=...)` must be a number >= 0, got {self.tol!r}.")

    def solve(
        self, operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> Solution:
        self.check_operator(operator)
        start = initial_residual(operator, b, x0, solver="BiCGStab", tol=self.tol)
        if isinstance(start, Solution):
            return start
        x, r, iterations, r_norm, b_norm = start
        residual = r_norm / b_norm
        step = 0
        # A cycle needs one product for the half step and keeps one for the true residual.
        while residual > self.tol and iterations + 2 <= self.max_iter:
            iterations, step = self._cycle(operator, x, r, r_norm, b_norm, iterations, step)
            r = b - operator.matvec(x)
            iterations += 1
            r_norm = residual_norm(r, solver="BiCGStab", iteration=iterations)
            residual = r_norm / b_norm
        converged = residual <= self.tol
        if not converged:
            warn(
                f"BiCGStab did not converge: relative residual {residual:.3e} > tol "
                f"{self.tol:.1e} after {iterations} matrix-vector products "
                f"(max_iter={self.max_iter}) in {b.dtype}. The solution is approximate. Raise "
                "max_iter, loosen tol, or use ig.GMRES(), whose residual never increases"
                + precision_hint(residual, b.dtype),
                ConvergenceWarning,
            )
        return Solution(x, iterations, residual, converged)

    def _cycle(
        self,
        operator: LinearOperator,
        x: torch.Tensor,
        r: torch.Tensor,
        r_norm: float,
        b_norm: float,
        iterations: int,
        step: int,
    ) -> tuple[int, int]:
        """BiCGStab from the residual `r` of `x`, updating `x` in place, until the recursive
        residual meets `tol` or one product of the budget is left."""
        r_hat = r
        p = r
        rho = torch.dot(r_hat, r)
        while iterations + 2 <= self.max_iter:
            step += 1
            v = operator.matvec(p)
            iterations += 1
            rv = torch.dot(r_hat, v)
            alpha = rho / rv
            s = r - alpha * v
            rv_value, s_norm = torch.stack([rv, torch.linalg.vector_norm(s)]).tolist()
            if not math.isfinite(rv_value):
                check_finite(
                    v, solver="BiCGStab", what="a matrix-vector product", iteration=iterations
                )
            _check_nonzero(
                rv_value,
                "(r_hat, v) with v = A p, the denominator of alpha",
                "the shadow residual r_hat is orthogonal to A p (as for an operator close to a "
                "rotation, where (x, A x) is about 0, or a singular one)",
                step,
            )
            if not math.isfinite(s_norm):
                check_finite(s, solver="BiCGStab", what="the residual", iteration=iterations)
            if s_norm / b_norm <= self.tol or iterations + 2 > self.max_iter:
                if s_norm < r_norm:
                    x.add_(alpha * p)
                break
            t = operator.matvec(s)
            iterations += 1
            tt = torch.dot(t, t)
            omega = torch.dot(t, s) / tt
            x.add_(alpha * p + omega * s)
            r = s - omega * t
            rho_next = torch.dot(r_hat, r)
            tt_value, omega_value, r_norm, rho_value = torch.stack(
                [tt, omega, torch.linalg.vector_norm(r), rho_next]
            ).tolist()
            if not math.isfinite(tt_value):
                check_finite(
                    t, solver="BiCGStab", what="a matrix-vector product", iteration=iterations
                )
            if tt_value == 0.0:
                raise SolverError(
                    f"BiCGStab broke down at iteration {step}: A s = 0 for a nonzero s, so the "
                    "operator is singular. Check that the system is nonsingular: regularize "
                    "the inner problem, or add damping to it."
                )
            _check_nonzero(
                omega_value,
                "omega = (t, s) / (t, t) with t = A s",
                "A s is orthogonal to s, so the minimal-residual step makes no progress and "
                "the next rho would vanish (the symmetric part of the operator is indefinite)",
                step,
            )
            if not math.isfinite(r_norm):
                check_finite(r, solver="BiCGStab", what="the residual", iteration=iterations)
            if r_norm / b_norm <= self.tol:
                break
            _check_nonzero(
                rho_value,
                "rho = (r_hat, r)",
                "the shadow residual r_hat has become orthogonal to the residual",
                step + 1,
            )
            beta = (rho_next / rho) * (alpha / omega)
            p = r + beta * (p - omega * v)
            rho = rho_next
        return iterations, step


def _check_nonzero(value: float, quantity: str, why: str, step: int) -> None:
    """Raise the breakdown error when a quantity BiCGStab divides by is zero or non-finite."""
    if value == 0.0 or not math.isfinite(value):
        raise SolverError(
            f"BiCGStab broke down at iteration {step}: {quantity} is {value!r}; {why}. The "
            "recurrence cannot continue. Use ig.GMRES(), which cannot break down on a "
            "nonsingular system."
        )

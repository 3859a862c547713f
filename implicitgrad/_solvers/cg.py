"""Conjugate gradient on the (symmetric) inner Hessian."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._errors import ConvergenceWarning, InputError, SolverError, warn
from .base import AbstractSolver, LinearOperator, Solution, check_finite, rhs_norm

__all__ = ["CG"]


@dataclass(frozen=True)
class CG(AbstractSolver):
    """Conjugate gradient: the default solver.

    Solves $(H + \\lambda I)\\,x = b$ with the method of conjugate gradients (Hestenes &
    Stiefel, 1952), using only Hessian-vector products. The inner Hessian is symmetric, so
    CG is applied to it directly (no normal equations, which would square the condition
    number). It stops when the relative residual
    $\\lVert (H + \\lambda I)x - b\\rVert / \\lVert b\\rVert$ falls below `tol`, or after
    `max_iter` products. On a positive-definite $n \\times n$ system it is exact (up to
    rounding) after at most $n$ iterations.

    **Arguments:**

    - `max_iter`: the most Hessian-vector products to spend (default 100).
    - `tol`: relative-residual tolerance (default `1e-6`).
    - `damping`: $\\lambda \\ge 0$ added to the diagonal; it regularizes nearly singular
      Hessians at the price of bias (default `0.0`).

    The reported residual is CG's recursively updated residual, which equals the true one up
    to rounding.

    !!! warning
        CG needs a positive-definite Hessian. If it meets a direction with
        $p^\\top H p \\le 0$ (the given $\\theta$ is not a strict local minimum, or $H$ is
        singular) it raises [`SolverError`][implicitgrad.SolverError]: add `damping`, solve
        the inner problem further, or use [`Exact`][implicitgrad.Exact].

    **Example:**

    ```python
    import torch, implicitgrad as ig
    inner = lambda t, p: 0.5 * (t ** 2).sum() * 3.0 - (t * p).sum()   # θ* = φ / 3
    outer = lambda t, p: t.sum()
    hg = ig.hypergrad(inner, outer, torch.ones(4) / 3, torch.ones(4),
                      solver=ig.CG(max_iter=10, tol=1e-10))
    assert torch.allclose(hg, torch.full((4,), 1 / 3))
    ```
    """

    max_iter: int = 100
    tol: float = 1e-6
    damping: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise InputError(f"`CG(max_iter=...)` must be a positive int, got {self.max_iter!r}.")
        if not self.tol >= 0:
            raise InputError(f"`CG(tol=...)` must be >= 0, got {self.tol!r}.")
        if not self.damping >= 0:
            raise InputError(
                f"`CG(damping=...)` must be >= 0, got {self.damping!r}. Negative damping "
                "would make the system indefinite."
            )

    def solve(
        self, operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> Solution:
        def matvec(v: torch.Tensor) -> torch.Tensor:
            out = operator.matvec(v)
            return out + self.damping * v if self.damping else out

        b_norm = rhs_norm(b, solver="CG")
        if b_norm == 0.0:
            return Solution(torch.zeros_like(b), 0, 0.0, True)
        iterations = 0
        if x0 is None:
            x = torch.zeros_like(b)
            r = b.clone()
        else:
            x = x0.detach().clone()
            r = b - matvec(x)
            iterations = 1
        p = r.clone()
        rs = torch.dot(r, r)
        residual = float(rs.sqrt()) / b_norm
        while residual > self.tol and iterations < self.max_iter:
            hp = matvec(p)
            iterations += 1
            php = torch.dot(p, hp)
            step = rs / php
            # In place (no new iterates per step), rounding exactly as `x + step * p`.
            x.add_(step * p)
            r.sub_(step * hp)
            rs_new = torch.dot(r, r)
            # A single host sync per iteration serves the breakdown and convergence checks;
            # on breakdown the update above is discarded by the raise.
            php_value, rs_value = torch.stack([php, rs_new]).tolist()
            if not php_value > 0.0:
                if not math.isfinite(php_value):
                    check_finite(
                        hp, solver="CG", what="a Hessian-vector product", iteration=iterations
                    )
                raise SolverError(
                    f"CG broke down at iteration {iterations}: found curvature "
                    f"p^T H p = {php_value:.3e} <= 0, so the Hessian is not positive definite "
                    "at the given inner parameters (not a strict local minimum, or singular). "
                    "Fix: solve the inner problem further, add damping (ig.CG(damping=1e-3)), "
                    "or use ig.Exact()."
                )
            if not math.isfinite(rs_value):
                check_finite(r, solver="CG", what="the residual", iteration=iterations)
            residual = math.sqrt(rs_value) / b_norm
            if residual <= self.tol:
                break
            p.mul_(rs_new / rs).add_(r)
            rs = rs_new
        converged = residual <= self.tol
        if not converged:
            warn(
                f"CG did not converge: relative residual {residual:.3e} > tol {self.tol:.1e} "
                f"after max_iter={self.max_iter} Hessian-vector products. The hypergradient is "
                "approximate; raise max_iter, loosen tol, or add damping.",
                ConvergenceWarning,
            )
        return Solution(x, iterations, residual, converged)

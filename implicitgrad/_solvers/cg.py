"""Conjugate gradient on the (symmetric) inner Hessian."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .._errors import ConvergenceWarning, InputError, SolverError, warn
from .._preconditioners.base import AbstractPreconditioner, BuiltPreconditioner
from .base import (
    AbstractSolver,
    LinearOperator,
    Solution,
    check_finite,
    rhs_norm,
    warn_unreachable_tol,
)

__all__ = ["CG"]

# The recursively updated residual of CG drifts from the true one once it nears the rounding
# floor eps·|A|·|x|/|b| (Greenbaum, 1997, ch. 7). Below this multiple of that floor the
# residual is recomputed from its definition before it is reported.
_DRIFT_FACTOR = 1e3


def _recording(matvec, preconditioner: AbstractPreconditioner):
    """`matvec` that also hands each product to the preconditioner (for the next solve)."""

    def recorded(v: torch.Tensor) -> torch.Tensor:
        av = matvec(v)
        preconditioner.record(v, av)
        return av

    return recorded


@dataclass(frozen=True)
class CG(AbstractSolver):
    """Conjugate gradient: the default solver of the root form.

    Solves $(H + \\lambda I)\\,x = b$ with the method of conjugate gradients (Hestenes &
    Stiefel, 1952), using only Hessian-vector products. The inner Hessian is symmetric, so
    CG is applied to it directly (no normal equations, which would square the condition
    number). It stops when the relative residual
    $\\lVert (H + \\lambda I)x - b\\rVert / \\lVert b\\rVert$ falls below `tol`, or after
    `max_iter` products. On a positive-definite $n \\times n$ system it is exact (up to
    rounding) after at most $n$ iterations.

    **Arguments:**

    - `max_iter`: the most Hessian-vector products to spend on iterations (default 100);
      one more is spent where the residual must be recomputed (see below).
    - `tol`: relative-residual tolerance (default `1e-6`). `tol=0` asks for a fixed budget
      of exactly `max_iter` products: the solve then reports `converged=False` with its
      residual but issues no `ConvergenceWarning`.
    - `damping`: $\\lambda \\ge 0$ added to the diagonal; it regularizes nearly singular
      Hessians at the price of bias (default `0.0`).
    - `preconditioner`: an
      [`AbstractPreconditioner`][implicitgrad.AbstractPreconditioner] such as
      [`NystromPreconditioner`][implicitgrad.NystromPreconditioner] or
      [`DiagonalPreconditioner`][implicitgrad.DiagonalPreconditioner], or `None` (default).
      With one, CG is preconditioned CG (Saad, *Iterative Methods for Sparse Linear
      Systems*, 2003, Algorithm 9.1): the same answer in fewer iterations when
      $M^{-1}A$ is better conditioned than $A$. The residual it reports and stops on is
      still the true relative residual $\\lVert Ax - b\\rVert/\\lVert b\\rVert$, not the
      preconditioned one. The products spent building the preconditioner are counted in
      `Solution.iterations` (and reported apart in `Solution.preconditioner_products`);
      `max_iter` bounds the iterations only. A preconditioner with `refresh_every > 1` is
      built once and reused by the next solves (pass the same solver object every outer
      step, with `warm_start=info`);
      [`RecycledPreconditioner`][implicitgrad.RecycledPreconditioner] is built from the
      products of the earlier solves. Not available for batches of systems.

    **Departures from the textbook algorithm.** CG's recursively updated residual drifts
    from the true residual once it nears the rounding floor
    $\\epsilon\\lVert A\\rVert\\lVert x\\rVert/\\lVert b\\rVert$ (estimated from the step
    lengths CG computes anyway), so a convergence claimed below that level is checked with
    one more product, and if the true residual misses `tol` the iteration restarts from it
    (residual replacement; van der Vorst & Ye, 2000). A solve whose budget runs out at the
    floor reports the floor estimate rather than the drifted recursive value. Above the floor
    the recursive residual is the true one up to rounding. A `tol` below the dtype's
    machine epsilon is warned about up front. CG refuses a non-symmetric operator (a
    fixed-point Jacobian): it would converge to a wrong answer there.

    Solving a batch of independent systems (`torch.func.vmap`, `batched=True`) runs one
    CG per system in lockstep; each stops on its own residual.

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
                      solver=ig.CG(max_iter=10, tol=1e-6))
    assert torch.allclose(hg, torch.full((4,), 1 / 3))
    ```
    """

    max_iter: int = 100
    tol: float = 1e-6
    damping: float = 0.0
    preconditioner: AbstractPreconditioner | None = None

    requires_symmetric = True
    requires_positive_definite = True
    supports_batch = True

    def __post_init__(self) -> None:
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int):
            raise InputError(f"`CG(max_iter=...)` must be a positive int, got {self.max_iter!r}.")
        if self.max_iter < 1:
            raise InputError(f"`CG(max_iter=...)` must be a positive int, got {self.max_iter!r}.")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise InputError(f"`CG(tol=...)` must be a float >= 0, got {self.tol!r}.")
        if not (isinstance(self.damping, (int, float)) and 0 <= self.damping < math.inf):
            raise InputError(
                f"`CG(damping=...)` must be a finite float >= 0, got {self.damping!r}. Negative "
                "damping would make the system indefinite."
            )
        if self.preconditioner is not None and not isinstance(
            self.preconditioner, AbstractPreconditioner
        ):
            raise InputError(
                "`CG(preconditioner=...)` must be an ig.AbstractPreconditioner such as "
                "ig.NystromPreconditioner(rank=20) or ig.DiagonalPreconditioner(probes=10), or "
                f"None, got {type(self.preconditioner).__name__}."
            )

    def _matvec(self, operator: LinearOperator):
        if not self.damping:
            return operator.matvec
        return lambda v: operator.matvec(v) + self.damping * v

    def _damped(self, operator: LinearOperator) -> LinearOperator:
        """The operator of the system CG solves, damping included (for preconditioners)."""
        if not self.damping:
            return operator
        batched = operator.batched_matvec
        return dataclasses.replace(
            operator,
            matvec=self._matvec(operator),
            batched_matvec=None
            if batched is None
            else (lambda vs: batched(vs) + self.damping * vs),
        )

    def solve(
        self, operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> Solution:
        self.check_operator(operator)
        warn_unreachable_tol("CG", self.tol, b.dtype)
        if operator.batch_size is not None:
            if self.preconditioner is not None:
                raise InputError(
                    f"`CG(preconditioner=...)` solves one system at a time, but it received "
                    f"{operator.batch_size} independent systems (torch.func.vmap or "
                    "batched=True). Drop the preconditioner for batches, or loop over the "
                    "problems."
                )
            return self._solve_batch(operator, b, x0)
        b_norm = rhs_norm(b, solver="CG")
        if b_norm == 0.0:
            return Solution(torch.zeros_like(b), 0, 0.0, True)
        matvec = self._matvec(operator)
        built, built_products = None, 0
        if self.preconditioner is not None:
            built, built_products = self.preconditioner.prepare(self._damped(operator))
            if self.preconditioner.records_products:
                matvec = _recording(matvec, self.preconditioner)
        x = torch.zeros_like(b) if x0 is None else x0.detach().clone()
        iterations = 0
        r = b.clone() if x0 is None else b - matvec(x)
        iterations += x0 is not None
        plain = built is None or built.is_identity
        solution = self._iterate(matvec, b, x, r, b_norm, iterations, None if plain else built)
        if self.preconditioner is None:
            return solution
        self.preconditioner.observe(solution.iterations)
        return dataclasses.replace(
            solution,
            iterations=solution.iterations + built_products,
            preconditioner_products=built_products,
        )

    def _iterate(
        self,
        matvec,
        b: torch.Tensor,
        x: torch.Tensor,
        r: torch.Tensor,
        b_norm: float,
        iterations: int,
        precondition: BuiltPreconditioner | None = None,
    ) -> Solution:
        """CG from the iterate `x` with residual `r`, with residual replacement at the end.

        With `precondition` ($M^{-1}$) it is preconditioned CG: the directions are
        $M^{-1}$-conjugated and $z = M^{-1}r$ takes the place of $r$ in the step lengths
        ($r^\\top z$ for $r^\\top r$), while the stopping test keeps the true $\\lVert r\\rVert$.
        """
        eps = torch.finfo(x.dtype).eps
        replaced = False
        while True:
            if precondition is None:
                p = r.clone()
                rs_value = rz_value = float(torch.dot(r, r))
            else:
                p = precondition(r)
                rs_value, rz_value = torch.stack((torch.dot(r, r), torch.dot(r, p))).tolist()
            residual = math.sqrt(rs_value) / b_norm
            # max 1/α_k = pᵀAp / rᵀr: a lower bound of λmax(A), since 1/α_k is at most the
            # diagonal of the Lanczos matrix (Golub & Van Loan, §11.3), for free. With a
            # preconditioner the Rayleigh quotient pᵀAp / pᵀp plays that part.
            curvature = 0.0
            while residual > self.tol and iterations < self.max_iter:
                hp = matvec(p)
                iterations += 1
                # Host syncs per iteration: the curvature (breakdown check, step length as a
                # Python float for fused in-place updates) and the new residual.
                if precondition is None:
                    php_value = float(torch.dot(p, hp))
                    pp_value = rs_value
                else:
                    php_value, pp_value = torch.stack((torch.dot(p, hp), torch.dot(p, p))).tolist()
                if not php_value > 0.0:
                    if not math.isfinite(php_value):
                        check_finite(
                            hp, solver="CG", what="a Hessian-vector product", iteration=iterations
                        )
                    raise SolverError(
                        f"CG broke down at iteration {iterations}: found curvature "
                        f"p^T H p = {php_value:.3e} <= 0, so the Hessian is not positive "
                        "definite at the given inner parameters (not a strict local minimum, or "
                        "singular). Fix: solve the inner problem further, add damping "
                        "(ig.CG(damping=1e-3)), or use ig.Exact()."
                    )
                step = rz_value / php_value
                x.add_(p, alpha=step)
                r.add_(hp, alpha=-step)
                if precondition is None:
                    z = r
                    rs_new_value = rz_new_value = float(torch.dot(r, r))
                else:
                    z = precondition(r)
                    rs_new_value, rz_new_value = torch.stack(
                        (torch.dot(r, r), torch.dot(r, z))
                    ).tolist()
                if not math.isfinite(rs_new_value + rz_new_value):
                    check_finite(r, solver="CG", what="the residual", iteration=iterations)
                curvature = max(curvature, php_value / pp_value)
                residual = math.sqrt(rs_new_value) / b_norm
                if residual <= self.tol:
                    break
                p.mul_(rz_new_value / rz_value).add_(z)
                rs_value, rz_value = rs_new_value, rz_new_value
            floor = eps * curvature * float(torch.linalg.vector_norm(x)) / b_norm
            if residual > _DRIFT_FACTOR * floor:
                break
            if residual > self.tol and not replaced:
                # The budget ran out at the rounding floor: report the floor, an honest size
                # of the true residual, rather than spend a product to measure it.
                residual = max(residual, floor)
                break
            # A claimed convergence near the floor is checked against the true residual.
            r = b - matvec(x)
            iterations += 1
            residual = float(torch.linalg.vector_norm(r)) / b_norm
            if residual <= self.tol or replaced or iterations >= self.max_iter:
                break
            replaced = True
        converged = residual <= self.tol
        if not converged and self.tol > 0:
            warn(
                f"CG did not converge: relative residual {residual:.3e} > tol {self.tol:.1e} "
                f"after {iterations} Hessian-vector products (max_iter={self.max_iter}). The "
                "hypergradient is approximate; raise max_iter, loosen tol, or add damping.",
                ConvergenceWarning,
            )
        return Solution(x, iterations, residual, converged)

    def _solve_batch(
        self, operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None
    ) -> Solution:
        """One CG per row of `b`, in lockstep; a row stops updating once it has converged."""
        rhs_norm(b, solver="CG")
        matvec = self._matvec(operator)
        b_norms = torch.linalg.vector_norm(b, dim=1)
        safe = torch.where(b_norms > 0, b_norms, torch.ones_like(b_norms))
        x = torch.zeros_like(b) if x0 is None else x0.detach().clone()
        r = b.clone() if x0 is None else b - matvec(x)
        iterations = int(x0 is not None)
        row_iterations = torch.full((b.shape[0],), iterations, dtype=torch.long)
        p = r.clone()
        rs = (r * r).sum(1)
        active = (rs.sqrt() / safe > self.tol) & (b_norms > 0)
        while iterations < self.max_iter and bool(active.any()):
            hp = matvec(p)
            iterations += 1
            php = (p * hp).sum(1)
            bad = active & ~(php > 0)
            if bool(bad.any()):
                row = int(bad.nonzero()[0])
                check_finite(hp[row], solver="CG", what="a Hessian-vector product", iteration=1)
                raise SolverError(
                    f"CG broke down at iteration {iterations} on system {row} of the batch: "
                    f"found curvature p^T H p = {float(php[row]):.3e} <= 0, so that Hessian is "
                    "not positive definite. Fix: solve that inner problem further, or add "
                    "damping (ig.CG(damping=1e-3))."
                )
            step = torch.where(active, rs / torch.where(active, php, 1.0), 0.0)
            x.addcmul_(step[:, None], p)
            r.addcmul_(step[:, None], hp, value=-1.0)
            rs_new = (r * r).sum(1)
            row_iterations += active.long()
            active = active & (rs_new.sqrt() / safe > self.tol)
            beta = torch.where(active, rs_new / torch.where(rs > 0, rs, 1.0), 0.0)
            p = r + beta[:, None] * p
            rs = rs_new
        row_residual = torch.linalg.vector_norm(b - matvec(x), dim=1) / safe
        check_finite(row_residual, solver="CG", what="the residual", iteration=iterations)
        row_converged = row_residual <= self.tol
        residual = float(row_residual.max())
        converged = bool(row_converged.all())
        if not converged:
            bad_rows = (~row_converged).nonzero().flatten().tolist()
            warn(
                f"CG did not converge on {len(bad_rows)} of {b.shape[0]} systems of the batch "
                f"(first: system {bad_rows[0]}, relative residual "
                f"{float(row_residual[bad_rows[0]]):.3e} > tol {self.tol:.1e}) after "
                f"max_iter={self.max_iter}. Raise max_iter, loosen tol, or add damping.",
                ConvergenceWarning,
            )
        return Solution(
            x,
            iterations + 1,
            residual,
            converged,
            batch_residual=row_residual,
            batch_iterations=row_iterations + 1,
            batch_converged=row_converged,
        )

"""Restarted GMRES for general (non-symmetric) systems."""

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

__all__ = ["GMRES"]


@dataclass(frozen=True)
class GMRES(AbstractSolver):
    """Restarted GMRES: the solver for general, non-symmetric systems.

    Solves $A x = b$ for any nonsingular matrix-free $A$ with the generalized minimal
    residual method (Saad & Schultz, *SIAM J. Sci. Stat. Comput.* 7(3), 1986; Algorithms 6.9
    and 6.11 of Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., 2003). Each
    cycle builds an orthonormal basis $V_k$ of the Krylov space
    $\\mathcal K_k(A, r_0) = \\operatorname{span}\\{r_0, A r_0, \\dots, A^{k-1} r_0\\}$ by
    the Arnoldi process, $A V_k = V_{k+1} \\bar H_k$, and picks the iterate that minimizes
    the residual over it,

    $$x_k = x_0 + V_k y_k, \\qquad
    y_k = \\arg\\min_y \\lVert \\beta e_1 - \\bar H_k y \\rVert, \\qquad
    \\beta = \\lVert r_0\\rVert,$$

    solved incrementally with Givens rotations. After `restart` steps the cycle restarts from
    the current iterate, which bounds memory at `restart + 1` vectors of size $n$. This is
    the solver for `fixed_point_hypergrad`, whose operator
    $I - (\\partial T/\\partial\\theta)^\\top$ is not symmetric unless $T$ is a gradient
    step. Unlike [`BiCGStab`][implicitgrad.BiCGStab] it cannot break down on a nonsingular
    system, and its residual never increases.

    **Arguments:**

    - `max_iter`: the most matrix-vector products to spend, in total over all cycles and
      including the residual checks (default `100`). `iterations` never exceeds it; since
      the last product is kept for the true residual, at least 2 are needed to improve on
      the initial guess.
    - `restart`: the Krylov dimension of one cycle (default `20`). A larger value converges
      more reliably on strongly non-normal systems, at the cost of `restart + 1` stored
      vectors and $O(\\text{restart}\\cdot n)$ work per product.
    - `tol`: relative-residual tolerance $\\lVert b - A x\\rVert / \\lVert b\\rVert$ (default
      `1e-6`).

    The reported `residual` is the true relative residual of the returned value, computed
    with a matrix-vector product, not the Givens estimate (see below). `x0` warm-starts the
    solve (one product for its residual).

    **Where this departs from the textbook algorithm, and why:**

    - *Honest residual.* The Givens estimate $|g_{k+1}|$ of the residual assumes $V_{k+1}$
      is exactly orthonormal, and it drifts from $\\lVert b - A x_k\\rVert$ in floating point
      (in float32 it can fall orders of magnitude below the true residual). When it claims
      convergence, the true residual is recomputed with one product; if that is above `tol`,
      GMRES restarts from the true residual instead of stopping. The same product serves as
      the residual of the next cycle, so a restart costs nothing extra, and the last product
      of the `max_iter` budget is always kept for it.
    - *Reorthogonalization.* Arnoldi orthogonalizes with modified Gram–Schmidt (Saad,
      Algorithm 6.2), then always once more ("twice is enough": Giraud, Langou & Rozložník,
      *Comput. Math. Appl.* 50, 2005). The second pass is a classical one (two
      matrix-vector operations with $V$ instead of $2j$ dot products and updates): after a
      first pass the remaining components are at rounding level, where classical and modified
      Gram–Schmidt are equally accurate. It runs unconditionally, since the usual test for
      whether it is needed would cost a host synchronization.
    - *One host synchronization per product.* The Hessenberg column is moved to the host in
      one transfer; the Givens rotations, the convergence test and the triangular solve run
      there in float64, whatever the dtype of the operator.
    - A cycle never exceeds $n$ steps (the Krylov space is then all of $\\mathbb R^n$), and
      it ends early when the new Arnoldi vector is at rounding level of the product ("lucky
      breakdown": the Krylov space is invariant, so the cycle's iterate is exact).

    !!! warning
        Restarted GMRES can stagnate on strongly non-normal systems when `restart` is small;
        the [`ConvergenceWarning`][implicitgrad.ConvergenceWarning] then suggests raising it.
        If the least-squares problem becomes singular (the images $A v$ of the Krylov basis
        are linearly dependent: $A$ is singular), it raises
        [`SolverError`][implicitgrad.SolverError].

    **Example:**

    ```python
    import torch, implicitgrad as ig
    A = torch.tensor([[2.0, 1.0], [-1.0, 3.0]], dtype=torch.float64)  # not symmetric
    op = ig.LinearOperator(matvec=lambda v: A @ v, size=2, dtype=A.dtype, device=A.device)
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    sol = ig.GMRES(tol=1e-12).solve(op, b)
    assert sol.converged and sol.residual <= 1e-12 and sol.iterations <= 3
    assert torch.allclose(sol.value, torch.linalg.solve(A, b))
    ```
    """

    max_iter: int = 100
    restart: int = 20
    tol: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("max_iter", "restart"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"`GMRES({name}=...)` must be a positive int, got {value!r}.")
        if not (isinstance(self.tol, int | float) and self.tol >= 0):
            raise InputError(f"`GMRES(tol=...)` must be a number >= 0, got {self.tol!r}.")

    def solve(
        self, operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> Solution:
        self.check_operator(operator)
        start = initial_residual(operator, b, x0, solver="GMRES", tol=self.tol)
        if isinstance(start, Solution):
            return start
        x, r, iterations, beta, b_norm = start
        residual = beta / b_norm
        cycle = min(self.restart, operator.size)
        basis = torch.empty((cycle + 1, b.numel()), dtype=b.dtype, device=b.device)
        while residual > self.tol:
            # The last product of the budget is kept for the true residual.
            steps = min(cycle, self.max_iter - iterations - 1)
            if steps < 1:
                break
            basis[0] = r / beta
            correction, iterations = self._cycle(operator, basis, beta, b_norm, steps, iterations)
            x.add_(correction)
            # Not `true_residual()`: the residual vector doubles as the next cycle's start.
            r = b - operator.matvec(x)
            iterations += 1
            beta = residual_norm(r, solver="GMRES", iteration=iterations)
            residual = beta / b_norm
        converged = residual <= self.tol
        if not converged:
            warn(
                f"GMRES did not converge: relative residual {residual:.3e} > tol "
                f"{self.tol:.1e} after {iterations} matrix-vector products "
                f"(max_iter={self.max_iter}, restart={self.restart}) in {b.dtype}. The "
                "solution is approximate. Raise max_iter or restart, or loosen tol"
                + precision_hint(residual, b.dtype),
                ConvergenceWarning,
            )
        return Solution(x, iterations, residual, converged)

    def _cycle(
        self,
        operator: LinearOperator,
        basis: torch.Tensor,
        beta: float,
        b_norm: float,
        steps: int,
        iterations: int,
    ) -> tuple[torch.Tensor, int]:
        """One GMRES cycle from `basis[0]`; returns the correction $V_k y_k$."""
        eps = torch.finfo(basis.dtype).eps
        g = [beta] + [0.0] * steps  # the rotated right-hand side β e₁
        columns: list[list[float]] = []  # the columns of the triangular factor R
        cos: list[float] = []
        sin: list[float] = []
        for j in range(steps):
            product = operator.matvec(basis[j])
            iterations += 1
            w = product.clone()
            coefficients = []
            # Modified Gram-Schmidt (Saad, Algorithm 6.2).
            for i in range(j + 1):
                h = torch.dot(w, basis[i])
                w.sub_(h * basis[i])
                coefficients.append(h)
            # The one reorthogonalization ("twice is enough"), as a classical pass.
            again = basis[: j + 1] @ w
            w.sub_(again @ basis[: j + 1])
            h_next = torch.linalg.vector_norm(w)
            column = (
                torch.cat(
                    [
                        torch.stack(coefficients) + again,
                        torch.stack([h_next, torch.linalg.vector_norm(product)]),
                    ]
                )
                .double()
                .tolist()
            )
            product_norm = column.pop()
            if not all(math.isfinite(value) for value in column + [product_norm]):
                check_finite(
                    product, solver="GMRES", what="a matrix-vector product", iteration=iterations
                )
                raise SolverError(
                    f"GMRES: the Arnoldi process overflowed at iteration {iterations} (the "
                    "products are finite but their norms are not representable). Rescale the "
                    "system or use float64."
                )
            h_value = column[j + 1]
            # Givens rotations (Saad, Section 6.5.3) on the new Hessenberg column.
            for i in range(j):
                a, c = column[i], column[i + 1]
                column[i] = cos[i] * a + sin[i] * c
                column[i + 1] = -sin[i] * a + cos[i] * c
            a, c = column[j], column[j + 1]
            radius = math.hypot(a, c)
            if radius == 0.0:
                raise SolverError(
                    f"GMRES broke down at iteration {iterations}: the images A v of the Krylov "
                    "basis are linearly dependent, so the operator is singular and the "
                    "least-squares problem has no unique solution. Check that the system is "
                    "nonsingular: regularize the inner problem, or add damping to it."
                )
            cos.append(a / radius)
            sin.append(c / radius)
            column[j] = radius
            g[j + 1] = -sin[j] * g[j]
            g[j] = cos[j] * g[j]
            columns.append(column[: j + 1])
            # A new Arnoldi vector at rounding level of the product means the Krylov space is
            # invariant ("lucky breakdown"): the iterate is exact, and normalizing the vector
            # would only amplify rounding noise.
            if abs(g[j + 1]) / b_norm <= self.tol or h_value <= eps * product_norm:
                break
            if j + 1 < steps:
                basis[j + 1] = w / h_next
        k = len(columns)
        triangle = torch.zeros((k, k), dtype=torch.float64)
        for col, entries in enumerate(columns):
            triangle[: col + 1, col] = torch.tensor(entries, dtype=torch.float64)
        rhs = torch.tensor(g[:k], dtype=torch.float64).unsqueeze(1)
        y = torch.linalg.solve_triangular(triangle, rhs, upper=True).squeeze(1)
        y = y.to(dtype=basis.dtype, device=basis.device)
        return y @ basis[:k], iterations

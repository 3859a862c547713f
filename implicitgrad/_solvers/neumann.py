"""Truncated Neumann series (Richardson iteration) for the inverse Hessian."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._errors import InputError, SolverError
from .base import AbstractSolver, LinearOperator, Solution, check_finite, rhs_norm, true_residual

__all__ = ["Neumann"]


@dataclass(frozen=True)
class Neumann(AbstractSolver):
    """Truncated Neumann series for $H^{-1}b$.

    Uses $H^{-1} = \\alpha\\sum_{j\\ge 0} (I - \\alpha H)^j$, valid when the spectral radius of
    $I - \\alpha H$ is below one (for a positive-definite $H$: $0 < \\alpha < 2/\\lambda_{\\max}$),
    truncated after `terms` $= K$ products:

    $$p = \\alpha \\sum_{j=0}^{K} (I - \\alpha H)^j\\, b.$$

    This is the estimator of Lorraine, Vicol & Duvenaud (AISTATS 2020, Algorithm 3) and of
    *Teaching with Commentaries* (Raghu et al., ICLR 2021), which uses $K = 1$ and $\\alpha$
    equal to the student's learning rate. It costs $K$ Hessian-vector products and converges
    to $H^{-1}b$ as $K \\to \\infty$, slowly when $H$ is ill-conditioned.

    The same series solves any system $A x = b$ whose $I - \\alpha A$ has spectral radius
    below one, so it also serves the fixed-point form, where
    $A = I - (\\partial T/\\partial\\theta)^\\top$: with `alpha=1.0` it is the adjoint fixed-point
    iteration $w = \\sum_{j=0}^{K} (\\partial T/\\partial\\theta)^{\\top j} v$, which converges
    for every contraction $T$. For $T(\\theta,\\phi) = \\theta - \\eta\\nabla_\\theta f$ this is
    `hypergrad(f, ..., Neumann(K, alpha=η))`, the paper's estimator. `alpha` means the same in
    both forms: the step of the series on the operator the solver receives.

    **Arguments:**

    - `terms`: $K \\ge 0$, the number of Hessian-vector products (default `10`).
    - `alpha`: the step $\\alpha > 0$. `None` (default) estimates
      $\\lambda_{\\max}(H)$ with `power_iters` power iterations and uses
      $\\alpha = 1/\\lambda_{\\max}$ (those products are counted in `iterations`).
    - `power_iters`: power iterations for the automatic `alpha` (default `20`).
    - `compute_residual`: if `True`, spend one more product to report the true relative
      residual $\\lVert Ap - b\\rVert/\\lVert b\\rVert$ of the returned value (default
      `False`: the residual is reported as `None`).

    **Divergence** is read from what the series does, not from a fixed budget of growth. For
    a symmetric operator the terms $\\lVert(I-\\alpha A)^j b\\rVert$ never grow when the
    series converges, so any growth beyond rounding proves divergence. A non-symmetric
    operator may grow transiently, so there the series is declared divergent when its last
    term is larger than the term halfway through: the terms are not decaying, and the
    partial sum is not an answer to stand behind. Both raise
    [`SolverError`][implicitgrad.SolverError] naming the term: lower `alpha`, use more terms,
    or use CG (symmetric) or GMRES (general). A divergence whose growing mode is still smaller
    than the decaying ones at the last term cannot be seen in the norms: where in doubt, pass
    `compute_residual=True` (the true residual of the partial sum) or use GMRES.

    **Example:**

    ```python
    import torch, implicitgrad as ig
    inner = lambda t, p: 0.5 * (t ** 2).sum() * 3.0 - (t * p).sum()   # H = 3I
    hg = ig.hypergrad(inner, lambda t, p: t.sum(), torch.ones(2) / 3, torch.ones(2),
                      solver=ig.Neumann(terms=1, alpha=0.1))
    # p = 0.1 (1 + (1 - 0.3)) = 0.17 per coordinate
    assert torch.allclose(hg, torch.full((2,), 0.17))
    ```
    """

    terms: int = 10
    alpha: float | None = None
    power_iters: int = 20
    compute_residual: bool = False

    supports_batch = True

    def __post_init__(self) -> None:
        if isinstance(self.terms, bool) or not isinstance(self.terms, int) or self.terms < 0:
            raise InputError(f"`Neumann(terms=...)` must be an int >= 0, got {self.terms!r}.")
        if self.alpha is not None and not (
            isinstance(self.alpha, (int, float)) and 0 < self.alpha < math.inf
        ):
            raise InputError(
                f"`Neumann(alpha=...)` must be a finite float > 0 (or None to estimate it), got "
                f"{self.alpha!r}."
            )
        if not isinstance(self.power_iters, int) or self.power_iters < 1:
            raise InputError(
                f"`Neumann(power_iters=...)` must be a positive int, got {self.power_iters!r}."
            )

    def _step(self, operator: LinearOperator, b: torch.Tensor) -> tuple[torch.Tensor | float, int]:
        """α, and the products spent finding it (power iteration on |λ|max of A)."""
        if self.alpha is not None:
            return float(self.alpha), 0
        v = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp_min(
            torch.finfo(b.dtype).tiny
        )
        lam = torch.ones(())
        for _ in range(self.power_iters):
            hv = operator.matvec(v)
            lam = torch.linalg.vector_norm(hv, dim=-1, keepdim=True)
            v = hv / lam.clamp_min(torch.finfo(b.dtype).tiny)
        lams = lam.flatten().tolist()
        if not all(0 < x < math.inf for x in lams):
            raise SolverError(
                f"Neumann(alpha=None): power iteration found |Av| = {min(lams)} while estimating "
                "the largest eigenvalue of the operator; pass alpha explicitly."
            )
        return (1.0 / lam if operator.batch_size is not None else 1.0 / lams[0]), self.power_iters

    def _check_divergence(
        self, norms: torch.Tensor, alpha: Any, symmetric: bool, last: torch.Tensor
    ) -> None:
        """Raise if the term norms (rows: terms 0..K, columns: systems) show divergence."""
        values = norms.tolist()
        alphas = alpha.flatten().tolist() if isinstance(alpha, torch.Tensor) else None
        eps = torch.finfo(norms.dtype).eps
        terms = len(values) - 1
        for col in range(len(values[0])):
            column = [row[col] for row in values]
            where = f" (system {col} of the batch)" if len(values[0]) > 1 else ""
            step = f"alpha={alpha if alphas is None else alphas[col]:.3e}"
            for j, norm in enumerate(column):
                if not math.isfinite(norm):
                    check_finite(last, solver="Neumann", what="a series term", iteration=j)
                    raise SolverError(
                        f"Neumann series diverges{where}: term {j} became non-finite (NaN/Inf) "
                        f"with {step}; lower alpha, or use ig.CG() / ig.GMRES()."
                    )
            # Terms at the rounding floor fluctuate; their growth proves nothing.
            floor = 100 * eps * column[0]
            slack = 1 + 100 * eps
            if symmetric:
                for j in range(1, terms + 1):
                    if column[j] > column[j - 1] * slack and column[j] > floor:
                        raise SolverError(
                            f"Neumann series diverges{where}: term {j} has norm {column[j]:.6e} > "
                            f"{column[j - 1]:.6e} (term {j - 1}). For a symmetric operator the "
                            f"terms never grow when the series converges, so the step {step} is "
                            "too large (need 0 < alpha < 2 / largest eigenvalue) or the operator "
                            "is not positive definite. Lower alpha, use alpha=None to estimate "
                            "it, or use ig.CG()."
                        )
            elif terms >= 1:
                half = terms // 2
                if column[terms] > column[half] * slack and column[terms] > floor:
                    raise SolverError(
                        f"Neumann series does not converge{where}: its last term {terms} has norm "
                        f"{column[terms]:.3e} > {column[half]:.3e} (term {half}), so the terms "
                        "are not decaying (spectral radius of I - alpha A at least 1, or a "
                        f"transient growth not yet passed) with {step}. Lower alpha, use more "
                        "terms, or use ig.GMRES()."
                    )

    def solve(
        self, operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> Solution:
        self.check_operator(operator)
        b_norm = rhs_norm(b, solver="Neumann")
        if b_norm == 0.0:
            return Solution(torch.zeros_like(b), 0, 0.0, None)
        alpha, iterations = self._step(operator, b)
        term = b
        total = b.clone()
        norms = [torch.linalg.vector_norm(b, dim=-1)]
        for _ in range(self.terms):
            term = term - alpha * operator.matvec(term)
            total = total + term
            norms.append(torch.linalg.vector_norm(term, dim=-1))
        iterations += self.terms
        # The divergence check runs once, after the loop, so that the series needs no host
        # synchronization per term.
        stacked = torch.stack(norms).reshape(len(norms), -1)
        self._check_divergence(stacked, alpha, operator.symmetric, term)
        x = alpha * total
        if not self.compute_residual:
            return Solution(x, iterations, None, None)
        rows = true_residual(operator, x, b)
        iterations += 1
        if operator.batch_size is None:
            return Solution(x, iterations, float(rows), None)
        return Solution(
            x,
            iterations,
            float(rows.max()),
            None,
            batch_residual=rows,
            batch_iterations=torch.full((b.shape[0],), iterations),
        )

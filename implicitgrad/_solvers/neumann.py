"""Truncated Neumann series (Richardson iteration) for the inverse Hessian."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._errors import InputError, SolverError
from .base import AbstractSolver, LinearOperator, Solution, check_finite, rhs_norm

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

    In [`fixed_point_hypergrad`][implicitgrad.fixed_point_hypergrad] the update map $T$
    already takes a step: for $T(\\theta,\\phi) = \\theta - \\alpha\\nabla_\\theta f$ one has
    $I - \\partial T/\\partial\\theta = \\alpha H$. The series is then summed in the update
    map's own units, $w = \\sum_{j=0}^{K} (\\partial T/\\partial\\theta)^{\\top j} v$, so that
    `fixed_point_hypergrad(update, ..., Neumann(K, alpha))` and
    `hypergrad(f, ..., Neumann(K, alpha))` return the same hypergradient, the paper's
    estimator. `alpha` is not used in that form.

    **Arguments:**

    - `terms`: $K \\ge 0$, the number of Hessian-vector products (default `10`).
    - `alpha`: the step $\\alpha > 0$. `None` (default) estimates
      $\\lambda_{\\max}(H)$ with `power_iters` power iterations and uses
      $\\alpha = 1/\\lambda_{\\max}$ (those products are counted in `iterations`).
    - `power_iters`: power iterations for the automatic `alpha` (default `20`).
    - `compute_residual`: if `True`, spend one more product to report the true relative
      residual $\\lVert Hp - b\\rVert/\\lVert b\\rVert = \\lVert(I-\\alpha H)^{K+1}b\\rVert /
      \\lVert b\\rVert$ (default `False`: the residual is reported as `None`).

    !!! warning
        If a term of the series grows in norm (impossible for a symmetric $H$ when the
        series converges), the series diverges and
        [`SolverError`][implicitgrad.SolverError] is raised: lower `alpha`.

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

    def __post_init__(self) -> None:
        if not isinstance(self.terms, int) or self.terms < 0:
            raise InputError(f"`Neumann(terms=...)` must be an int >= 0, got {self.terms!r}.")
        if self.alpha is not None and not (float(self.alpha) > 0):
            raise InputError(
                f"`Neumann(alpha=...)` must be > 0 (or None to estimate it), got {self.alpha!r}."
            )
        if not isinstance(self.power_iters, int) or self.power_iters < 1:
            raise InputError(
                f"`Neumann(power_iters=...)` must be a positive int, got {self.power_iters!r}."
            )

    def _step(self, operator: LinearOperator, b: torch.Tensor) -> tuple[float, int]:
        if operator.fixed_point:
            return 1.0, 0
        if self.alpha is not None:
            return float(self.alpha), 0
        v = b / torch.linalg.vector_norm(b)
        lam = 0.0
        for _ in range(self.power_iters):
            hv = operator.matvec(v)
            lam = float(torch.linalg.vector_norm(hv))
            if not lam > 0 or lam != lam or lam == float("inf"):
                raise SolverError(
                    f"Neumann(alpha=None): power iteration found |Hv| = {lam} while estimating "
                    "the largest Hessian eigenvalue; pass alpha explicitly."
                )
            v = hv / lam
        return 1.0 / lam, self.power_iters

    @staticmethod
    def _check_divergence(
        norms: list[float], b_norm: float, alpha: float, symmetric: bool, last: torch.Tensor
    ) -> None:
        previous = b_norm
        for j, norm in enumerate(norms, start=1):
            if not math.isfinite(norm):
                check_finite(last, solver="Neumann", what="a series term", iteration=j)
                raise SolverError(
                    f"Neumann series diverges: term {j} became non-finite (NaN/Inf); lower "
                    f"alpha={alpha:.3e} or check the losses for NaN/Inf."
                )
            # For symmetric H, |(I - αH)^j b| never grows when the series converges, so any
            # growth proves divergence. A non-symmetric fixed-point Jacobian may grow
            # transiently; there only a large blow-up is taken as proof.
            limit = previous * (1.0 + 1e-4) if symmetric else b_norm * 1e3
            if norm > limit:
                raise SolverError(
                    f"Neumann series diverges: term {j} has norm {norm:.3e} > "
                    f"{previous:.3e} (term {j - 1}); the step alpha={alpha:.3e} is too large "
                    "for the Hessian (need alpha < 2 / largest eigenvalue, and H positive "
                    "definite). Lower alpha, use alpha=None to estimate it, or use ig.CG()."
                )
            previous = norm

    def solve(
        self, operator: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> Solution:
        b_norm = rhs_norm(b, solver="Neumann")
        if b_norm == 0.0:
            return Solution(torch.zeros_like(b), 0, 0.0, None)
        alpha, iterations = self._step(operator, b)
        term = b
        total = b.clone()
        norms = []
        for _ in range(self.terms):
            term = term - alpha * operator.matvec(term)
            total = total + term
            norms.append(torch.linalg.vector_norm(term))
        iterations += self.terms
        # The divergence check runs once, after the loop, so that the series needs no host
        # synchronization per term.
        if norms:
            self._check_divergence(
                torch.stack(norms).tolist(), b_norm, alpha, operator.symmetric, term
            )
        residual = None
        if self.compute_residual:
            nxt = term - alpha * operator.matvec(term)
            iterations += 1
            residual = float(torch.linalg.vector_norm(nxt)) / b_norm
        return Solution(alpha * total, iterations, residual, None)

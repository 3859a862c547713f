"""Jacobi preconditioning with a Hutchinson estimate of the diagonal (Bekas, Kokiopoulou &
Saad, 2007)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._errors import InputError
from .._solvers.base import LinearOperator, check_finite
from .._solvers.nystrom import sketch_products
from .base import AbstractPreconditioner, BuiltPreconditioner, Cache, check_refresh

__all__ = ["DiagonalPreconditioner"]

# Estimated diagonal entries are clamped to at least this fraction of their mean magnitude:
# with few probes an entry of a positive diagonal can come out near zero or negative, and
# its inverse would blow that coordinate up.
_FLOOR = 1e-3


@dataclass(frozen=True)
class DiagonalPreconditioner(AbstractPreconditioner):
    """Diagonal (Jacobi) preconditioner from a stochastic estimate of the diagonal.

    The diagonal of a matrix-free operator is estimated with `probes` Rademacher vectors
    $z_j$ (entries $\\pm 1$), $\\operatorname{diag}(A) \\approx \\frac1m\\sum_j z_j \\odot
    Az_j$, an unbiased estimate (Bekas, Kokiopoulou & Saad, *An estimator for the diagonal
    of a matrix*, Appl. Numer. Math. 57, 2007; Hutchinson, 1989, for the trace), and
    $M^{-1}v = v \\oslash d$. The estimate is clamped to at least 0.1% of its mean magnitude,
    so $M$ is always positive definite. It costs `probes` products once and $O(n)$ per
    application; it helps where parameters live on very different scales (the per-feature
    penalties of a regression), less against the outlying eigenvalues of a network, where
    [`NystromPreconditioner`][implicitgrad.NystromPreconditioner] is the better choice.

    **Arguments:**

    - `probes`: $m \\ge 1$, the number of Rademacher probes and of products (default 10).
    - `seed`: seed of the probes (the same probes on every call).
    - `refresh_every`, `refresh_growth`: reuse across solves, see
      [`AbstractPreconditioner`][implicitgrad.AbstractPreconditioner].

    **Example:**

    ```python
    import torch, implicitgrad as ig
    scales = torch.logspace(0, 3, 30, dtype=torch.float64)
    inner = lambda t, p: 0.5 * (scales * t ** 2).sum() - t @ p   # a diagonal Hessian
    phi = torch.ones(30, dtype=torch.float64)
    solver = ig.CG(tol=1e-10, preconditioner=ig.DiagonalPreconditioner(probes=1))
    hg, info = ig.hypergrad(inner, lambda t, p: t.sum(), phi / scales, phi, solver,
                            return_info=True)
    assert torch.allclose(hg, 1 / scales)
    assert info.iterations == 3   # a probe (exact on a diagonal), a CG step, a residual check
    ```
    """

    probes: int = 10
    seed: int = 0
    refresh_every: int = 1
    refresh_growth: float | None = 1.5
    _cache: Cache = field(default_factory=Cache, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = "DiagonalPreconditioner"
        if not isinstance(self.probes, int) or isinstance(self.probes, bool) or self.probes < 1:
            raise InputError(f"`{name}(probes=...)` must be a positive int, got {self.probes!r}.")
        if not isinstance(self.seed, int):
            raise InputError(f"`{name}(seed=...)` must be an int, got {self.seed!r}.")
        check_refresh(name, self.refresh_every, self.refresh_growth)

    def build(self, operator: LinearOperator) -> BuiltPreconditioner:
        gen = torch.Generator().manual_seed(self.seed)
        signs = torch.randint(0, 2, (operator.size, self.probes), generator=gen)
        z = (2 * signs - 1).to(dtype=operator.dtype, device=operator.device)
        az = sketch_products(operator, z)
        check_finite(az, solver="DiagonalPreconditioner", what="a product", iteration=0)
        estimate = (z * az).mean(dim=1)
        floor = _FLOOR * float(estimate.abs().mean())
        if not floor > 0:
            floor = 1.0
        clamped = int((estimate < floor).sum())
        inverse = 1.0 / estimate.clamp_min(floor)

        def apply(v: torch.Tensor) -> torch.Tensor:
            return v * inverse

        details = {"diagonal": estimate, "clamped": clamped}
        return BuiltPreconditioner(apply, products=self.probes, details=details)

"""Randomized Nyström preconditioner (Frangella, Tropp & Udell, 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .._errors import InputError, SolverError
from .._solvers.base import LinearOperator
from .._solvers.nystrom import Nystrom
from .base import AbstractPreconditioner, BuiltPreconditioner, Cache, check_refresh

__all__ = ["NystromPreconditioner"]


@dataclass(frozen=True)
class NystromPreconditioner(AbstractPreconditioner):
    """Randomized Nyström preconditioner for CG.

    Frangella, Tropp & Udell, *Randomized Nyström Preconditioning*, SIAM J. Matrix Anal.
    Appl. 44(2), 2023. With $k$ = `rank` products the sketch of
    [`Nystrom`][implicitgrad.Nystrom] gives the rank-$k$ approximation
    $\\hat A = U\\Lambda U^\\top$ of the system operator $A$ ($U$ orthonormal,
    $\\lambda_1 \\ge \\dots \\ge \\lambda_k > 0$), and the preconditioner is their eq. (5.3),

    $$P^{-1} = (\\lambda_k + \\mu)\\,U(\\Lambda + \\mu I)^{-1}U^\\top + (I - UU^\\top).$$

    It maps the $k$ captured eigenvalues of $A$ to about $\\lambda_k + \\mu$ and leaves
    the rest, so the condition number CG sees falls from $\\lambda_1/\\lambda_n$ to about
    $\\lambda_k/\\lambda_n$: worth it when the spectrum has a few large outliers (the
    Hessians of neural networks and of logistic regression do). The cost is $k$ products
    once (one batched `vmap` call where that pays off, as in `Nystrom`) plus $O(nk^2)$
    dense work, and $O(nk)$ per application.

    **Arguments:**

    - `rank`: $k \\ge 1$, the sketch size (capped at $n$).
    - `rho`: the shift $\\mu \\ge 0$ of the formula above. `None` (default) means
      $\\mu = 0$: the operator CG hands over already contains its `damping`, and the
      Nyström eigenvalues of a positive-definite operator are at least its smallest
      eigenvalue, so no shift is needed for stability. A positive `rho` softens the
      preconditioner where the sketch is inaccurate.
    - `sketch`, `seed`: as in [`Nystrom`][implicitgrad.Nystrom] (the same sketch code).
    - `refresh_every`, `refresh_growth`: reuse across solves, see
      [`AbstractPreconditioner`][implicitgrad.AbstractPreconditioner].

    **Departures from the paper.** Their Algorithm 2.1 stabilizes the sketch with a shift
    $\\nu = \\sqrt{n}\\,\\epsilon\\,\\lVert Y\\rVert$; here the core $\\Omega^\\top A\\Omega$
    is eigendecomposed and eigenvalues below $k\\,\\epsilon\\,\\lambda_{\\max}$ are dropped
    instead (the code of `Nystrom.factor`), which has the same purpose. $\\mu = 0$ is
    allowed because the operator is positive definite.

    **Example:**

    ```python
    import torch, implicitgrad as ig
    torch.manual_seed(0)
    Q = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64)).Q
    A = Q @ torch.diag(torch.logspace(0, 4, 50, dtype=torch.float64)) @ Q.T
    inner = lambda t, p: 0.5 * t @ A @ t - t @ p
    phi = torch.ones(50, dtype=torch.float64)
    theta = torch.linalg.solve(A, phi)
    solver = ig.CG(tol=1e-10, preconditioner=ig.NystromPreconditioner(rank=40))
    hg, info = ig.hypergrad(inner, lambda t, p: t.sum(), theta, phi, solver, return_info=True)
    assert torch.allclose(hg, torch.linalg.solve(A, torch.ones(50, dtype=torch.float64)))
    assert info.iterations - info.preconditioner_products < 25   # plain CG needs about 150
    ```
    """

    rank: int = 20
    rho: float | None = None
    sketch: Literal["gaussian", "columns"] = "gaussian"
    seed: int = 0
    refresh_every: int = 1
    refresh_growth: float | None = 1.5
    _cache: Cache = field(default_factory=Cache, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = "NystromPreconditioner"
        if self.rho is not None and not (isinstance(self.rho, (int, float)) and self.rho >= 0):
            raise InputError(f"`{name}(rho=...)` must be None or a float >= 0, got {self.rho!r}.")
        try:
            self._sketcher()
        except InputError as err:
            # The sketch settings are Nystrom's and are validated by it, under this name.
            raise InputError(str(err).replace("`Nystrom(", f"`{name}(")) from None
        check_refresh(name, self.refresh_every, self.refresh_growth)

    def _sketcher(self) -> Nystrom:
        return Nystrom(rank=self.rank, rho=0.0, sketch=self.sketch, seed=self.seed)

    def build(self, operator: LinearOperator) -> BuiltPreconditioner:
        u, lam = self._sketcher().factor(operator)
        if lam.numel() == 0:
            raise SolverError(
                f"NystromPreconditioner: the rank-{min(self.rank, operator.size)} sketch found "
                "no positive curvature, so the operator is not positive definite. Check that "
                "the inner parameters are at a local minimum, or add damping to CG."
            )
        mu = 0.0 if self.rho is None else float(self.rho)
        # (λ_k + μ)/(λ_i + μ) - 1 per captured direction: P⁻¹v = v + U diag(.) Uᵀ v.
        scale = (lam[-1] + mu) / (lam + mu) - 1.0

        def apply(v: torch.Tensor) -> torch.Tensor:
            return torch.addmv(v, u, scale * (u.T @ v))

        details = {"rank": int(lam.numel()), "eigenvalues": lam.detach(), "shift": mu}
        return BuiltPreconditioner(apply, products=min(self.rank, operator.size), details=details)

"""Ridge regression with one L2 weight per feature: closed-form inner solution and hypergradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._errors import InputError

__all__ = ["RidgeProblem", "ridge_problem"]


@dataclass(frozen=True)
class RidgeProblem:
    """Per-feature L2 hyperparameters of ridge regression.

    $$f(w, \\phi) = \\tfrac{1}{2n}\\lVert Xw - y\\rVert^2 + \\tfrac12\\sum_i e^{\\phi_i} w_i^2,
    \\qquad g(w) = \\tfrac{1}{2m}\\lVert X_v w - y_v\\rVert^2.$$

    With $A(\\phi) = X^\\top X/n + \\mathrm{diag}(e^\\phi)$: $w^* = A^{-1}X^\\top y/n$ and
    $\\mathrm{d}g/\\mathrm{d}\\phi_i = -(A^{-1}\\nabla g)_i\\, e^{\\phi_i} w^*_i$.
    φ is the log of the L2 weights.
    """

    X: torch.Tensor
    y: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    outer_params: torch.Tensor

    def inner_loss(self, w: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """$f(w, \\phi)$."""
        r = self.X @ w - self.y
        return 0.5 * (r @ r) / len(self.y) + 0.5 * (phi.exp() * w**2).sum()

    def outer_loss(self, w: torch.Tensor, phi: Any = None) -> torch.Tensor:
        """$g(w)$ (it does not depend on φ directly)."""
        r = self.X_val @ w - self.y_val
        return 0.5 * (r @ r) / len(self.y_val)

    def _system(self, phi: torch.Tensor) -> torch.Tensor:
        n = len(self.y)
        return self.X.T @ self.X / n + torch.diag(phi.exp())

    def inner_solution(self, phi: torch.Tensor | None = None) -> torch.Tensor:
        """$w^*(\\phi)$ by a dense solve."""
        phi = self.outer_params if phi is None else phi
        return torch.linalg.solve(self._system(phi), self.X.T @ self.y / len(self.y))

    def exact_hypergrad(self, phi: torch.Tensor | None = None) -> torch.Tensor:
        """The closed-form hypergradient."""
        phi = self.outer_params if phi is None else phi
        w = self.inner_solution(phi)
        grad_g = self.X_val.T @ (self.X_val @ w - self.y_val) / len(self.y_val)
        return -torch.linalg.solve(self._system(phi), grad_g) * phi.exp() * w

    @property
    def inner_params(self) -> torch.Tensor:
        """$w^*$ at the problem's `outer_params`."""
        return self.inner_solution()


def ridge_problem(
    n_samples: int = 50,
    n_features: int = 5,
    *,
    n_val: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
) -> RidgeProblem:
    """Draw a random [`RidgeProblem`][implicitgrad.testing.RidgeProblem] from a linear model
    with noise; φ starts at $\\log 0.1$ for every feature.

    **Example:**

    ```python
    import torch, implicitgrad as ig
    from implicitgrad.testing import ridge_problem
    prob = ridge_problem(40, 4)
    hg = ig.hypergrad(prob.inner_loss, prob.outer_loss, prob.inner_params,
                      prob.outer_params, solver=ig.CG(tol=1e-12))
    assert torch.allclose(hg, prob.exact_hypergrad())
    ```
    """
    if n_samples < 1 or n_features < 1:
        raise InputError(
            f"`ridge_problem` needs n_samples, n_features >= 1, got {n_samples}, {n_features}."
        )
    gen = torch.Generator().manual_seed(seed)
    m = n_val or n_samples
    w_true = torch.randn(n_features, generator=gen, dtype=torch.float64)
    X = torch.randn(n_samples, n_features, generator=gen, dtype=torch.float64)
    Xv = torch.randn(m, n_features, generator=gen, dtype=torch.float64)
    y = X @ w_true + 0.5 * torch.randn(n_samples, generator=gen, dtype=torch.float64)
    yv = Xv @ w_true + 0.5 * torch.randn(m, generator=gen, dtype=torch.float64)
    cast = lambda x: x.to(dtype=dtype, device=device)  # noqa: E731
    phi = torch.full((n_features,), float(torch.log(torch.tensor(0.1))), dtype=torch.float64)
    return RidgeProblem(cast(X), cast(y), cast(Xv), cast(yv), cast(phi))

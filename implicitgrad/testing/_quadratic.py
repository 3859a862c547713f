"""Random quadratic bilevel problems with closed-form hypergradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from .._errors import InputError
from .._tree import Tree, flatten, ravel, unflatten, unravel

__all__ = ["QuadraticProblem", "random_quadratic"]

Structure = Literal["tensor", "tuple", "list", "dict", "nested"]


def _template(n: int, structure: Structure, dtype: torch.dtype, device: Any) -> Tree:
    """A tree of zero tensors with `n` entries in total, laid out as `structure`."""
    z = lambda k: torch.zeros(k, dtype=dtype, device=device)  # noqa: E731
    if structure == "tensor" or n == 1:
        return z(n)
    a = max(1, n // 3)
    b = n - a
    if structure == "tuple":
        return (z(a), z(b))
    if structure == "list":
        return [z(a), z(b)]
    if structure == "dict":
        return {"a": z(a), "b": z(b)}
    if structure == "nested":
        if b >= 2:
            return {"a": z(a), "rest": (z(b // 2), [z(b - b // 2)])}
        return {"a": z(a), "rest": (z(b),)}
    raise InputError(
        f"`random_quadratic(structure=...)` must be one of 'tensor', 'tuple', 'list', 'dict', "
        f"'nested', got {structure!r}."
    )


@dataclass(frozen=True)
class QuadraticProblem:
    """A bilevel problem with quadratic inner and outer objectives and known answers.

    $$f(\\theta, \\phi) = \\tfrac12 \\theta^\\top A \\theta - \\theta^\\top (B\\phi + c),
    \\qquad g(\\theta, \\phi) = \\tfrac12 \\lVert E\\theta - e\\rVert^2
    + \\tfrac12 \\phi^\\top D\\phi + d^\\top\\phi,$$

    with $A$ symmetric positive definite. Then $\\theta^*(\\phi) = A^{-1}(B\\phi + c)$,
    $H = A$, $\\partial^2 f/\\partial\\phi\\partial\\theta = -B^\\top$, and the exact
    hypergradient is $D\\phi + d + B^\\top A^{-1} E^\\top(E\\theta^* - e)$. θ and φ are
    presented as trees (see `random_quadratic`'s `structure`); the matrices act on their
    flattened vectors.

    Build one with [`random_quadratic`][implicitgrad.testing.random_quadratic].
    """

    A: torch.Tensor
    B: torch.Tensor
    c: torch.Tensor
    E: torch.Tensor
    e: torch.Tensor
    D: torch.Tensor
    d: torch.Tensor
    inner_template: Tree
    outer_template: Tree
    outer_params: Tree

    def _vec(self, tree: Tree) -> torch.Tensor:
        leaves, _ = flatten(tree, call="QuadraticProblem", name="params")
        return ravel(leaves)

    def _tree(self, vec: torch.Tensor, template: Tree) -> Tree:
        leaves, spec = flatten(template, call="QuadraticProblem", name="template")
        return unflatten(spec, [t.clone() for t in unravel(vec, leaves)])

    def inner_loss(self, theta: Tree, phi: Tree) -> torch.Tensor:
        """$f(\\theta, \\phi)$."""
        t, p = self._vec(theta), self._vec(phi)
        return 0.5 * t @ (self.A @ t) - t @ (self.B @ p + self.c)

    def outer_loss(self, theta: Tree, phi: Tree) -> torch.Tensor:
        """$g(\\theta, \\phi)$."""
        t, p = self._vec(theta), self._vec(phi)
        r = self.E @ t - self.e
        return 0.5 * r @ r + 0.5 * p @ (self.D @ p) + self.d @ p

    def inner_solution(self, phi: Tree | None = None) -> Tree:
        """$\\theta^*(\\phi) = A^{-1}(B\\phi + c)$ as a tree."""
        p = self._vec(self.outer_params if phi is None else phi)
        return self._tree(torch.linalg.solve(self.A, self.B @ p + self.c), self.inner_template)

    def outer_gradients(self, phi: Tree | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The flat outer gradients $(\\partial g/\\partial\\theta, \\partial g/\\partial\\phi)$
        at $\\theta^*(\\phi)$."""
        p = self._vec(self.outer_params if phi is None else phi)
        t = torch.linalg.solve(self.A, self.B @ p + self.c)
        return self.E.T @ (self.E @ t - self.e), self.D @ p + self.d

    def _combine(self, x: torch.Tensor, phi: Tree | None) -> Tree:
        _, direct = self.outer_gradients(phi)
        return self._tree(direct + self.B.T @ x, self.outer_template)

    def exact_hypergrad(self, phi: Tree | None = None) -> Tree:
        """The closed-form hypergradient
        $D\\phi + d + B^\\top A^{-1}\\partial g/\\partial\\theta$."""
        v, _ = self.outer_gradients(phi)
        return self._combine(torch.linalg.solve(self.A, v), phi)

    def neumann_hypergrad(self, terms: int, alpha: float, phi: Tree | None = None) -> Tree:
        """The hypergradient with $H^{-1}v$ replaced by $\\alpha\\sum_{j=0}^K (I-\\alpha A)^j v$.

        Computed in closed form with matrix powers, independently of the library's solver.
        """
        v, _ = self.outer_gradients(phi)
        n = self.A.shape[0]
        M = torch.eye(n, dtype=self.A.dtype, device=self.A.device) - alpha * self.A
        S = sum(torch.linalg.matrix_power(M, j) for j in range(terms + 1))
        return self._combine(alpha * (S @ v), phi)

    def identity_hypergrad(self, scale: float = 1.0, phi: Tree | None = None) -> Tree:
        """The hypergradient with $H^{-1}$ replaced by `scale`·I."""
        v, _ = self.outer_gradients(phi)
        return self._combine(scale * v, phi)

    @property
    def inner_params(self) -> Tree:
        """θ* at the problem's `outer_params`."""
        return self.inner_solution()

    @property
    def largest_eigenvalue(self) -> float:
        """$\\lambda_{\\max}(A)$, e.g. to choose a convergent Neumann step."""
        return float(torch.linalg.eigvalsh(self.A)[-1])


def random_quadratic(
    n_inner: int,
    n_outer: int,
    *,
    condition: float = 10.0,
    n_outer_rows: int | None = None,
    inner_structure: Structure = "tensor",
    outer_structure: Structure = "tensor",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
) -> QuadraticProblem:
    """Draw a random [`QuadraticProblem`][implicitgrad.testing.QuadraticProblem].

    $A = Q\\,\\mathrm{diag}(\\lambda)\\,Q^\\top$ with a random orthogonal $Q$ and eigenvalues
    spaced geometrically in $[1, \\kappa]$, so its condition number is exactly $\\kappa$.
    The other matrices are Gaussian; $D$ is positive semi-definite.

    **Arguments:**

    - `n_inner`, `n_outer`: the sizes of θ and φ.
    - `condition`: $\\kappa = \\lambda_{\\max}/\\lambda_{\\min} \\ge 1$ of the inner Hessian.
    - `n_outer_rows`: rows of $E$ (default `n_inner`).
    - `inner_structure`, `outer_structure`: how θ and φ are presented: `"tensor"`,
      `"tuple"`, `"list"`, `"dict"` or `"nested"` (dict holding a tuple holding a list).
    - `seed`, `dtype`, `device`: reproducibility and placement.

    **Example:**

    ```python
    import implicitgrad as ig
    from implicitgrad.testing import random_quadratic
    prob = random_quadratic(6, 3, condition=50.0, inner_structure="dict")
    hg = ig.hypergrad(prob.inner_loss, prob.outer_loss, prob.inner_params,
                      prob.outer_params, solver=ig.Exact())
    ```
    """
    if n_inner < 1 or n_outer < 1:
        raise InputError(
            f"`random_quadratic` needs n_inner, n_outer >= 1, got {n_inner}, {n_outer}."
        )
    if not condition >= 1:
        raise InputError(f"`random_quadratic(condition=...)` must be >= 1, got {condition}.")
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    q, _ = torch.linalg.qr(randn(n_inner, n_inner))
    eig = torch.logspace(
        0, torch.log10(torch.tensor(float(condition))).item(), n_inner, dtype=torch.float64
    )
    A = (q * eig) @ q.T
    A = 0.5 * (A + A.T)
    rows = n_outer_rows or n_inner
    G = randn(n_outer, n_outer)

    def cast(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype=dtype, device=device)

    inner_template = _template(n_inner, inner_structure, dtype, device)
    outer_template = _template(n_outer, outer_structure, dtype, device)
    leaves, spec = flatten(outer_template, call="random_quadratic", name="outer")
    phi = unflatten(spec, [t.clone() for t in unravel(cast(randn(n_outer)), leaves)])
    return QuadraticProblem(
        A=cast(A),
        B=cast(randn(n_inner, n_outer)),
        c=cast(randn(n_inner)),
        E=cast(randn(rows, n_inner) / rows**0.5),
        e=cast(randn(rows)),
        D=cast(G @ G.T / n_outer),
        d=cast(randn(n_outer)),
        inner_template=inner_template,
        outer_template=outer_template,
        outer_params=phi,
    )

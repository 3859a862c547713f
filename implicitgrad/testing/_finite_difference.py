"""Central finite differences of the outer objective through the solved inner problem."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._errors import InputError
from .._tree import Tree, flatten, unflatten

__all__ = ["finite_difference_hypergrad"]


def finite_difference_hypergrad(
    solve_inner: Callable[[Any], Any],
    outer_loss: Callable[[Any, Any], torch.Tensor],
    outer_params: Tree,
    eps: float = 1e-5,
) -> Tree:
    """Central finite differences of $\\phi \\mapsto g(\\theta^*(\\phi), \\phi)$.

    For every scalar entry $\\phi_i$ it evaluates

    $$\\frac{g(\\theta^*(\\phi + \\varepsilon e_i), \\phi + \\varepsilon e_i)
    - g(\\theta^*(\\phi - \\varepsilon e_i), \\phi - \\varepsilon e_i)}{2\\varepsilon},$$

    whose error is $O(\\varepsilon^2)$ plus the inner solver's error divided by
    $\\varepsilon$: solve the inner problem to high accuracy and use float64. It costs
    $2\\dim\\phi$ inner solves, so keep $\\phi$ small.

    **Arguments:**

    - `solve_inner`: `solve_inner(φ) -> θ*(φ)`, solving the inner problem to tolerance.
    - `outer_loss`: `outer_loss(θ, φ) -> scalar`.
    - `outer_params`: the point φ (a tensor or tree of tensors).
    - `eps`: the step $\\varepsilon$ (default `1e-5`, suited to float64).

    **Returns:**

    The estimated hypergradient with the structure of `outer_params`.

    **Example:**

    ```python
    import torch
    from implicitgrad.testing import finite_difference_hypergrad
    solve = lambda p: p / 3                      # θ*(φ) of f = 1.5|θ|² - θ·φ
    fd = finite_difference_hypergrad(solve, lambda t, p: (t ** 2).sum(),
                                     torch.ones(2, dtype=torch.float64))
    assert torch.allclose(fd, torch.full((2,), 2 / 9, dtype=torch.float64))
    ```
    """
    call = "finite_difference_hypergrad"
    if not eps > 0:
        raise InputError(f"`{call}(eps=...)` must be > 0, got {eps!r}.")
    leaves, spec = flatten(outer_params, call=call, name="outer_params")
    base = [leaf.detach().clone() for leaf in leaves]

    def value(perturbed: list[torch.Tensor]) -> float:
        phi = unflatten(spec, perturbed)
        with torch.no_grad():
            out = outer_loss(solve_inner(phi), phi)
        return float(out)

    grads = []
    for i, leaf in enumerate(base):
        grad = torch.empty_like(leaf)
        flat_grad = grad.view(-1)
        for j in range(leaf.numel()):
            plus = [b.clone() for b in base]
            minus = [b.clone() for b in base]
            plus[i].view(-1)[j] += eps
            minus[i].view(-1)[j] -= eps
            flat_grad[j] = (value(plus) - value(minus)) / (2 * eps)
        grads.append(grad)
    return unflatten(spec, grads)

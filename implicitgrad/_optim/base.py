"""The optimizer contract: pure, differentiable update rules over parameter trees."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import torch
import torch.utils._pytree as pytree

from .._errors import InputError
from .._tree import Tree, TreeDef, describe

__all__ = [
    "AbstractOptimizer",
    "Hyper",
    "add_scaled",
    "check_hyper",
    "flatten_like",
    "is_zero",
    "sqrt_safe",
]

Hyper = float | torch.Tensor
"""A hyperparameter: a Python number, or a one-element tensor (which may require grad)."""


class AbstractOptimizer(abc.ABC):
    """Base class of the differentiable optimizers used by [`unroll`][implicitgrad.unroll].

    **Contract.** An optimizer is a small frozen dataclass whose fields are its
    hyperparameters, validated in `__post_init__`. It implements two pure methods:

    - `init(params) -> state`: the state before the first step (moment buffers, step count).
    - `step(params, grads, state) -> (params, state)`: one update.

    `params` and `grads` are parameter trees of the same structure (a tensor, or nested
    tuples/lists/dicts of tensors), and `state` is whatever `init` returned. Neither method
    may modify its inputs in place: the new parameters are new tensors computed from the old
    ones with differentiable operations, so that gradients flow through any number of steps
    back to the initial parameters, to whatever the gradients depend on, and to tensor
    hyperparameters that require grad (a learned learning rate). Run under `torch.no_grad()`
    the same methods are an ordinary optimizer.

    **Example:** plain gradient descent with a per-leaf learning-rate schedule.

    ```python
    from dataclasses import dataclass
    import torch
    import torch.utils._pytree as pytree
    import implicitgrad as ig

    @dataclass(frozen=True)
    class GD(ig.AbstractOptimizer):
        lr: float

        def init(self, params):
            return 0

        def step(self, params, grads, state):
            new = pytree.tree_map(lambda p, g: p - self.lr * g, params, grads)
            return new, state + 1

    opt = GD(lr=0.1)
    theta, state = opt.step(torch.ones(3), torch.ones(3), opt.init(torch.ones(3)))
    assert torch.allclose(theta, torch.full((3,), 0.9))
    ```
    """

    @abc.abstractmethod
    def init(self, params: Tree) -> Any:
        """The optimizer state before the first step on `params`."""

    @abc.abstractmethod
    def step(self, params: Tree, grads: Tree, state: Any) -> tuple[Tree, Any]:
        """One update: new parameters (same tree structure as `params`) and the new state."""

    # The leaf-list form below is how `unroll` drives an optimizer: one validation of the
    # trees when the unroll starts, then steps on lists of leaves with no tree handling per
    # step. The defaults go through `step`, so an optimizer that implements only the public
    # contract works unchanged; the built-in ones override all three.

    def _flat_state(self, state: Any, spec: TreeDef, leaves: Sequence[torch.Tensor]) -> Any:
        """`state` (as `init` returned it) in the form `_step_leaves` takes."""
        return state

    def _tree_state(self, state: Any, spec: TreeDef) -> Any:
        """The inverse of `_flat_state`."""
        return state

    def _step_leaves(
        self,
        leaves: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        state: Any,
        spec: TreeDef,
    ) -> tuple[list[torch.Tensor], Any]:
        """`step` on the leaves of trees with structure `spec`, with a flat state."""
        params = pytree.tree_unflatten(list(leaves), spec)
        new, state = self.step(params, pytree.tree_unflatten(list(grads), spec), state)
        new_leaves, new_spec = pytree.tree_flatten(new)
        if new_spec != spec:
            raise InputError(
                f"`{type(self).__name__}.step` returned parameters with a different tree "
                f"structure ({describe(new)}) than it received "
                f"({describe(params)})."
            )
        return list(new_leaves), state


def check_hyper(
    call: str,
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    high_open: bool = False,
) -> None:
    """Validate a hyperparameter: a real number or one-element floating tensor in range.

    The range is `[low, high]`, or `[low, high)` with `high_open`. Tensors are checked on
    their current (detached) value; they may require grad.
    """
    where = f"`{call}({name}=...)`"
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise InputError(
                f"{where} must be a number or a one-element floating-point tensor, got a "
                f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}."
            )
        number = float(value.detach())
    elif isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise InputError(
            f"{where} must be a number or a one-element tensor, got {type(value).__name__}."
        )
    upper_ok = number < high if high_open else number <= high
    if not (number >= low and upper_ok):
        bracket = ")" if high_open else "]"
        raise InputError(f"{where} must lie in [{low}, {high}{bracket}, got {number!r}.")


def is_zero(value: Hyper) -> bool:
    """Whether a hyperparameter is exactly zero and can be skipped.

    A tensor that requires grad never counts as zero: skipping it would cut its gradient.
    """
    if isinstance(value, torch.Tensor):
        return not value.requires_grad and float(value) == 0.0
    return value == 0


def flatten_like(
    tree: Tree, spec: TreeDef, *, call: str, name: str, like: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """The leaves of `tree`, checked to have the structure `spec` and the shapes of `like`."""
    leaves, tree_spec = pytree.tree_flatten(tree)
    if tree_spec != spec or any(
        not isinstance(x, torch.Tensor) or x.shape != y.shape for x, y in zip(leaves, like)
    ):
        raise InputError(
            f"`{call}({name}=...)` must have the structure and shapes of params "
            f"({describe(pytree.tree_unflatten(list(like), spec))}), got {describe(tree)}."
        )
    return list(leaves)


def sqrt_safe(x: torch.Tensor) -> torch.Tensor:
    """`sqrt` whose derivative at 0 is 0 instead of infinity.

    Adam divides by $\\sqrt{v}$; where a gradient entry has been exactly zero so far (a dead
    ReLU unit, an unused parameter) $v = 0$, and the true derivative $1/(2\\sqrt{v})$ times
    the zero derivative of $v$ gives `0 * inf = nan` in the backward pass. The double
    `where` keeps the forward value exact and gives those entries a zero derivative, a valid
    subgradient.
    """
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)


def add_scaled(x: torch.Tensor, y: torch.Tensor, alpha: Hyper) -> torch.Tensor:
    """`x + alpha * y`, one fused operation (as in torch.optim) when `alpha` is a number."""
    if isinstance(alpha, torch.Tensor):
        return x + alpha * y
    return torch.add(x, y, alpha=alpha)

"""Stochastic gradient descent with momentum, as a pure differentiable update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._errors import InputError
from .._tree import Tree, TreeDef, flatten, unflatten
from .base import AbstractOptimizer, Hyper, add_scaled, check_hyper, flatten_like, is_zero

__all__ = ["SGD", "SGDState"]


class SGDState(NamedTuple):
    """State of [`SGD`][implicitgrad.SGD].

    **Fields:**

    - `step`: number of steps taken so far.
    - `momentum_buffer`: the velocity $b_t$, a tree shaped like the parameters, or `None`
      when `momentum=0`.
    """

    step: int
    momentum_buffer: Tree | None


@dataclass(frozen=True, eq=False)  # eq=False: fields may be tensors, which do not compare to bool
class SGD(AbstractOptimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum and weight decay.

    Step for step the same numbers as `torch.optim.SGD` (without `maximize`), written
    without in-place operations so that it can be differentiated. With gradient $g_t$,

    $$\\begin{aligned}
    d_t &= g_t + \\lambda\\,\\theta_t, \\\\
    b_t &= \\begin{cases} d_t & t = 0, \\\\ \\mu\\, b_{t-1} + (1-\\tau)\\, d_t & t > 0,
    \\end{cases} \\\\
    \\theta_{t+1} &= \\theta_t - \\eta\\,(d_t + \\mu\\, b_t) \\;\\text{(Nesterov)}
    \\quad\\text{or}\\quad \\theta_t - \\eta\\, b_t,
    \\end{aligned}$$

    where the momentum terms are skipped when $\\mu = 0$ (Sutskever et al., 2013, as
    implemented by PyTorch).

    **Arguments:**

    - `lr`: learning rate $\\eta \\ge 0$. A number, or a one-element tensor; a tensor that
      requires grad receives the hypergradient through [`unroll`][implicitgrad.unroll].
    - `momentum`: $\\mu \\ge 0$ (default 0).
    - `dampening`: $\\tau \\in [0, 1]$ (default 0).
    - `nesterov`: use Nesterov momentum; needs `momentum > 0` and `dampening = 0`.
    - `weight_decay`: L2 penalty $\\lambda \\ge 0$ added to the gradient (default 0).

    Every number may be a one-element tensor, so any of them can be learned.

    **Example:**

    ```python
    import torch, implicitgrad as ig
    opt = ig.SGD(lr=0.1, momentum=0.9)
    theta = torch.ones(3)
    state = opt.init(theta)
    theta, state = opt.step(theta, 2 * theta, state)   # gradient of |θ|²
    assert torch.allclose(theta, torch.full((3,), 0.8))
    ```
    """

    lr: Hyper
    momentum: Hyper = 0.0
    dampening: Hyper = 0.0
    nesterov: bool = False
    weight_decay: Hyper = 0.0

    def __post_init__(self) -> None:
        check_hyper("SGD", "lr", self.lr)
        check_hyper("SGD", "momentum", self.momentum)
        check_hyper("SGD", "dampening", self.dampening, high=1.0)
        check_hyper("SGD", "weight_decay", self.weight_decay)
        if not isinstance(self.nesterov, bool):
            raise InputError(
                f"`SGD(nesterov=...)` must be a bool, got {type(self.nesterov).__name__}."
            )
        if self.nesterov and (is_zero(self.momentum) or not is_zero(self.dampening)):
            raise InputError(
                f"`SGD(nesterov=True)` needs momentum > 0 and dampening = 0, got "
                f"momentum={self.momentum!r} and dampening={self.dampening!r}."
            )

    def init(self, params: Tree) -> SGDState:
        leaves, spec = flatten(params, call="SGD.init", name="params")
        if is_zero(self.momentum):
            return SGDState(step=0, momentum_buffer=None)
        return SGDState(
            step=0, momentum_buffer=unflatten(spec, [torch.zeros_like(p) for p in leaves])
        )

    def step(self, params: Tree, grads: Tree, state: SGDState) -> tuple[Tree, SGDState]:
        leaves, spec = flatten(params, call="SGD.step", name="params")
        grad_leaves = flatten_like(grads, spec, call="SGD.step", name="grads", like=leaves)
        flat = self._flat_state(state, spec, leaves)
        new_leaves, flat = self._step_leaves(leaves, grad_leaves, flat, spec)
        return unflatten(spec, new_leaves), self._tree_state(flat, spec)

    def _flat_state(
        self, state: SGDState, spec: TreeDef, leaves: Sequence[torch.Tensor]
    ) -> SGDState:
        if is_zero(self.momentum):
            # A buffer left by another optimizer's state is ignored, as by `step`.
            return SGDState(state.step, None)
        if state.momentum_buffer is None:
            raise InputError(
                "`SGD.step(state=...)` has no momentum buffer but momentum="
                f"{self.momentum!r}; create the state with this optimizer's init()."
            )
        buffers = flatten_like(
            state.momentum_buffer, spec, call="SGD.step", name="state", like=leaves
        )
        return SGDState(state.step, buffers)

    def _tree_state(self, state: SGDState, spec: TreeDef) -> SGDState:
        if state.momentum_buffer is None:
            return state
        return SGDState(state.step, unflatten(spec, state.momentum_buffer))

    def _step_leaves(
        self,
        leaves: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        state: SGDState,
        spec: TreeDef,
    ) -> tuple[list[torch.Tensor], SGDState]:
        # Decided once per step, not per leaf: `is_zero` reads a tensor hyperparameter.
        decay = not is_zero(self.weight_decay)
        use_momentum = state.momentum_buffer is not None
        first = state.step == 0
        new_params, new_buffers = [], []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            if decay:
                g = add_scaled(g, p, self.weight_decay)
            if use_momentum:
                if first:
                    buf = g
                else:
                    buf = add_scaled(
                        self.momentum * state.momentum_buffer[i], g, 1 - self.dampening
                    )
                new_buffers.append(buf)
                g = add_scaled(g, buf, self.momentum) if self.nesterov else buf
            new_params.append(add_scaled(p, g, -self.lr))
        return new_params, SGDState(state.step + 1, new_buffers if use_momentum else None)

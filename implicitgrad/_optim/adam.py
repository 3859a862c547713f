"""Adam and AdamW as pure differentiable updates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from .._errors import InputError
from .._tree import Tree, TreeDef, flatten, unflatten
from .base import (
    AbstractOptimizer,
    Hyper,
    add_scaled,
    check_hyper,
    flatten_like,
    is_zero,
    sqrt_safe,
)

__all__ = ["Adam", "AdamW", "AdamState"]


class AdamState(NamedTuple):
    """State of [`Adam`][implicitgrad.Adam] and [`AdamW`][implicitgrad.AdamW].

    **Fields:**

    - `step`: number of steps taken so far.
    - `exp_avg`: first-moment estimate $m_t$, a tree shaped like the parameters.
    - `exp_avg_sq`: second-moment estimate $v_t$, shaped like the parameters.
    - `max_exp_avg_sq`: running maximum of $v_t$ (`amsgrad=True`), else `None`.
    """

    step: int
    exp_avg: Tree
    exp_avg_sq: Tree
    max_exp_avg_sq: Tree | None


@dataclass(frozen=True, eq=False)  # eq=False: fields may be tensors, which do not compare to bool
class Adam(AbstractOptimizer):
    """Adam (Kingma & Ba, 2015, Algorithm 1), as implemented by `torch.optim.Adam`.

    Step for step the same numbers as `torch.optim.Adam` (without `maximize`), written
    without in-place operations so that it can be differentiated. With gradient $g_t$ and
    step count $t = 1, 2, \\dots$,

    $$\\begin{aligned}
    d_t &= g_t + \\lambda\\,\\theta_{t-1}, \\\\
    m_t &= \\beta_1 m_{t-1} + (1-\\beta_1)\\, d_t, \\qquad
    v_t = \\beta_2 v_{t-1} + (1-\\beta_2)\\, d_t^2, \\\\
    \\theta_t &= \\theta_{t-1} - \\frac{\\eta}{1-\\beta_1^t}\\,
    \\frac{m_t}{\\sqrt{v_t}/\\sqrt{1-\\beta_2^t} + \\epsilon}.
    \\end{aligned}$$

    With `amsgrad=True`, $v_t$ in the denominator is replaced by $\\max_{s\\le t} v_s$
    (Reddi et al., 2018).

    **Arguments:**

    - `lr`: learning rate $\\eta \\ge 0$. A number, or a one-element tensor; a tensor that
      requires grad receives the hypergradient through [`unroll`][implicitgrad.unroll].
    - `betas`: $(\\beta_1, \\beta_2)$, each in $[0, 1)$ (default `(0.9, 0.999)`).
    - `eps`: $\\epsilon \\ge 0$ (default `1e-8`).
    - `weight_decay`: L2 penalty $\\lambda \\ge 0$ added to the gradient (default 0). For
      decoupled weight decay use [`AdamW`][implicitgrad.AdamW].
    - `amsgrad`: use the running maximum of $v_t$ (default `False`).

    Every number may be a one-element tensor, so any of them can be learned.

    !!! note
        Where a gradient entry has been exactly zero for every step so far, $v_t = 0$ and
        $\\partial\\sqrt{v_t}/\\partial v_t$ is infinite. The update uses a square root whose
        derivative there is 0, so hypergradients stay finite; the forward values are
        unchanged.

    **Example:**

    ```python
    import torch, implicitgrad as ig
    opt = ig.Adam(lr=0.1)
    theta = torch.ones(3)
    theta, state = opt.step(theta, 2 * theta, opt.init(theta))
    assert torch.allclose(theta, torch.full((3,), 0.9))   # first Adam step moves by lr
    ```
    """

    lr: Hyper
    betas: tuple[Hyper, Hyper] = (0.9, 0.999)
    eps: Hyper = 1e-8
    weight_decay: Hyper = 0.0
    amsgrad: bool = False

    decoupled_weight_decay: ClassVar[bool] = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_hyper(name, "lr", self.lr)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise InputError(
                f"`{name}(betas=...)` must be a pair (beta1, beta2), got {self.betas!r}."
            )
        check_hyper(name, "betas[0]", self.betas[0], high=1.0, high_open=True)
        check_hyper(name, "betas[1]", self.betas[1], high=1.0, high_open=True)
        check_hyper(name, "eps", self.eps)
        check_hyper(name, "weight_decay", self.weight_decay)
        if not isinstance(self.amsgrad, bool):
            raise InputError(
                f"`{name}(amsgrad=...)` must be a bool, got {type(self.amsgrad).__name__}."
            )

    def init(self, params: Tree) -> AdamState:
        call = f"{type(self).__name__}.init"
        leaves, spec = flatten(params, call=call, name="params")
        for p in leaves:
            if p.is_complex():
                raise InputError(
                    f"`{call}(params=...)` holds a complex tensor; this Adam supports real "
                    "parameters only. Split complex parameters into real and imaginary parts."
                )

        def zeros() -> Tree:
            return unflatten(spec, [torch.zeros_like(p) for p in leaves])

        return AdamState(0, zeros(), zeros(), zeros() if self.amsgrad else None)

    def step(self, params: Tree, grads: Tree, state: AdamState) -> tuple[Tree, AdamState]:
        call = f"{type(self).__name__}.step"
        leaves, spec = flatten(params, call=call, name="params")
        grad_leaves = flatten_like(grads, spec, call=call, name="grads", like=leaves)
        flat = self._flat_state(state, spec, leaves)
        new_leaves, flat = self._step_leaves(leaves, grad_leaves, flat, spec)
        return unflatten(spec, new_leaves), self._tree_state(flat, spec)

    def _flat_state(
        self, state: AdamState, spec: TreeDef, leaves: Sequence[torch.Tensor]
    ) -> AdamState:
        call = f"{type(self).__name__}.step"

        def flat(tree: Tree) -> list[torch.Tensor]:
            return flatten_like(tree, spec, call=call, name="state", like=leaves)

        if self.amsgrad and state.max_exp_avg_sq is None:
            raise InputError(
                f"`{call}(state=...)` has no max_exp_avg_sq but amsgrad=True; create the "
                "state with this optimizer's init()."
            )
        max_sq = flat(state.max_exp_avg_sq) if self.amsgrad else None
        return AdamState(state.step, flat(state.exp_avg), flat(state.exp_avg_sq), max_sq)

    def _tree_state(self, state: AdamState, spec: TreeDef) -> AdamState:
        max_sq = state.max_exp_avg_sq
        return AdamState(
            state.step,
            unflatten(spec, state.exp_avg),
            unflatten(spec, state.exp_avg_sq),
            None if max_sq is None else unflatten(spec, max_sq),
        )

    def _step_leaves(
        self,
        leaves: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        state: AdamState,
        spec: TreeDef,
    ) -> tuple[list[torch.Tensor], AdamState]:
        beta1, beta2 = self.betas
        step = state.step + 1
        # The same order of operations as torch.optim's single-tensor Adam, so that both
        # agree to rounding: bias corrections are folded into the step size and the
        # denominator rather than applied to m and v.
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = self.lr / bias_correction1
        # Decided once per step, not per leaf: `is_zero` reads a tensor hyperparameter.
        decay = not is_zero(self.weight_decay)
        tensor_beta2 = isinstance(beta2, torch.Tensor)
        tensor_step = isinstance(step_size, torch.Tensor)
        new_params, new_m, new_v, new_max = [], [], [], []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            if decay:
                if self.decoupled_weight_decay:
                    p = p * (1 - self.lr * self.weight_decay)
                else:
                    g = add_scaled(g, p, self.weight_decay)
            m = torch.lerp(state.exp_avg[i], g, _like(1 - beta1, g))
            if tensor_beta2:
                v = beta2 * state.exp_avg_sq[i] + (1 - beta2) * (g * g)
            else:
                v = torch.addcmul(beta2 * state.exp_avg_sq[i], g, g, value=1 - beta2)
            new_m.append(m)
            new_v.append(v)
            if self.amsgrad:
                v = torch.maximum(state.max_exp_avg_sq[i], v)
                new_max.append(v)
            denom = sqrt_safe(v) / bias_correction2_sqrt + self.eps
            if tensor_step:
                new_params.append(p - step_size * (m / denom))
            else:
                new_params.append(torch.addcdiv(p, m, denom, value=-step_size))
        return new_params, AdamState(step, new_m, new_v, new_max if self.amsgrad else None)


def _like(weight: Hyper, x: torch.Tensor) -> Hyper:
    """`torch.lerp` wants a tensor weight in the dtype of its inputs."""
    return weight.to(x.dtype) if isinstance(weight, torch.Tensor) else weight


@dataclass(frozen=True, eq=False)
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as `torch.optim.AdamW`.

    The same as [`Adam`][implicitgrad.Adam] except that weight decay shrinks the parameters
    directly instead of entering the gradient and the moment estimates:
    $\\theta_{t-1} \\leftarrow (1 - \\eta\\lambda)\\,\\theta_{t-1}$ before the Adam update, with
    $d_t = g_t$. The default `weight_decay` is `1e-2`, as in PyTorch.

    **Arguments:** those of [`Adam`][implicitgrad.Adam].

    **Example:**

    ```python
    import torch, implicitgrad as ig
    opt = ig.AdamW(lr=0.1, weight_decay=0.5)
    theta = torch.ones(3)
    theta, state = opt.step(theta, torch.zeros(3), opt.init(theta))
    assert torch.allclose(theta, torch.full((3,), 0.95))   # decay only: (1 - 0.1 * 0.5)
    ```
    """

    weight_decay: Hyper = 1e-2

    decoupled_weight_decay: ClassVar[bool] = True

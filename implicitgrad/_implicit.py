"""θ*(φ) as a differentiable function: implicit differentiation inside autograd."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ._errors import StationarityWarning, warn
from ._hypergrad import implicit_vjp
from ._problem import root_condition
from ._solvers.base import AbstractSolver, resolve_solver
from ._tree import Tree, TreeDef, check_uniform, flatten, ravel, unflatten

__all__ = ["implicit"]


@dataclass(frozen=True)
class _Spec:
    inner_loss: Callable[..., Any]
    theta: tuple[torch.Tensor, ...]
    theta_spec: TreeDef
    phi_spec: TreeDef
    solver: AbstractSolver
    stationarity_tol: float | None


class _Implicit(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, spec: _Spec, *phi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.spec = spec
        ctx.save_for_backward(*phi)
        return tuple(t.detach().clone() for t in spec.theta)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grad_theta: torch.Tensor | None) -> tuple[Any, ...]:
        spec: _Spec = ctx.spec
        call = "implicit"
        theta = [t.detach().requires_grad_(True) for t in spec.theta]
        phi = [p.detach().requires_grad_(True) for p in ctx.saved_tensors]
        v = ravel([torch.zeros_like(t) if g is None else g for g, t in zip(grad_theta, theta)])
        with torch.enable_grad():
            cond = root_condition(
                spec.inner_loss, theta, phi, spec.theta_spec, spec.phi_spec, call=call
            )
            if spec.stationarity_tol is not None and cond.stationarity > spec.stationarity_tol:
                warn(
                    f"`implicit`: |∇θ inner_loss| = {cond.stationarity:.3e} > "
                    f"stationarity_tol={spec.stationarity_tol:.1e} at the given inner_params; "
                    "the implicit gradient is biased. Solve the inner problem further, or pass "
                    "stationarity_tol=None.",
                    StationarityWarning,
                )
            grads, used, _ = implicit_vjp(cond, v, spec.solver)
        if not any(used):
            from ._errors import InputError

            raise InputError(
                "`implicit`: inner_loss does not depend on outer_params, so θ* does not depend "
                "on φ. Check that inner_loss uses its second argument."
            )
        return (
            None,
            *[g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[1:])],
        )


def implicit(
    inner_loss: Callable[[Any, Any], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    solver: AbstractSolver | str | None = None,
    *,
    stationarity_tol: float | None = 1e-3,
) -> Tree:
    """Return the inner solution θ* as a differentiable function of φ.

    The returned tensors have the values of `inner_params` (an approximate solution of
    $\\min_\\theta f(\\theta, \\phi)$, computed however you like, e.g. with `torch.optim`)
    and a gradient path to `outer_params`: in the backward pass an incoming gradient
    $v = \\partial \\ell/\\partial\\theta^*$ is mapped to
    $-\\,(\\partial^2 f/\\partial\\phi\\partial\\theta)\\, H^{-1} v$ by the implicit function
    theorem, with $H^{-1}v$ from `solver`. Any loss built on the result therefore
    backpropagates the hypergradient into φ, on top of any direct dependence on φ, and
    composes with `torch.optim`.

    **Arguments:**

    - `inner_loss`: `inner_loss(θ, φ) -> scalar`, the inner objective $f$.
    - `inner_params`: θ at the inner solution (values only; their own autograd history is
      cut).
    - `outer_params`: φ; at least one leaf must require grad.
    - `solver`: as in [`hypergrad`][implicitgrad.hypergrad] (default
      [`CG()`][implicitgrad.CG]).
    - `stationarity_tol`: warn in the backward pass if $\\lVert\\nabla_\\theta f\\rVert$
      exceeds it; `None` switches the check off.

    **Returns:**

    θ* with the structure of `inner_params`.

    **Example:**

    ```python
    import torch, implicitgrad as ig
    inner = lambda t, p: 0.5 * 3.0 * (t ** 2).sum() - (t * p).sum()   # θ* = φ / 3
    phi = torch.ones(2, requires_grad=True)
    theta = ig.implicit(inner, (phi / 3).detach(), phi, solver=ig.CG(tol=1e-10))
    (theta.sum() + phi.sum()).backward()
    assert torch.allclose(phi.grad, torch.full((2,), 1 + 1 / 3))
    ```
    """
    call = "implicit"
    solver = resolve_solver(solver, call=call)
    theta_leaves, theta_spec = flatten(inner_params, call=call, name="inner_params")
    phi_leaves, phi_spec = flatten(outer_params, call=call, name="outer_params", require_grad=True)
    check_uniform(theta_leaves, theta_spec, call=call, name="inner_params")
    spec = _Spec(
        inner_loss=inner_loss,
        theta=tuple(t.detach() for t in theta_leaves),
        theta_spec=theta_spec,
        phi_spec=phi_spec,
        solver=solver,
        stationarity_tol=stationarity_tol,
    )
    out = _Implicit.apply(spec, *phi_leaves)
    return unflatten(theta_spec, list(out))

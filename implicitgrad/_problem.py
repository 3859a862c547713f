"""Shared machinery of the implicit entry points: calling user losses, building operators.

Every entry point (`hypergrad`, `fixed_point_hypergrad`, `implicit`) reduces to the same
three steps: differentiate the optimality condition once with `create_graph=True`, hand the
solver a matrix-free operator that reuses that graph, and finish with one mixed
vector-Jacobian product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import ImplicitGradError, InputError
from ._solvers.base import LinearOperator
from ._tree import TreeDef, describe, leaf_path, ravel, unflatten, unravel

__all__ = ["call_scalar", "call_tree", "Condition", "grad_or_zeros"]


def _wrap_user_error(
    call: str, fn_name: str, err: Exception, theta_spec: Any, phi_spec: Any
) -> InputError:
    return InputError(
        f"`{call}`: calling {fn_name}(inner_params, outer_params) raised "
        f"{type(err).__name__}: {err}. Check that inner_params and outer_params have the "
        f"structure {fn_name} expects; it received inner_params={theta_spec} and "
        f"outer_params={phi_spec}."
    )


def _invoke(fn: Callable[..., Any], theta: Any, phi: Any, *, call: str, fn_name: str) -> Any:
    try:
        return fn(theta, phi)
    except ImplicitGradError:
        raise
    except Exception as err:
        raise _wrap_user_error(call, fn_name, err, describe(theta), describe(phi)) from err


def call_scalar(
    fn: Callable[..., Any], theta: Any, phi: Any, *, call: str, fn_name: str
) -> torch.Tensor:
    """Call a user loss and check that it returns a real scalar tensor."""
    out = _invoke(fn, theta, phi, call=call, fn_name=fn_name)
    if not isinstance(out, torch.Tensor):
        raise InputError(
            f"`{call}`: {fn_name} must return a scalar torch.Tensor, got {type(out).__name__}."
        )
    if out.numel() != 1:
        raise InputError(
            f"`{call}`: {fn_name} must return a scalar, got a tensor of shape "
            f"{tuple(out.shape)}. Reduce it, e.g. with .mean() or .sum()."
        )
    if not out.is_floating_point():
        raise InputError(f"`{call}`: {fn_name} returned dtype {out.dtype}; it must be floating.")
    return out.reshape(())


def call_tree(
    fn: Callable[..., Any],
    theta: Any,
    phi: Any,
    like: Sequence[torch.Tensor],
    spec: TreeDef,
    *,
    call: str,
    fn_name: str,
) -> list[torch.Tensor]:
    """Call a user update map and check its output has the structure of `inner_params`."""
    import torch.utils._pytree as pytree

    out = _invoke(fn, theta, phi, call=call, fn_name=fn_name)
    leaves, out_spec = pytree.tree_flatten(out)
    if out_spec != spec or any(
        not isinstance(o, torch.Tensor) or o.shape != t.shape for o, t in zip(leaves, like)
    ):
        raise InputError(
            f"`{call}`: {fn_name}(inner_params, outer_params) must return a tree with the "
            f"same structure and shapes as inner_params ({describe(unflatten(spec, like))}), "
            f"got {describe(out)}."
        )
    return list(leaves)


def grad_or_zeros(
    outputs: torch.Tensor | Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    grad_outputs: Any = None,
    *,
    retain_graph: bool = True,
    create_graph: bool = False,
) -> tuple[list[torch.Tensor], list[bool]]:
    """`torch.autograd.grad` returning zeros for unused inputs, plus which inputs were used."""
    grads = torch.autograd.grad(
        outputs,
        list(inputs),
        grad_outputs=grad_outputs,
        retain_graph=retain_graph,
        create_graph=create_graph,
        allow_unused=True,
    )
    used = [g is not None for g in grads]
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)], used


@dataclass
class Condition:
    """The differentiated optimality condition $F(\\theta, \\phi) = 0$, graph kept.

    For the root form $F = \\nabla_\\theta f$ and the operator is $H = \\partial F/\\partial
    \\theta$ (symmetric). For the fixed-point form the stored output is $T(\\theta, \\phi)$
    and the operator is $I - (\\partial T/\\partial \\theta)^\\top$.
    """

    output: list[torch.Tensor]
    theta: list[torch.Tensor]
    phi: list[torch.Tensor]
    fixed_point: bool
    stationarity: float

    def operator(self) -> LinearOperator:
        theta, output = self.theta, self.output
        fixed_point = self.fixed_point

        def vjp(v: torch.Tensor) -> torch.Tensor:
            grads = torch.autograd.grad(
                output,
                theta,
                grad_outputs=unravel(v, theta),
                retain_graph=True,
                allow_unused=True,
            )
            return ravel([torch.zeros_like(t) if g is None else g for g, t in zip(grads, theta)])

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return v - vjp(v) if fixed_point else vjp(v)

        def batched(vs: torch.Tensor) -> torch.Tensor:
            grads = torch.autograd.grad(
                output,
                theta,
                grad_outputs=[
                    g.reshape(vs.shape[0], *t.shape) for g, t in zip(_split_rows(vs, theta), theta)
                ],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            flat = torch.cat(
                [
                    (
                        torch.zeros(vs.shape[0], t.numel(), dtype=vs.dtype, device=vs.device)
                        if g is None
                        else g.reshape(vs.shape[0], -1)
                    )
                    for g, t in zip(grads, theta)
                ],
                dim=1,
            )
            return vs - flat if fixed_point else flat

        first = theta[0]
        return LinearOperator(
            matvec=matvec,
            size=sum(t.numel() for t in theta),
            dtype=first.dtype,
            device=first.device,
            symmetric=not fixed_point,
            fixed_point=fixed_point,
            batched_matvec=batched,
        )

    def mixed_vjp(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[bool]]:
        """$(\\partial F/\\partial \\phi)^\\top x$ and which φ leaves it reached."""
        return grad_or_zeros(
            self.output, self.phi, grad_outputs=unravel(x, self.theta), retain_graph=False
        )


def _split_rows(vs: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        out.append(vs[:, start : start + t.numel()])
        start += t.numel()
    return out


def root_condition(
    inner_loss: Callable[..., Any],
    theta: list[torch.Tensor],
    phi: list[torch.Tensor],
    theta_spec: TreeDef,
    phi_spec: TreeDef,
    *,
    call: str,
) -> Condition:
    """Differentiate $f$ once with the graph kept: $F = \\nabla_\\theta f(\\theta, \\phi)$."""
    f = call_scalar(
        inner_loss,
        unflatten(theta_spec, theta),
        unflatten(phi_spec, phi),
        call=call,
        fn_name="inner_loss",
    )
    grads = torch.autograd.grad(f, theta, create_graph=True, allow_unused=True)
    for i, g in enumerate(grads):
        if g is None:
            raise InputError(
                f"`{call}`: inner_loss does not depend on inner_params leaf "
                f"{leaf_path(theta_spec, i)}, so its Hessian is singular. Remove that leaf from "
                "inner_params (pass it through a closure instead), or check the tree structure."
            )
    output = list(grads)
    stationarity = float(torch.linalg.vector_norm(ravel([g.detach() for g in output])))
    return Condition(output, theta, phi, fixed_point=False, stationarity=stationarity)


def fixed_point_condition(
    update: Callable[..., Any],
    theta: list[torch.Tensor],
    phi: list[torch.Tensor],
    theta_spec: TreeDef,
    phi_spec: TreeDef,
    *,
    call: str,
) -> Condition:
    """Evaluate the update map once with the graph kept: $T(\\theta, \\phi)$."""
    output = call_tree(
        update,
        unflatten(theta_spec, theta),
        unflatten(phi_spec, phi),
        theta,
        theta_spec,
        call=call,
        fn_name="update",
    )
    if not any(o.requires_grad for o in output):
        raise InputError(
            f"`{call}`: update(inner_params, outer_params) returned tensors with no gradient "
            "path to its inputs. If it computes a gradient internally, use "
            "torch.autograd.grad(..., create_graph=True) or torch.func.grad, and do not "
            "detach or use torch.no_grad() inside it."
        )
    stationarity = float(
        torch.linalg.vector_norm(ravel([(o - t).detach() for o, t in zip(output, theta)]))
    )
    return Condition(output, theta, phi, fixed_point=True, stationarity=stationarity)

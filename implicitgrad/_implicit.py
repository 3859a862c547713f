"""θ*(φ) as a differentiable function: implicit differentiation inside autograd."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._batching import Batch, under_transform, vmap_rule
from ._distributed import DataParallel, Reducer, bind
from ._errors import InputError
from ._hypergrad import check_inputs, check_stationarity, prepare, solve_adjoint
from ._problem import Condition, Form, build_condition, check_finite_leaves, grad_or_zeros
from ._solvers.base import AbstractSolver
from ._solvers.registry import resolve_solver
from ._tree import Tree, TreeDef, unflatten

__all__ = ["implicit", "implicit_solution"]


@dataclass(frozen=True)
class _Spec:
    form: Form
    theta_spec: TreeDef
    phi_spec: TreeDef
    solver: AbstractSolver
    stationarity_tol: float | None
    call: str
    batch: Batch | None = None
    dp: Reducer | None = None


def _leaves(theta: list[torch.Tensor], phi: list[torch.Tensor]):
    return [t.detach().requires_grad_(True) for t in theta], [
        p.detach().requires_grad_(True) for p in phi
    ]


def _vjp(
    spec: _Spec, theta: list[torch.Tensor], phi: list[torch.Tensor], g: list[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The implicit part $\\mp(\\partial F/\\partial\\phi)^\\top A^{-1}v$ for the cotangent `g`,
    and the linear solution $A^{-1}v$."""
    call = spec.call
    theta, phi = _leaves(theta, phi)
    g = [x.detach() for x in g]
    size = None if spec.batch is None else spec.batch.size
    with torch.enable_grad():
        cond = build_condition(
            spec.form,
            theta,
            phi,
            spec.theta_spec,
            spec.phi_spec,
            call=call,
            batch_size=size,
            reduce=None if spec.dp is None else spec.dp.mean_,
        )
        check_stationarity(call, cond, spec.stationarity_tol)
        if spec.dp is not None:
            # The cotangent of the mean outer loss; reduced before the finiteness check so
            # that every process takes the same branch. The mixed product stays this
            # process's contribution (`DataParallel.reduce_grads` completes it).
            g = cond.unravel(spec.dp.mean_(cond.ravel(g).clone()))
        check_finite_leaves(
            g,
            spec.theta_spec,
            call=call,
            what="the gradient reaching inner_params",
            error=InputError,
        )
        parts, used, solution = solve_adjoint(
            cond,
            cond.ravel(g),
            spec.solver,
            specs=(spec.theta_spec, spec.phi_spec),
            call=call,
            dp=spec.dp,
        )
    if not any(used):
        raise InputError(
            f"`{call}`: {spec.form.name} does not depend on outer_params, so θ* does not depend "
            "on φ. Check that it uses its second argument."
        )
    return parts, solution.value


class _ImplicitFn(torch.autograd.Function):
    """θ* (values of the given inner parameters) with the implicit-function-theorem gradient."""

    @staticmethod
    def forward(spec: _Spec, n: int, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_inputs(
            list(leaves[:n]), list(leaves[n:]), spec.theta_spec, spec.phi_spec, call=spec.call
        )
        return tuple(t.detach().clone() for t in leaves[:n])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        ctx.spec, ctx.n = inputs[0], inputs[1]
        ctx.save_for_backward(*inputs[2:])

    @staticmethod
    def backward(ctx: Any, *grad_theta: torch.Tensor | None) -> tuple[Any, ...]:
        spec, n = ctx.spec, ctx.n
        saved = ctx.saved_tensors
        theta, phi = list(saved[:n]), list(saved[n:])
        g = [torch.zeros_like(t) if x is None else x for x, t in zip(grad_theta, theta)]
        if under_transform():
            # torch.func runs every backward with grad mode on; its own transforms decide the
            # order, and a second one reaches `_ImplicitVJPFn.backward`, which says it cannot.
            parts = list(_ImplicitVJPFn.apply(spec, n, len(phi), *theta, *phi, *g)[:-1])
        elif torch.is_grad_enabled():
            # create_graph=True: the result must itself be differentiable in φ, through θ*(φ).
            _check_second_order(spec)
            theta_star = list(_ImplicitFn.apply(spec, n, *theta, *phi))
            out = _ImplicitVJPFn.apply(spec, n, len(phi), *theta_star, *phi, *g)
            parts = list(out[:-1])
        else:
            parts, _ = _vjp(spec, theta, phi, g)
        needs = ctx.needs_input_grad[2 + n :]
        return (None, None, *([None] * n), *[p if k else None for p, k in zip(parts, needs)])

    @staticmethod
    def vmap(info: Any, in_dims: tuple, spec: _Spec, n: int, *leaves: torch.Tensor) -> Any:
        return vmap_rule(
            info, in_dims[2:], leaves, spec, lambda s, xs: _ImplicitFn.apply(s, n, *xs)
        )

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        raise InputError(
            f"`{ctx.spec.call}`: forward-mode differentiation (torch.func.jvp, jacfwd, hessian) "
            "through the implicit solution is not supported. Use reverse mode: "
            "torch.func.jacrev, or torch.autograd.grad(..., create_graph=True) twice for "
            "second derivatives."
        )


def _check_second_order(spec: _Spec) -> None:
    if spec.dp is not None:
        raise InputError(
            f"`{spec.call}`: second-order derivatives (create_graph=True) through the implicit "
            "solution are not available with data_parallel=; differentiate once, or run in "
            "one process."
        )
    if spec.form.fixed_point or spec.batch is not None or under_transform():
        where = (
            "the fixed-point form"
            if spec.form.fixed_point
            else "a batch of problems"
            if spec.batch is not None
            else "torch.func transforms"
        )
        raise InputError(
            f"`{spec.call}`: second-order derivatives (create_graph=True) through the implicit "
            f"solution are supported for one root-form problem with torch.autograd, not for "
            f"{where}. Differentiate twice with torch.autograd.grad(..., create_graph=True) on "
            "ig.implicit(inner_loss, ...) outside torch.func transforms."
        )


class _ImplicitVJPFn(torch.autograd.Function):
    """$(\\theta, \\phi, v) \\mapsto -(\\partial F/\\partial\\phi)^\\top H^{-1} v$, differentiable
    once more (second-order derivatives through `implicit`)."""

    @staticmethod
    def forward(spec: _Spec, n: int, m: int, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        theta, phi, g = list(leaves[:n]), list(leaves[n : n + m]), list(leaves[n + m :])
        parts, w = _vjp(spec, theta, phi, g)
        return (*parts, w)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.spec, ctx.n, ctx.m = inputs[0], inputs[1], inputs[2]
        ctx.mark_non_differentiable(output[-1])
        ctx.save_for_backward(*inputs[3 : 3 + inputs[1] + inputs[2]], output[-1])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[Any, ...]:
        spec, n, m = ctx.spec, ctx.n, ctx.m
        _check_second_order(spec)
        if torch.is_grad_enabled():
            raise InputError(
                f"`{spec.call}`: derivatives of third order and higher through the implicit "
                "solution are not supported; second order is."
            )
        saved = ctx.saved_tensors
        theta, phi, w = _leaves(list(saved[:n]), list(saved[n : n + m])) + (saved[-1],)
        u_bar = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[:m], phi)]
        with torch.enable_grad():
            f = spec.form.fn(unflatten(spec.theta_spec, theta), unflatten(spec.phi_spec, phi))
            big_f = torch.autograd.grad(f, theta, create_graph=True)
            f_phi, _ = grad_or_zeros(f, phi, create_graph=True)
            # s = (∂F/∂φ) ū = ∇θ <∇φ f, ū>
            dot = sum((a * b).sum() for a, b in zip(f_phi, u_bar))
            s, _ = grad_or_zeros(dot, theta) if dot.requires_grad else ([0 * t for t in theta], 0)
            cond = Condition(spec.form, list(big_f), theta, phi, 0.0)
            z = spec.solver.solve(cond.operator(), cond.ravel(s)).value
            # Q = <∇θ<F,w>, z> - <∇φ<F,w>, ū> with w, z, ū fixed; ∇Q is the rest of the VJP.
            e = sum((a * b).sum() for a, b in zip(big_f, cond.unravel(w)))
            e_grads, _ = grad_or_zeros(e, theta + phi, create_graph=True)
            q = sum((a * b).sum() for a, b in zip(e_grads[:n], cond.unravel(z))) - sum(
                (a * b).sum() for a, b in zip(e_grads[n:], u_bar)
            )
            q_grads, _ = grad_or_zeros(q, theta + phi, retain_graph=False)
        g_bar = [-x for x in cond.unravel(z)]
        return (None, None, None, *q_grads, *g_bar)

    @staticmethod
    def vmap(info: Any, in_dims: tuple, spec: _Spec, n: int, m: int, *leaves: torch.Tensor) -> Any:
        return vmap_rule(
            info, in_dims[3:], leaves, spec, lambda s, xs: _ImplicitVJPFn.apply(s, n, m, *xs)
        )


def implicit_solution(
    form: Form,
    inner_params: Tree,
    outer_params: Tree,
    solver: AbstractSolver | str | None,
    *,
    stationarity_tol: float | None,
    call: str,
    data_parallel: DataParallel | None = None,
) -> Tree:
    """θ* differentiable in φ by the implicit function theorem, for either form."""
    solver = resolve_solver(solver, call=call, symmetric=form.symmetric)
    dp = bind(data_parallel, outer_params, call=call)
    theta, theta_spec = prepare(inner_params, call=call, name="inner_params", uniform=True)
    phi, phi_spec = prepare(
        outer_params, call=call, name="outer_params", require_grad=not under_transform()
    )
    spec = _Spec(form, theta_spec, phi_spec, solver, stationarity_tol, call, dp=dp)
    out = _ImplicitFn.apply(spec, len(theta), *[t.detach() for t in theta], *phi)
    return unflatten(theta_spec, list(out))


def implicit(
    inner_loss: Callable[[Any, Any], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    solver: AbstractSolver | str | None = None,
    *,
    stationarity_tol: float | None = 1e-3,
    data_parallel: DataParallel | None = None,
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

    **Composition.** It works under `torch.func.grad`, `vjp`, `jacrev` and `vmap` (a vmapped
    batch of problems is solved in one call, each problem on its own residual; the solver
    must support batches: CG, Neumann, Identity). Second-order derivatives work with
    `torch.autograd.grad(..., create_graph=True)`: differentiating the hypergradient again
    differentiates $H$, the mixed derivative and θ*(φ) itself, which costs one more linear
    solve. Third-order derivatives, and second order under torch.func transforms, raise
    [`InputError`][implicitgrad.InputError].

    **Arguments:**

    - `inner_loss`: `inner_loss(θ, φ) -> scalar`, the inner objective $f$.
    - `inner_params`: θ at the inner solution (values only; their own autograd history is
      cut).
    - `outer_params`: φ; at least one leaf must require grad.
    - `solver`: as in [`hypergrad`][implicitgrad.hypergrad] (default
      [`CG()`][implicitgrad.CG]).
    - `stationarity_tol`: warn in the backward pass if $\\lVert\\nabla_\\theta f\\rVert$
      exceeds it; `None` switches the check off.
    - `data_parallel`: an [`ig.DataParallel`][implicitgrad.DataParallel]: `inner_loss` is
      this process's term of the mean over processes; the backward pass averages the
      incoming gradient and every product, and leaves in `.grad` this process's
      contribution (complete it with `DataParallel.reduce_grads`).

    **Returns:**

    θ* with the structure of `inner_params`.

    **Example:**

    ```python
    import torch, implicitgrad as ig
    inner = lambda t, p: 0.5 * 3.0 * (t ** 2).sum() - (t * p).sum()   # θ* = φ / 3
    phi = torch.ones(2, requires_grad=True)
    theta = ig.implicit(inner, (phi / 3).detach(), phi, solver=ig.CG(tol=1e-6))
    (theta.sum() + phi.sum()).backward()
    assert torch.allclose(phi.grad, torch.full((2,), 1 + 1 / 3))
    ```
    """
    return implicit_solution(
        Form(inner_loss, fixed_point=False, symmetric=True),
        inner_params,
        outer_params,
        solver,
        stationarity_tol=stationarity_tol,
        call="implicit",
        data_parallel=data_parallel,
    )

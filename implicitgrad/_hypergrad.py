"""Hypergradients by the implicit function theorem: root and fixed-point forms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch

from ._batching import Batch, under_transform, vmap_rule
from ._distributed import DataParallel, Reducer, bind
from ._errors import InputError, SolverError, StationarityWarning, warn
from ._problem import (
    Condition,
    Form,
    NoDoubleBackward,
    build_condition,
    call_scalar,
    check_finite_leaves,
    func_condition,
    grad_or_zeros,
)
from ._solvers.base import AbstractSolver, Solution
from ._solvers.registry import resolve_solver
from ._tree import Tree, TreeDef, check_uniform, flatten, leaf_path, unflatten

__all__ = ["HypergradInfo", "hypergrad", "fixed_point_hypergrad", "prepare", "solve_adjoint"]


@dataclass(frozen=True)
class HypergradInfo:
    """Diagnostics of one hypergradient computation.

    **Fields:**

    - `solver`: the solver object used.
    - `iterations`: matrix-vector products (Hessian- or Jacobian-vector products) the solve
      spent.
    - `residual`: the true final relative residual $\\lVert Ax - v\\rVert / \\lVert v\\rVert$
      of the linear solve, or `None` where the solver does not compute it.
    - `converged`: whether the solve met its tolerance (`None` for fixed series such as
      `Neumann` and `Identity`).
    - `stationarity`: $\\lVert\\nabla_\\theta f(\\theta,\\phi)\\rVert$ (root form) or
      $\\lVert T(\\theta,\\phi) - \\theta\\rVert$ (fixed-point form) at the given $\\theta$.
      Implicit differentiation assumes it is zero; a large value means the inner problem is
      not solved and the hypergradient is biased.
    - `preconditioner_products`: of `iterations`, the products spent building the solver's
      preconditioner in this call (0 without one, or when an earlier build was reused).
    - `linear_solution`: the flat solution $x \\approx A^{-1}v$ of the linear system
      (detached), useful to warm-start the next solve.
    - `batch_residual`, `batch_iterations`, `batch_converged`, `batch_stationarity`: with
      `batched=True`, one entry per problem (tensors of length $B$); `None` otherwise. The
      scalar fields then hold the worst case over the batch.
    """

    solver: AbstractSolver
    iterations: int
    residual: float | None
    converged: bool | None
    stationarity: float
    linear_solution: torch.Tensor
    batch_residual: torch.Tensor | None = None
    batch_iterations: torch.Tensor | None = None
    batch_converged: torch.Tensor | None = None
    batch_stationarity: torch.Tensor | None = None
    preconditioner_products: int = 0


def prepare(
    tree: Tree, *, call: str, name: str, require_grad: bool = False, uniform: bool = False
) -> tuple[list[torch.Tensor], TreeDef]:
    """Flatten and validate one parameter tree of a public call (real, floating)."""
    leaves, spec = flatten(tree, call=call, name=name, require_grad=require_grad)
    if uniform:
        check_uniform(leaves, spec, call=call, name=name)
    return leaves, spec


def check_inputs(
    theta: list[torch.Tensor],
    phi: list[torch.Tensor],
    theta_spec: TreeDef,
    phi_spec: TreeDef,
    *,
    call: str,
) -> None:
    """NaN/Inf in the parameters is an error naming the leaf (run where tensors are plain,
    inside the Functions' forward passes under torch.func transforms)."""
    check_finite_leaves(theta, theta_spec, call=call, what="inner_params", error=InputError)
    check_finite_leaves(phi, phi_spec, call=call, what="outer_params", error=InputError)


def check_stationarity(call: str, cond: Condition, tol: float | None) -> None:
    if tol is not None and cond.stationarity > tol:
        warn(
            f"`{call}`: the inner parameters are not stationary: {cond.form.what()} = "
            f"{cond.stationarity:.3e} > stationarity_tol={tol:.1e}. The implicit function "
            "theorem assumes a solved inner problem, so the hypergradient is biased. Solve "
            "the inner problem further, or pass stationarity_tol=None if this is intended "
            "(e.g. one-step approximations).",
            StationarityWarning,
        )


def solve_adjoint(
    cond: Condition,
    v: torch.Tensor,
    solver: AbstractSolver,
    *,
    x0: torch.Tensor | None = None,
    specs: tuple[TreeDef, TreeDef] | None = None,
    call: str = "hypergrad",
    dp: Reducer | None = None,
) -> tuple[list[torch.Tensor], list[bool], Solution]:
    """Solve $A x = v$ and map $x$ to $\\phi$: the implicit part of the hypergradient.

    Returns the leaves of $-(\\partial F/\\partial\\phi)^\\top x$ (root form) or
    $+(\\partial T/\\partial\\phi)^\\top x$ (fixed-point form), which φ leaves the condition
    reached, and the solver's `Solution`. Where the condition's graph cannot be
    differentiated again (a `torch.compile`d loss) the products are formed with torch.func.
    With `dp` every product is averaged over the processes (the mixed product is left
    local: the caller reduces it).
    """
    try:
        op = cond.operator()
        solution = solver.solve(op if dp is None else dp.operator(op), v, x0)
    except NoDoubleBackward:
        if specs is None:
            raise
        cond = func_condition(cond, *specs, call=call)
        op = cond.operator()
        solution = solver.solve(op if dp is None else dp.operator(op), v, x0)
    mixed, used = cond.implicit_part(solution.value)
    return mixed, used, solution


@dataclass(frozen=True)
class _Call:
    """Everything about one hypergradient call except its tensors."""

    form: Form
    outer_loss: Callable[..., Any]
    theta_spec: TreeDef
    phi_spec: TreeDef
    solver: AbstractSolver
    call: str
    stationarity_tol: float | None
    batch: Batch | None = None
    dp: Reducer | None = None


def _compute(
    c: _Call, theta_leaves: list[torch.Tensor], phi_leaves: list[torch.Tensor], x0: Any
) -> tuple[list[torch.Tensor], HypergradInfo]:
    call, form = c.call, c.form
    size = None if c.batch is None else c.batch.size
    theta = [t.detach().requires_grad_(True) for t in theta_leaves]
    phi = [p.detach().requires_grad_(True) for p in phi_leaves]
    with torch.enable_grad():
        cond = build_condition(
            form,
            theta,
            phi,
            c.theta_spec,
            c.phi_spec,
            call=call,
            batch_size=size,
            reduce=None if c.dp is None else c.dp.mean_,
        )
        g = call_scalar(
            c.outer_loss,
            unflatten(c.theta_spec, theta),
            unflatten(c.phi_spec, phi),
            call=call,
            fn_name="outer_loss",
            batched=size is not None,
        )
        grads, used_outer = grad_or_zeros(g, theta + phi, retain_graph=False)
    n = len(theta)
    if not any(used_outer[:n]):
        raise InputError(
            f"`{call}`: outer_loss does not depend on inner_params, so the inner problem plays "
            "no part in the hypergradient. Check that outer_loss uses its first argument "
            "(the inner parameters)."
        )
    check_stationarity(call, cond, c.stationarity_tol)
    v = cond.ravel(grads[:n])
    if c.dp is not None:
        v = c.dp.mean_(v.clone())
    if x0 is not None:
        x0 = _check_warm_start(x0, v, call=call)
    try:
        implicit_part, used_inner, solution = solve_adjoint(
            cond, v, c.solver, x0=x0, specs=(c.theta_spec, c.phi_spec), call=call, dp=c.dp
        )
    except SolverError:
        # Name the culprit where the inputs explain the failure (no cost when all is well).
        check_inputs(theta, phi, c.theta_spec, c.phi_spec, call=call)
        check_finite_leaves(
            grads[:n],
            c.theta_spec,
            call=call,
            what="the gradient of outer_loss w.r.t. inner_params",
            error=InputError,
        )
        raise
    for i in range(len(phi)):
        if not used_inner[i] and not used_outer[n + i]:
            raise InputError(
                f"`{call}`: outer_params leaf {leaf_path(c.phi_spec, i)} is used by neither "
                f"{form.name} nor outer_loss, so its hypergradient is undefined. Remove it "
                "from outer_params, or check the tree structure the losses expect."
            )
    if not any(used_inner):
        raise InputError(
            f"`{call}`: {form.name} does not depend on outer_params, so θ* does not depend on "
            "φ and the implicit term is identically zero. Check that it uses its second "
            "argument (the outer parameters)."
        )
    hg = [(d + m).detach() for d, m in zip(grads[n:], implicit_part)]
    if c.dp is not None:
        hg = c.dp.outer(hg)
    try:
        check_finite_leaves(
            hg,
            c.phi_spec,
            call=call,
            what="the hypergradient w.r.t. outer_params",
            error=InputError,
        )
    except InputError:
        check_inputs(theta, phi, c.theta_spec, c.phi_spec, call=call)
        check_finite_leaves(
            grads[n:],
            c.phi_spec,
            call=call,
            what="the gradient of outer_loss w.r.t. outer_params",
            error=InputError,
        )
        raise
    info = HypergradInfo(
        solver=c.solver,
        iterations=solution.iterations,
        residual=solution.residual,
        converged=solution.converged,
        stationarity=cond.stationarity,
        linear_solution=solution.value.detach(),
        batch_residual=solution.batch_residual,
        batch_iterations=solution.batch_iterations,
        batch_converged=solution.batch_converged,
        batch_stationarity=cond.batch_stationarity,
        preconditioner_products=solution.preconditioner_products,
    )
    return hg, info


def _check_warm_start(x0: Any, v: torch.Tensor, *, call: str) -> torch.Tensor:
    if isinstance(x0, HypergradInfo):
        x0 = x0.linear_solution
    if not isinstance(x0, torch.Tensor) or x0.shape != v.shape:
        got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise InputError(
            f"`{call}(warm_start=...)` must be the HypergradInfo of a previous call (or its "
            f"flat linear_solution of shape {tuple(v.shape)}), got {got}."
        )
    if not bool(torch.isfinite(x0).all()):
        raise InputError(f"`{call}(warm_start=...)` holds NaN or Inf; start from None instead.")
    return x0.detach().to(dtype=v.dtype, device=v.device)


class _HypergradFn(torch.autograd.Function):
    """`hypergrad` under torch.func transforms: its forward runs on plain tensors, and its
    vmap rule solves the batch of problems in one call."""

    @staticmethod
    def forward(c: _Call, n_theta: int, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hg, _ = _compute(c, list(leaves[:n_theta]), list(leaves[n_theta:]), None)
        return tuple(hg)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        ctx.call = inputs[0].call

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise InputError(
            f"`{ctx.call}` returns a detached hypergradient and cannot be differentiated. To "
            "differentiate through the inner solution, build the outer loss on "
            "ig.implicit(inner_loss, inner_params, outer_params) instead."
        )

    @staticmethod
    def vmap(info: Any, in_dims: tuple, c: _Call, n_theta: int, *leaves: torch.Tensor) -> Any:
        return vmap_rule(
            info, in_dims[2:], leaves, c, lambda c2, xs: _HypergradFn.apply(c2, n_theta, *xs)
        )


def _entry(
    form: Form,
    outer_loss: Callable[..., Any],
    inner_params: Tree,
    outer_params: Tree,
    solver: AbstractSolver | str | None,
    *,
    call: str,
    return_info: bool,
    stationarity_tol: float | None,
    warm_start: Any,
    batched: bool,
    data_parallel: DataParallel | None = None,
) -> Any:
    solver = resolve_solver(solver, call=call, symmetric=form.symmetric)
    dp = bind(data_parallel, outer_params, call=call)
    theta, theta_spec = prepare(inner_params, call=call, name="inner_params", uniform=True)
    phi, phi_spec = prepare(outer_params, call=call, name="outer_params")
    batch = Batch.of(theta + phi, call=call) if batched else None
    c = _Call(form, outer_loss, theta_spec, phi_spec, solver, call, stationarity_tol, batch, dp)
    if under_transform():
        if return_info or warm_start is not None or batched:
            raise InputError(
                f"`{call}` under torch.func transforms returns the hypergradient only: "
                "return_info, warm_start and batched are not available there. For per-problem "
                "diagnostics of a batch, call it once with batched=True instead of vmap."
            )
        hg = list(_HypergradFn.apply(c, len(theta), *theta, *phi))
    else:
        hg, info = _compute(c, theta, phi, warm_start)
    result = unflatten(phi_spec, hg)
    return (result, info) if return_info else result


@overload
def hypergrad(
    inner_loss: Callable[[Any, Any], torch.Tensor],
    outer_loss: Callable[[Any, Any], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    solver: AbstractSolver | str | None = ...,
    *,
    return_info: Literal[False] = ...,
    stationarity_tol: float | None = ...,
    warm_start: HypergradInfo | torch.Tensor | None = ...,
    batched: bool = ...,
    data_parallel: DataParallel | None = ...,
) -> Tree: ...


@overload
def hypergrad(
    inner_loss: Callable[[Any, Any], torch.Tensor],
    outer_loss: Callable[[Any, Any], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    solver: AbstractSolver | str | None = ...,
    *,
    return_info: Literal[True],
    stationarity_tol: float | None = ...,
    warm_start: HypergradInfo | torch.Tensor | None = ...,
    batched: bool = ...,
    data_parallel: DataParallel | None = ...,
) -> tuple[Tree, HypergradInfo]: ...


def hypergrad(
    inner_loss: Callable[[Any, Any], torch.Tensor],
    outer_loss: Callable[[Any, Any], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    solver: AbstractSolver | str | None = None,
    *,
    return_info: bool = False,
    stationarity_tol: float | None = 1e-3,
    warm_start: HypergradInfo | torch.Tensor | None = None,
    batched: bool = False,
    data_parallel: DataParallel | None = None,
) -> Tree | tuple[Tree, HypergradInfo]:
    """Hypergradient of a bilevel problem by the implicit function theorem.

    For $\\theta^*(\\phi) \\in \\arg\\min_\\theta f(\\theta, \\phi)$ and the outer objective
    $g(\\theta^*(\\phi), \\phi)$, the stationarity condition
    $\\nabla_\\theta f(\\theta^*, \\phi) = 0$ gives

    $$\\frac{\\mathrm{d}g}{\\mathrm{d}\\phi} = \\frac{\\partial g}{\\partial \\phi}
    - \\frac{\\partial^2 f}{\\partial\\phi\\,\\partial\\theta}\\, H^{-1}
    \\frac{\\partial g}{\\partial\\theta}, \\qquad H = \\frac{\\partial^2 f}{\\partial\\theta^2},$$

    evaluated at the given `inner_params`, which should be an (approximate) inner solution:
    this function does not solve the inner problem (see [`minimize`][implicitgrad.minimize]
    for one that does). $H^{-1}v$ comes from `solver`. The cost is one gradient of $f$ (its
    graph reused by every Hessian-vector product), the solver's Hessian-vector products, one
    gradient of $g$ and one mixed vector-Jacobian product.

    NaN or Inf in the parameters, the gradients or the result raise
    [`InputError`][implicitgrad.InputError] naming the leaf. The function composes with
    `torch.func.vmap` (a batch of problems is solved in one call, each on its own residual);
    `batched=True` does the same without vmap and returns per-problem diagnostics.

    **Arguments:**

    - `inner_loss`: `inner_loss(θ, φ) -> scalar`, the inner objective $f$.
    - `outer_loss`: `outer_loss(θ, φ) -> scalar`, the outer objective $g$.
    - `inner_params`: $\\theta$ at (approximately) the inner solution: a tensor or a nested
      tuple/list/dict of real floating tensors on one device and dtype.
    - `outer_params`: $\\phi$, a tensor or nested tuple/list/dict of real floating tensors.
    - `solver`: an [`AbstractSolver`][implicitgrad.AbstractSolver] (default
      [`CG()`][implicitgrad.CG]) or one of the shorthands `"cg"`, `"gmres"`, `"bicgstab"`,
      `"neumann"`, `"identity"`, `"exact"`, `"nystrom"`.
    - `return_info`: also return a [`HypergradInfo`][implicitgrad.HypergradInfo].
    - `stationarity_tol`: warn with [`StationarityWarning`][implicitgrad.StationarityWarning]
      if $\\lVert\\nabla_\\theta f\\rVert$ exceeds it; `None` switches the check off.
    - `warm_start`: the `HypergradInfo` of a previous call (or its `linear_solution`): the
      iterative solve starts from there instead of zero. Pays off when the linear system
      changes little between outer steps.
    - `batched`: every leaf of `inner_params` and `outer_params` carries a leading dimension
      of $B$ independent problems; the losses are written for one problem (they are
      evaluated with `torch.func.vmap`). The solver must support batches (CG, Neumann,
      Identity).
    - `data_parallel`: an [`ig.DataParallel`][implicitgrad.DataParallel]: each process
      passes losses over its shard of the data, and every process gets the hypergradient
      of the mean losses over all processes (one `all_reduce` of $n$ floats per product).

    **Returns:**

    $\\mathrm{d}g/\\mathrm{d}\\phi$ with the structure of `outer_params` (detached tensors),
    and the `HypergradInfo` if `return_info=True`.

    **Example:** ridge regression with a learned L2 weight.

    ```python
    import torch, implicitgrad as ig
    torch.manual_seed(0)
    X, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    Xv, yv = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    inner = lambda w, lam: ((X @ w - y) ** 2).mean() + lam.exp() * (w ** 2).sum()
    outer = lambda w, lam: ((Xv @ w - yv) ** 2).mean()
    lam = torch.tensor(-1.0, dtype=torch.float64)
    A = X.T @ X / 20 + lam.exp() * torch.eye(3, dtype=torch.float64)
    w_star = torch.linalg.solve(A, X.T @ y / 20)
    hg, info = ig.hypergrad(inner, outer, w_star, lam, solver=ig.CG(tol=1e-12),
                            return_info=True)
    print(hg, info.iterations, info.converged)
    ```
    """
    return _entry(
        Form(inner_loss, fixed_point=False, symmetric=True),
        outer_loss,
        inner_params,
        outer_params,
        solver,
        call="hypergrad",
        return_info=return_info,
        stationarity_tol=stationarity_tol,
        warm_start=warm_start,
        batched=batched,
        data_parallel=data_parallel,
    )


def fixed_point_hypergrad(
    update: Callable[[Any, Any], Any],
    outer_loss: Callable[[Any, Any], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    solver: AbstractSolver | str | None = None,
    *,
    return_info: bool = False,
    stationarity_tol: float | None = 1e-3,
    warm_start: HypergradInfo | torch.Tensor | None = None,
    symmetric: bool = False,
    batched: bool = False,
    data_parallel: DataParallel | None = None,
) -> Tree | tuple[Tree, HypergradInfo]:
    """Hypergradient at a fixed point $\\theta^* = T(\\theta^*, \\phi)$.

    Differentiating the fixed-point equation gives, with $J = \\partial T/\\partial\\theta$,

    $$\\frac{\\mathrm{d}g}{\\mathrm{d}\\phi} = \\frac{\\partial g}{\\partial\\phi}
    + \\Big(\\frac{\\partial T}{\\partial\\phi}\\Big)^{\\!\\top} w, \\qquad
    (I - J)^\\top w = \\frac{\\partial g}{\\partial\\theta}.$$

    $T$ is any contraction near $\\theta^*$: an optimizer step (with momentum, Adam-like
    preconditioning), an equilibrium layer. The system $(I - J)^\\top$ is in general **not
    symmetric**, so the default solver is [`GMRES`][implicitgrad.GMRES], which is exact in
    the limit for every such system; [`BiCGStab`][implicitgrad.BiCGStab],
    [`Neumann`][implicitgrad.Neumann] (with `alpha=1.0` the adjoint fixed-point iteration
    $w = \\sum_j (J^\\top)^j v$) and [`Exact`][implicitgrad.Exact] fit too. Solvers that
    assume symmetry (CG, Nyström) refuse it with [`InputError`][implicitgrad.InputError].

    If $T$ is a gradient step $T(\\theta,\\phi) = \\theta - \\alpha\\nabla_\\theta f(\\theta,
    \\phi)$, then $I - J = \\alpha H$ is symmetric: say so with `symmetric=True`, and the
    default becomes [`CG`][implicitgrad.CG]; the result equals
    [`hypergrad`][implicitgrad.hypergrad] on $f$.

    **Arguments:**

    - `update`: `update(θ, φ)` returning a tree shaped like `inner_params`. If it takes a
      gradient inside, that gradient must keep its graph (`torch.autograd.grad(...,
      create_graph=True)` or `torch.func.grad`).
    - `outer_loss`, `inner_params`, `outer_params`, `return_info`, `stationarity_tol`,
      `warm_start`, `batched`, `data_parallel`: as in [`hypergrad`][implicitgrad.hypergrad];
      stationarity is measured as $\\lVert T(\\theta,\\phi) - \\theta\\rVert$.
    - `solver`: an [`AbstractSolver`][implicitgrad.AbstractSolver] or a shorthand; default
      [`GMRES()`][implicitgrad.GMRES], or [`CG()`][implicitgrad.CG] with `symmetric=True`.
    - `symmetric`: declare that $\\partial T/\\partial\\theta$ is symmetric (a gradient step
      of a twice-differentiable loss). A wrong declaration gives wrong results.

    **Returns:**

    $\\mathrm{d}g/\\mathrm{d}\\phi$ with the structure of `outer_params`, and the
    `HypergradInfo` if `return_info=True`.

    **Example:** a momentum-free gradient step, with the series in the map's own step.

    ```python
    import torch, implicitgrad as ig
    inner = lambda t, p: 0.5 * 3.0 * (t ** 2).sum() - (t * p).sum()   # θ* = φ / 3
    def update(t, p, lr=0.1):
        (g,) = torch.autograd.grad(inner(t, p), t, create_graph=True)
        return t - lr * g
    phi = torch.ones(2, dtype=torch.float64)
    hg = ig.fixed_point_hypergrad(update, lambda t, p: t.sum(), phi / 3, phi,
                                  solver=ig.Neumann(terms=1, alpha=1.0))
    assert torch.allclose(hg, torch.full((2,), 0.17, dtype=torch.float64))
    exact = ig.fixed_point_hypergrad(update, lambda t, p: t.sum(), phi / 3, phi)  # GMRES
    assert torch.allclose(exact, torch.full((2,), 1 / 3, dtype=torch.float64))
    ```
    """
    return _entry(
        Form(update, fixed_point=True, symmetric=bool(symmetric)),
        outer_loss,
        inner_params,
        outer_params,
        solver,
        call="fixed_point_hypergrad",
        return_info=return_info,
        stationarity_tol=stationarity_tol,
        warm_start=warm_start,
        batched=batched,
        data_parallel=data_parallel,
    )

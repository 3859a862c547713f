"""Hypergradients by the implicit function theorem: root and fixed-point forms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch

from ._errors import InputError, StationarityWarning, warn
from ._problem import Condition, call_scalar, fixed_point_condition, grad_or_zeros, root_condition
from ._solvers.base import AbstractSolver, resolve_solver
from ._tree import Tree, TreeDef, check_uniform, flatten, leaf_path, ravel, unflatten

__all__ = ["HypergradInfo", "hypergrad", "fixed_point_hypergrad"]


@dataclass(frozen=True)
class HypergradInfo:
    """Diagnostics of one hypergradient computation.

    **Fields:**

    - `solver`: the solver object used.
    - `iterations`: matrix-vector products (Hessian- or Jacobian-vector products) the solve
      spent.
    - `residual`: final relative residual $\\lVert Ax - v\\rVert / \\lVert v\\rVert$ of the
      linear solve, or `None` where the solver does not compute it.
    - `converged`: whether the solve met its tolerance (`None` for fixed series such as
      `Neumann` and `Identity`).
    - `stationarity`: $\\lVert\\nabla_\\theta f(\\theta,\\phi)\\rVert$ (root form) or
      $\\lVert T(\\theta,\\phi) - \\theta\\rVert$ (fixed-point form) at the given $\\theta$.
      Implicit differentiation assumes it is zero; a large value means the inner problem is
      not solved and the hypergradient is biased.
    - `linear_solution`: the flat solution $x \\approx A^{-1}v$ of the linear system
      (detached), useful to warm-start the next solve.
    """

    solver: AbstractSolver
    iterations: int
    residual: float | None
    converged: bool | None
    stationarity: float
    linear_solution: torch.Tensor


def _prepare(
    inner_params: Tree, outer_params: Tree, *, call: str
) -> tuple[list[torch.Tensor], TreeDef, list[torch.Tensor], TreeDef]:
    theta_leaves, theta_spec = flatten(inner_params, call=call, name="inner_params")
    phi_leaves, phi_spec = flatten(outer_params, call=call, name="outer_params")
    check_uniform(theta_leaves, theta_spec, call=call, name="inner_params")
    theta = [t.detach().requires_grad_(True) for t in theta_leaves]
    phi = [p.detach().requires_grad_(True) for p in phi_leaves]
    return theta, theta_spec, phi, phi_spec


def _check_stationarity(call: str, cond: Condition, tol: float | None) -> None:
    if tol is not None and cond.stationarity > tol:
        what = "|T(θ, φ) - θ|" if cond.fixed_point else "|∇θ inner_loss|"
        warn(
            f"`{call}`: the inner parameters are not stationary: {what} = "
            f"{cond.stationarity:.3e} > stationarity_tol={tol:.1e}. The implicit function "
            "theorem assumes a solved inner problem, so the hypergradient is biased. Solve "
            "the inner problem further, or pass stationarity_tol=None if this is intended "
            "(e.g. one-step approximations).",
            StationarityWarning,
        )


def implicit_vjp(
    cond: Condition,
    v: torch.Tensor,
    solver: AbstractSolver,
    *,
    x0: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[bool], Any]:
    """Solve $A x = v$ and map $x$ to $\\phi$: the implicit part of the hypergradient.

    Returns the leaves of $-(\\partial F/\\partial\\phi)^\\top x$ (root form) or
    $+(\\partial T/\\partial\\phi)^\\top x$ (fixed-point form), which φ leaves the condition
    reached, and the solver's `Solution`.
    """
    solution = solver.solve(cond.operator(), v, x0)
    mixed, used = cond.mixed_vjp(solution.value)
    if not cond.fixed_point:
        mixed = [-m for m in mixed]
    return mixed, used, solution


def _finish(
    cond: Condition,
    outer_loss: Callable[..., Any],
    theta_spec: TreeDef,
    phi_spec: TreeDef,
    solver: AbstractSolver,
    *,
    call: str,
    inner_name: str,
    return_info: bool,
    stationarity_tol: float | None,
    x0: torch.Tensor | None,
) -> Any:
    theta, phi = cond.theta, cond.phi
    g = call_scalar(
        outer_loss,
        unflatten(theta_spec, theta),
        unflatten(phi_spec, phi),
        call=call,
        fn_name="outer_loss",
    )
    grads, used_outer = grad_or_zeros(g, theta + phi, retain_graph=False)
    if not any(used_outer[: len(theta)]):
        raise InputError(
            f"`{call}`: outer_loss does not depend on inner_params, so the inner problem plays "
            "no part in the hypergradient. Check that outer_loss uses its first argument "
            "(the inner parameters)."
        )
    _check_stationarity(call, cond, stationarity_tol)
    v = ravel(grads[: len(theta)])
    if x0 is not None:
        x0 = _check_warm_start(x0, v, call=call)
    implicit_part, used_inner, solution = implicit_vjp(cond, v, solver, x0=x0)
    for i in range(len(phi)):
        if not used_inner[i] and not used_outer[len(theta) + i]:
            raise InputError(
                f"`{call}`: outer_params leaf {leaf_path(phi_spec, i)} is used by neither "
                f"{inner_name} nor outer_loss, so its hypergradient is undefined. Remove it "
                "from outer_params, or check the tree structure the losses expect."
            )
    if not any(used_inner):
        raise InputError(
            f"`{call}`: {inner_name} does not depend on outer_params, so θ* does not depend on "
            "φ and the implicit term is identically zero. Check that it uses its second "
            "argument (the outer parameters)."
        )
    direct = grads[len(theta) :]
    hg = [(d + m).detach() for d, m in zip(direct, implicit_part)]
    result = unflatten(phi_spec, hg)
    if not return_info:
        return result
    info = HypergradInfo(
        solver=solver,
        iterations=solution.iterations,
        residual=solution.residual,
        converged=solution.converged,
        stationarity=cond.stationarity,
        linear_solution=solution.value.detach(),
    )
    return result, info


def _check_warm_start(x0: Any, v: torch.Tensor, *, call: str) -> torch.Tensor:
    if isinstance(x0, HypergradInfo):
        x0 = x0.linear_solution
    if not isinstance(x0, torch.Tensor) or x0.shape != v.shape:
        got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise InputError(
            f"`{call}(warm_start=...)` must be the HypergradInfo of a previous call (or its "
            f"flat linear_solution of shape {tuple(v.shape)}), got {got}."
        )
    return x0.detach().to(dtype=v.dtype, device=v.device)


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
) -> Tree | tuple[Tree, HypergradInfo]:
    """Hypergradient of a bilevel problem by the implicit function theorem.

    For $\\theta^*(\\phi) \\in \\arg\\min_\\theta f(\\theta, \\phi)$ and the outer objective
    $g(\\theta^*(\\phi), \\phi)$, the stationarity condition
    $\\nabla_\\theta f(\\theta^*, \\phi) = 0$ gives

    $$\\frac{\\mathrm{d}g}{\\mathrm{d}\\phi} = \\frac{\\partial g}{\\partial \\phi}
    - \\frac{\\partial^2 f}{\\partial\\phi\\,\\partial\\theta}\\, H^{-1}
    \\frac{\\partial g}{\\partial\\theta}, \\qquad H = \\frac{\\partial^2 f}{\\partial\\theta^2},$$

    evaluated at the given `inner_params`, which should be an (approximate) inner solution:
    this function does not solve the inner problem. $H^{-1}v$ comes from `solver`. The cost
    is one gradient of $f$ (its graph reused by every Hessian-vector product), the solver's
    Hessian-vector products, one gradient of $g$ and one mixed vector-Jacobian product.

    **Arguments:**

    - `inner_loss`: `inner_loss(θ, φ) -> scalar`, the inner objective $f$.
    - `outer_loss`: `outer_loss(θ, φ) -> scalar`, the outer objective $g$.
    - `inner_params`: $\\theta$ at (approximately) the inner solution: a tensor or a nested
      tuple/list/dict of floating tensors on one device and dtype.
    - `outer_params`: $\\phi$, a tensor or nested tuple/list/dict of floating tensors.
    - `solver`: an [`AbstractSolver`][implicitgrad.AbstractSolver] (default
      [`CG()`][implicitgrad.CG]) or one of the shorthands `"cg"`, `"neumann"`,
      `"identity"`, `"exact"`.
    - `return_info`: also return a [`HypergradInfo`][implicitgrad.HypergradInfo].
    - `stationarity_tol`: warn with [`StationarityWarning`][implicitgrad.StationarityWarning]
      if $\\lVert\\nabla_\\theta f\\rVert$ exceeds it; `None` switches the check off.
    - `warm_start`: the `HypergradInfo` of a previous call (or its `linear_solution`): the
      iterative solve starts from there instead of zero. Pays off when the linear system
      changes little between outer steps.

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
    call = "hypergrad"
    solver = resolve_solver(solver, call=call)
    theta, theta_spec, phi, phi_spec = _prepare(inner_params, outer_params, call=call)
    with torch.enable_grad():
        cond = root_condition(inner_loss, theta, phi, theta_spec, phi_spec, call=call)
        return _finish(
            cond,
            outer_loss,
            theta_spec,
            phi_spec,
            solver,
            call=call,
            inner_name="inner_loss",
            return_info=return_info,
            stationarity_tol=stationarity_tol,
            x0=warm_start,
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
) -> Tree | tuple[Tree, HypergradInfo]:
    """Hypergradient at a fixed point $\\theta^* = T(\\theta^*, \\phi)$.

    Differentiating the fixed-point equation gives, with $J = \\partial T/\\partial\\theta$,

    $$\\frac{\\mathrm{d}g}{\\mathrm{d}\\phi} = \\frac{\\partial g}{\\partial\\phi}
    + \\Big(\\frac{\\partial T}{\\partial\\phi}\\Big)^{\\!\\top} w, \\qquad
    (I - J)^\\top w = \\frac{\\partial g}{\\partial\\theta}.$$

    $T$ is typically one optimizer step, e.g. $T(\\theta,\\phi) = \\theta - \\alpha\\nabla_\\theta
    f(\\theta, \\phi)$, for which $I - J = \\alpha H$ and the result equals
    [`hypergrad`][implicitgrad.hypergrad] on $f$. With
    [`Neumann(terms=K, alpha=α)`][implicitgrad.Neumann] it reproduces the estimator of
    Lorraine et al. (2020) and *Teaching with Commentaries* exactly,
    $-\\partial^2 f/\\partial\\phi\\partial\\theta\\; \\alpha\\sum_{j=0}^K (I - \\alpha H)^j v$.

    The system $(I - J)^\\top$ is symmetric only when $T$ is a gradient step;
    [`CG`][implicitgrad.CG] assumes symmetry, while [`Neumann`][implicitgrad.Neumann] and
    [`Exact`][implicitgrad.Exact] do not.

    **Arguments:**

    - `update`: `update(θ, φ)` returning a tree shaped like `inner_params`. If it takes a
      gradient inside, that gradient must keep its graph (`torch.autograd.grad(...,
      create_graph=True)` or `torch.func.grad`).
    - `outer_loss`, `inner_params`, `outer_params`, `solver`, `return_info`,
      `stationarity_tol`, `warm_start`: as in [`hypergrad`][implicitgrad.hypergrad];
      stationarity is measured as $\\lVert T(\\theta,\\phi) - \\theta\\rVert$.

    **Returns:**

    $\\mathrm{d}g/\\mathrm{d}\\phi$ with the structure of `outer_params`, and the
    `HypergradInfo` if `return_info=True`.

    **Example:**

    ```python
    import torch, implicitgrad as ig
    inner = lambda t, p: 0.5 * 3.0 * (t ** 2).sum() - (t * p).sum()   # θ* = φ / 3
    def update(t, p, lr=0.1):
        (g,) = torch.autograd.grad(inner(t, p), t, create_graph=True)
        return t - lr * g
    phi = torch.ones(2)
    hg = ig.fixed_point_hypergrad(update, lambda t, p: t.sum(), phi / 3, phi,
                                  solver=ig.Neumann(terms=1, alpha=0.1))
    assert torch.allclose(hg, torch.full((2,), 0.17))
    ```
    """
    call = "fixed_point_hypergrad"
    solver = resolve_solver(solver, call=call)
    theta, theta_spec, phi, phi_spec = _prepare(inner_params, outer_params, call=call)
    with torch.enable_grad():
        cond = fixed_point_condition(update, theta, phi, theta_spec, phi_spec, call=call)
        return _finish(
            cond,
            outer_loss,
            theta_spec,
            phi_spec,
            solver,
            call=call,
            inner_name="update",
            return_info=return_info,
            stationarity_tol=stationarity_tol,
            x0=warm_start,
        )

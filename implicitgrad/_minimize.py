"""Solve the inner problem and return θ* differentiable by the chosen adjoint."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._adjoint import AbstractAdjoint, ImplicitAdjoint
from ._distributed import DataParallel, bind
from ._errors import ConvergenceWarning, DivergenceError, InputError, warn
from ._implicit import implicit_solution
from ._optim.base import AbstractOptimizer
from ._problem import Form
from ._solvers.base import AbstractSolver
from ._tree import Tree, flatten, unflatten
from ._unroll import UnrollInfo, unroll

__all__ = ["minimize", "fixed_point", "FixedPointInfo"]


def _check_adjoint(adjoint: Any, call: str) -> AbstractAdjoint:
    if adjoint is None:
        return ImplicitAdjoint()
    if not isinstance(adjoint, AbstractAdjoint):
        raise InputError(
            f"`{call}(adjoint=...)` must be ig.ImplicitAdjoint(...) or ig.UnrollAdjoint(...), "
            f"got {adjoint!r}."
        )
    return adjoint


class _Recording:
    """Iterate over `batches`, remembering the last batch handed out."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches, self.last, self.count = batches, None, 0

    def __iter__(self):
        for batch in self.batches:
            self.last, self.count = batch, self.count + 1
            yield batch


@dataclass
class _Minimization:
    train_loss: Callable[..., torch.Tensor]
    inner_params: Tree
    outer_params: Tree
    batches: Iterable[Any] | None
    optimizer: AbstractOptimizer
    steps: int | None
    optimizer_state: Any
    buffers: Any
    differentiate_init: bool
    data_parallel: DataParallel | None = None

    def run(self, *, differentiable: bool, truncate: int | None, checkpoint: bool | int) -> Any:
        self._recorder = None if self.batches is None else _Recording(self.batches)
        batches = self._recorder
        if batches is not None and self.steps is None and hasattr(self.batches, "__len__"):
            steps = len(self.batches)  # type: ignore[arg-type]
        else:
            steps = self.steps
        # Without a graph (the implicit adjoint) this is plain training under no_grad.
        with contextlib.nullcontext() if differentiable else torch.no_grad():
            return unroll(
                self.train_loss,
                self.inner_params,
                self.outer_params,
                batches,
                self.optimizer,
                steps=steps,
                truncate=truncate if differentiable else None,
                checkpoint=checkpoint if differentiable else False,
                differentiate_init=self.differentiate_init and differentiable,
                optimizer_state=self.optimizer_state,
                buffers=self.buffers,
                return_info=True,
                data_parallel=self.data_parallel,
            )

    def implicit(
        self, theta: Tree, solver: AbstractSolver | str | None, stationarity_tol: float | None
    ) -> Tree:
        recorder = self._recorder
        batch = None if recorder is None else recorder.last
        step = (self.steps or 0) - 1 if recorder is None else recorder.count - 1
        loss = self.train_loss

        def inner_loss(t: Tree, p: Tree) -> torch.Tensor:
            return loss(t, p, batch, step)

        return implicit_solution(
            Form(inner_loss, fixed_point=False, symmetric=True),
            theta,
            self.outer_params,
            solver,
            stationarity_tol=stationarity_tol,
            call="minimize",
            data_parallel=self.data_parallel,
        )


def minimize(
    train_loss: Callable[[Tree, Tree, Any, int], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    batches: Iterable[Any] | None,
    optimizer: AbstractOptimizer,
    *,
    steps: int | None = None,
    adjoint: AbstractAdjoint | None = None,
    optimizer_state: Any = None,
    buffers: nn.Module | Tree | None = None,
    differentiate_init: bool = False,
    return_info: bool = False,
    data_parallel: DataParallel | None = None,
) -> Tree | tuple[Tree, UnrollInfo]:
    """Minimize the inner loss and return θ* as a differentiable function of φ.

    Runs `optimizer` on `train_loss(θ, φ, batch, step)` for `steps` steps (one per batch,
    or full batch with `batches=None`), as [`unroll`][implicitgrad.unroll] does, and
    returns the final parameters with a gradient path to `outer_params` chosen by
    `adjoint`:

    - [`ImplicitAdjoint(solver)`][implicitgrad.ImplicitAdjoint] (default): train without a
      graph, then differentiate the stationarity $\\nabla_\\theta \\ell(\\theta^*, \\phi,
      b_{N-1}) = 0$ of the loss on the last batch by the implicit function theorem (exact
      for full-batch training run to convergence). Memory does not grow with `steps`.
    - [`UnrollAdjoint(truncate, checkpoint)`][implicitgrad.UnrollAdjoint]: differentiate
      through the steps that were run.

    **Arguments:**

    - `train_loss`, `inner_params`, `outer_params`, `batches`, `optimizer`, `steps`,
      `optimizer_state`, `buffers`, `differentiate_init`: as in
      [`unroll`][implicitgrad.unroll] (`differentiate_init` matters only for the unrolled
      adjoint: the implicit solution does not depend on where training started).
    - `adjoint`: how to differentiate.
    - `return_info`: also return the [`UnrollInfo`][implicitgrad.UnrollInfo] of the
      training run (its `state` continues training with `optimizer_state=`).
    - `data_parallel`: an [`ig.DataParallel`][implicitgrad.DataParallel]: `train_loss` is
      this process's shard; training averages every step's gradient, both adjoints
      differentiate the global problem, and `.grad` receives this process's contribution
      (complete it with `DataParallel.reduce_grads`).

    **Returns:**

    θ* with the structure of `inner_params`, and the info with `return_info=True`.

    **Example:** the same hypergradient both ways on a strongly convex problem.

    ```python
    import torch, implicitgrad as ig
    torch.manual_seed(0)
    X, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    loss = lambda w, lam, batch, step: ((X @ w - y) ** 2).mean() + lam * (w ** 2).sum()
    grads = []
    for adjoint in [ig.ImplicitAdjoint(ig.CG(tol=1e-10)), ig.UnrollAdjoint()]:
        lam = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
        w = ig.minimize(loss, torch.zeros(3, dtype=torch.float64), lam, None,
                        ig.SGD(lr=0.2), steps=300, adjoint=adjoint)
        w.sum().backward()
        grads.append(lam.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-6)
    ```
    """
    call = "minimize"
    adjoint = _check_adjoint(adjoint, call)
    problem = _Minimization(
        train_loss,
        inner_params,
        outer_params,
        batches,
        optimizer,
        steps,
        optimizer_state,
        buffers,
        differentiate_init,
        data_parallel,
    )
    try:
        theta, info = adjoint.apply(problem)
    except (InputError, DivergenceError) as err:
        # minimize trains with unroll; its messages should name the call the user made.
        if str(err).startswith("`unroll"):
            raise type(err)("`minimize" + str(err)[len("`unroll") :]) from err
        raise
    return (theta, info) if return_info else theta


@dataclass(frozen=True)
class FixedPointInfo:
    """What happened in [`fixed_point`][implicitgrad.fixed_point].

    **Fields:** `steps` (iterations run), `residual` ($\\lVert T(\\theta) - \\theta\\rVert /
    (1 + \\lVert\\theta\\rVert)$ at the end), `converged` (whether it met `tol`).
    """

    steps: int
    residual: float
    converged: bool


@dataclass
class _FixedPoint:
    update: Callable[[Tree, Tree], Tree]
    inner_params: Tree
    outer_params: Tree
    max_steps: int
    tol: float
    data_parallel: DataParallel | None = None
    symmetric: bool = False

    def __post_init__(self) -> None:
        self._phi_detached = _detach(self.outer_params)

    def run(self, *, differentiable: bool, truncate: int | None, checkpoint: bool | int) -> Any:
        call = "fixed_point"
        if checkpoint:
            raise InputError(
                "`fixed_point(adjoint=ig.UnrollAdjoint(checkpoint=...))`: checkpointing is not "
                "available for fixed-point iterations; use truncate=k or ig.ImplicitAdjoint()."
            )
        leaves, spec = flatten(self.inner_params, call=call, name="inner_params")
        theta = unflatten(spec, [t.detach() for t in leaves])
        keep = self.max_steps if truncate is None else truncate
        residual = math.inf
        steps = 0
        dp = bind(self.data_parallel, None, call=call)
        for steps in range(1, self.max_steps + 1):
            graph = differentiable and steps > self.max_steps - keep
            # Grad mode stays on in every step, so that an update map which differentiates
            # inside (a gradient step) works; steps that are not differentiated start from
            # detached leaves, so their graphs are freed at once.
            inputs = [
                x if graph and x.requires_grad else x.detach().requires_grad_() for x in leaves
            ]
            with torch.enable_grad():
                new = self.update(
                    unflatten(spec, inputs), self.outer_params if graph else self._phi_detached
                )
            new_leaves, new_spec = flatten(new, call=call, name="update(...)")
            if new_spec != spec:
                raise InputError(
                    "`fixed_point`: update(inner_params, outer_params) must return a tree shaped "
                    "like inner_params."
                )
            if dp is not None:
                # The global map is the mean of the processes' maps.
                flat = torch.cat([x.reshape(-1) for x in new_leaves])
                flat = dp.mean_autograd(flat) if graph else dp.mean_(flat.detach())
                chunks = flat.split([x.numel() for x in new_leaves])
                new_leaves = [c.view_as(x) for c, x in zip(chunks, new_leaves)]
                new = unflatten(spec, new_leaves)
            gap = torch.stack(
                [torch.linalg.vector_norm((a - b).detach()) for a, b in zip(new_leaves, leaves)]
            )
            size = torch.stack([torch.linalg.vector_norm(a.detach()) for a in new_leaves])
            residual = float(torch.linalg.vector_norm(gap)) / (
                1 + float(torch.linalg.vector_norm(size))
            )
            if not math.isfinite(residual):
                raise DivergenceError(
                    f"`fixed_point`: the iterates became NaN or Inf at step {steps}: the update "
                    "map is not a contraction here. Check the map, or damp it."
                )
            if not graph:
                new_leaves = [x.detach() for x in new_leaves]
                new = unflatten(spec, new_leaves)
            theta, leaves = new, new_leaves
            if residual <= self.tol and not (differentiable and truncate is None):
                break
        converged = residual <= self.tol
        if not converged:
            warn(
                f"`fixed_point`: not converged after max_steps={self.max_steps}: relative step "
                f"{residual:.3e} > tol {self.tol:.1e}. Raise max_steps, or check that the update "
                "map is a contraction.",
                ConvergenceWarning,
            )
        return theta, FixedPointInfo(steps, residual, converged)

    def implicit(
        self, theta: Tree, solver: AbstractSolver | str | None, stationarity_tol: float | None
    ) -> Tree:
        return implicit_solution(
            Form(self.update, fixed_point=True, symmetric=self.symmetric),
            theta,
            self.outer_params,
            solver,
            stationarity_tol=stationarity_tol,
            call="fixed_point",
            data_parallel=self.data_parallel,
        )


def _detach(tree: Tree) -> Tree:
    import torch.utils._pytree as pytree

    return pytree.tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, tree)


def fixed_point(
    update: Callable[[Tree, Tree], Tree],
    inner_params: Tree,
    outer_params: Tree,
    *,
    max_steps: int = 100,
    tol: float = 1e-6,
    adjoint: AbstractAdjoint | None = None,
    return_info: bool = False,
    data_parallel: DataParallel | None = None,
    symmetric: bool = False,
) -> Tree | tuple[Tree, FixedPointInfo]:
    """Iterate $\\theta \\leftarrow T(\\theta, \\phi)$ to its fixed point, differentiably in φ.

    The forward pass iterates the map from `inner_params` until the relative step
    $\\lVert T(\\theta) - \\theta\\rVert / (1 + \\lVert\\theta\\rVert)$ falls below `tol` (an
    equilibrium layer, a deep-equilibrium model). With the default
    [`ImplicitAdjoint`][implicitgrad.ImplicitAdjoint] the backward pass solves the adjoint
    system $(I - \\partial T/\\partial\\theta)^\\top w = v$ (GMRES by default: the Jacobian of
    a general map is not symmetric); with [`UnrollAdjoint`][implicitgrad.UnrollAdjoint] it
    backpropagates through all `max_steps` iterations (or the last `truncate`).

    **Arguments:**

    - `update`: `update(θ, φ)` returning a tree shaped like θ; a contraction near θ*.
    - `inner_params`: the starting point.
    - `outer_params`: φ.
    - `max_steps`, `tol`: the stopping rule of the forward iteration.
    - `adjoint`: how to differentiate (default `ImplicitAdjoint()`).
    - `return_info`: also return a [`FixedPointInfo`][implicitgrad.FixedPointInfo].
    - `symmetric`: declare $\\partial T/\\partial\\theta$ symmetric (a gradient step), as in
      [`fixed_point_hypergrad`][implicitgrad.fixed_point_hypergrad]; the implicit adjoint
      then defaults to CG and accepts it.
    - `data_parallel`: an [`ig.DataParallel`][implicitgrad.DataParallel]: `update` is this
      process's term; the global map is their mean (one `all_reduce` per iteration), and
      `.grad` receives this process's contribution (complete it with
      `DataParallel.reduce_grads`).

    Raises [`DivergenceError`][implicitgrad.DivergenceError] when the iterates become
    non-finite, and warns with `ConvergenceWarning` when `max_steps` is reached first.

    **Example:** $T(\\theta, \\phi) = \\tfrac12\\theta + \\phi$ has $\\theta^* = 2\\phi$.

    ```python
    import torch, implicitgrad as ig
    phi = torch.ones(3, dtype=torch.float64, requires_grad=True)
    theta = ig.fixed_point(lambda t, p: 0.5 * t + p, torch.zeros(3, dtype=torch.float64), phi,
                           max_steps=200, tol=1e-12)
    theta.sum().backward()
    assert torch.allclose(phi.grad, torch.full((3,), 2.0, dtype=torch.float64))
    ```
    """
    call = "fixed_point"
    adjoint = _check_adjoint(adjoint, call)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise InputError(f"`fixed_point(max_steps=...)` must be a positive int, got {max_steps!r}.")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise InputError(f"`fixed_point(tol=...)` must be a float >= 0, got {tol!r}.")
    problem = _FixedPoint(
        update, inner_params, outer_params, max_steps, float(tol), data_parallel, bool(symmetric)
    )
    theta, info = adjoint.apply(problem)
    return (theta, info) if return_info else theta

"""How to differentiate an inner solution: the implicit and the unrolled adjoint.

How to differentiate is one choice, how to invert a linear system another: the implicit
adjoint takes any solver, the unrolled one needs none. Both implement one method,
`apply(problem)`, on the inner problems of [`minimize`][implicitgrad.minimize] and
[`fixed_point`][implicitgrad.fixed_point].
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Protocol

from ._errors import InputError
from ._solvers.base import AbstractSolver
from ._tree import Tree

__all__ = ["AbstractAdjoint", "ImplicitAdjoint", "UnrollAdjoint", "InnerProblem"]


class InnerProblem(Protocol):
    """What an adjoint needs from an inner problem (see `_minimize.py`).

    - `run(differentiable, truncate, checkpoint)` solves it from its initial parameters,
      keeping the gradient path to the outer parameters through the last `truncate` steps
      when `differentiable`; it returns the solution and an info object.
    - `implicit(theta, solver, stationarity_tol)` returns `theta` with the gradient of the
      implicit function theorem applied to the problem's optimality condition.
    """

    def run(self, *, differentiable: bool, truncate: int | None, checkpoint: bool | int) -> Any: ...

    def implicit(
        self, theta: Tree, solver: AbstractSolver | str | None, stationarity_tol: float | None
    ) -> Tree: ...


class AbstractAdjoint(abc.ABC):
    """Base class of the ways to differentiate the solution of an inner problem.

    **Contract.** An adjoint is a small frozen dataclass with one method,
    `apply(problem) -> (θ*, info)`, which solves `problem` (an
    [`InnerProblem`][implicitgrad._adjoint.InnerProblem]) and returns its solution carrying
    a gradient path to the outer parameters. Plugins and users choose how to differentiate
    by passing an adjoint object; nothing dispatches on its type.
    """

    @abc.abstractmethod
    def apply(self, problem: InnerProblem) -> tuple[Tree, Any]:
        """Solve `problem` and return `(θ*, info)`, θ* differentiable in φ."""


@dataclass(frozen=True)
class ImplicitAdjoint(AbstractAdjoint):
    """Differentiate by the implicit function theorem at the computed solution.

    The inner problem is solved without recording a graph (memory independent of the number
    of steps), then its optimality condition at the solution is differentiated: for
    [`minimize`][implicitgrad.minimize] $\\nabla_\\theta f = 0$ of the loss of the last step,
    for [`fixed_point`][implicitgrad.fixed_point] $\\theta = T(\\theta, \\phi)$. Exact when the
    inner problem is solved; `stationarity_tol` warns when it is not.

    **Arguments:**

    - `solver`: how to invert the linear system (default: CG for the root form, GMRES for
      the fixed-point form), an [`AbstractSolver`][implicitgrad.AbstractSolver] or a
      shorthand.
    - `stationarity_tol`: as in [`hypergrad`][implicitgrad.hypergrad]; `None` switches the
      check off (one-step methods such as *Teaching with Commentaries*' Algorithm 2).

    **Example:**

    ```python
    import torch, implicitgrad as ig
    inner = lambda t, p, batch, step: 0.5 * 3.0 * (t ** 2).sum() - (t * p).sum()
    phi = torch.ones(2, requires_grad=True)
    theta = ig.minimize(inner, torch.zeros(2), phi, None, ig.SGD(lr=0.3), steps=60,
                        adjoint=ig.ImplicitAdjoint(ig.CG(tol=1e-6)))
    theta.sum().backward()
    assert torch.allclose(phi.grad, torch.full((2,), 1 / 3))
    ```
    """

    solver: AbstractSolver | str | None = None
    stationarity_tol: float | None = 1e-3

    def __post_init__(self) -> None:
        if self.solver is not None and not isinstance(self.solver, (AbstractSolver, str)):
            raise InputError(
                f"`ImplicitAdjoint(solver=...)` must be a solver such as ig.CG() or a "
                f"shorthand string, got {type(self.solver).__name__}."
            )
        if self.stationarity_tol is not None and not self.stationarity_tol >= 0:
            raise InputError(
                "`ImplicitAdjoint(stationarity_tol=...)` must be >= 0 or None, got "
                f"{self.stationarity_tol!r}."
            )

    def apply(self, problem: InnerProblem) -> tuple[Tree, Any]:
        theta, info = problem.run(differentiable=False, truncate=None, checkpoint=False)
        return problem.implicit(theta, self.solver, self.stationarity_tol), info


@dataclass(frozen=True)
class UnrollAdjoint(AbstractAdjoint):
    """Differentiate by backpropagation through the steps that solve the inner problem.

    Exact for the steps that were run, converged or not, at the cost of memory for their
    graph (see [`unroll`][implicitgrad.unroll] for `truncate` and `checkpoint`).

    **Arguments:**

    - `truncate`: differentiate only the last `truncate` steps (`None`: all).
    - `checkpoint`: `False`, `True` for $\\sqrt{N}$ segments, or a segment length.

    **Example:**

    ```python
    import torch, implicitgrad as ig
    inner = lambda t, p, batch, step: 0.5 * 3.0 * (t ** 2).sum() - (t * p).sum()
    phi = torch.ones(2, requires_grad=True)
    theta = ig.minimize(inner, torch.zeros(2), phi, None, ig.SGD(lr=0.3), steps=60,
                        adjoint=ig.UnrollAdjoint())
    theta.sum().backward()
    assert torch.allclose(phi.grad, torch.full((2,), 1 / 3))
    ```
    """

    truncate: int | None = None
    checkpoint: bool | int = False

    def __post_init__(self) -> None:
        if self.truncate is not None and (
            isinstance(self.truncate, bool)
            or not isinstance(self.truncate, int)
            or self.truncate < 1
        ):
            raise InputError(
                f"`UnrollAdjoint(truncate=...)` must be a positive int or None, got "
                f"{self.truncate!r}."
            )
        if not isinstance(self.checkpoint, (bool, int)) or (
            not isinstance(self.checkpoint, bool) and self.checkpoint < 1
        ):
            raise InputError(
                "`UnrollAdjoint(checkpoint=...)` must be True, False or a positive segment "
                f"length, got {self.checkpoint!r}."
            )

    def apply(self, problem: InnerProblem) -> tuple[Tree, Any]:
        return problem.run(differentiable=True, truncate=self.truncate, checkpoint=self.checkpoint)

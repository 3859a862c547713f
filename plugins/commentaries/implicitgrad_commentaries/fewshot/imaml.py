"""Implicit MAML (Rajeswaran et al., 2019): the meta-gradient from the core's implicit adjoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

import implicitgrad as ig

from .base import AbstractMetaLearner, SupportLoss, check_positive

__all__ = ["IMAML"]


def _default_solver() -> ig.AbstractSolver:
    # A fixed budget of five products, as in the paper's experiments (Section 4); tol=0
    # asks the core's CG for exactly that budget without a ConvergenceWarning.
    return ig.CG(max_iter=5, tol=0.0)


@dataclass(frozen=True)
class IMAML(AbstractMetaLearner):
    """Implicit MAML: the adapted parameters solve a proximally regularized support problem,

    $$\\theta^*(\\theta_0, \\phi) = \\arg\\min_\\theta\\; \\ell_\\text{support}(\\theta, \\phi)
    + \\frac{\\lambda}{2}\\lVert\\theta - \\theta_0\\rVert^2,$$

    approximately (`inner_steps` steps of SGD from $\\theta_0$), and the meta-gradient comes
    from the implicit function theorem at the computed solution, through
    [`ig.ImplicitAdjoint`][implicitgrad.ImplicitAdjoint]:
    $\\mathrm{d}\\theta^*/\\mathrm{d}\\theta_0 = \\lambda(H + \\lambda I)^{-1}$ with $H$ the
    support loss's Hessian (Rajeswaran et al., 2019, Lemma 1), applied to the query
    gradient by the chosen linear solver. Memory does not grow with `inner_steps`.

    With a teacher, its weights enter $\\ell_\\text{support}$, so the same implicit solve also
    gives $\\mathrm{d}L_\\text{query}/\\mathrm{d}\\phi = -(\\partial^2\\ell/\\partial\\phi\\,
    \\partial\\theta)(H + \\lambda I)^{-1}\\nabla L_\\text{query}$.

    **Departures from the paper:** the teacher sees the normalized step $t = 1$ throughout
    the inner loop. The implicit function theorem differentiates the stationarity of one
    fixed objective; a weight that changed with the step would make the inner problem a
    different one at each step. The inner optimizer is SGD, where the paper also uses
    Adam-like solvers.

    !!! warning
        CG needs $H + \\lambda I$ positive definite. A small $\\lambda$ on a non-convex network
        can break that: CG then raises `SolverError`. Raise `lam`, or pass
        `solver=ig.CG(max_iter=5, tol=0.0, damping=...)`.

    **Arguments:**

    - `lam`: $\\lambda > 0$, the strength of the proximal term (default `1.0`).
    - `inner_steps`: SGD steps on the regularized problem (default `10`).
    - `inner_lr`: their step size (default `0.1`).
    - `solver`: how to apply $(H + \\lambda I)^{-1}$: any core solver or its shorthand
      (default `ig.CG(max_iter=5, tol=0.0)`, a fixed budget of five Hessian-vector products).
    - `stationarity_tol`: passed to `ig.ImplicitAdjoint` (default `None`: an approximately
      solved inner problem is the method, not an error).

    **Example:**

    ```python
    import torch, implicitgrad as ig
    from types import SimpleNamespace
    from implicitgrad_commentaries.fewshot import IMAML, FewShotNet
    torch.manual_seed(0)
    fn, theta0 = ig.make_functional(FewShotNet((1, 8, 8), ways=2, width=4))
    task = SimpleNamespace(support_x=torch.randn(4, 1, 8, 8), support_y=torch.tensor([0, 1, 0, 1]),
                           query_x=torch.randn(6, 1, 8, 8), query_y=torch.tensor([0, 1] * 3))
    IMAML(lam=2.0, inner_steps=3).query_loss(fn, theta0, task).backward()
    assert all(p.grad is not None for p in theta0.values())
    ```
    """

    lam: float = 1.0
    inner_steps: int = 10
    inner_lr: float = 0.1
    solver: ig.AbstractSolver | str = field(default_factory=_default_solver)
    stationarity_tol: float | None = None

    name: ClassVar[str] = "imaml"
    # CG's step lengths are global, so a stacked solve differs from per-task solves.
    separable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_positive("IMAML", "lam", self.lam)
        check_positive("IMAML", "inner_steps", self.inner_steps, integer=True)
        check_positive("IMAML", "inner_lr", self.inner_lr)
        # Validates the solver (and its shorthand) before any work, with the core's message.
        ig.ImplicitAdjoint(self.solver, self.stationarity_tol)

    def solve(
        self,
        support: SupportLoss,
        theta0: dict[str, torch.Tensor],
        phi: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        lam = float(self.lam)
        outer: dict[str, Any] = {"init": theta0}
        if phi is not None:
            outer["teacher"] = phi

        def train_loss(theta: Any, outer: Any, batch: Any, step: int) -> torch.Tensor:
            init = outer["init"]
            prox = sum(((theta[k] - init[k]) ** 2).sum() for k in theta)
            loss = support(theta, outer.get("teacher"), 1.0)
            return loss + 0.5 * lam * prox  # type: ignore[operator]

        start = {k: v.detach() for k, v in theta0.items()}
        wanted = torch.is_grad_enabled() and any(
            p.requires_grad for part in outer.values() for p in part.values()
        )
        # At meta-test time (nothing to differentiate) it is plain adaptation: the implicit
        # layer would refuse outer parameters that do not require grad.
        adjoint = (
            ig.ImplicitAdjoint(self.solver, self.stationarity_tol) if wanted else ig.UnrollAdjoint()
        )
        with torch.set_grad_enabled(wanted):
            return ig.minimize(
                train_loss,
                start,
                outer,
                None,
                ig.SGD(lr=self.inner_lr),
                steps=self.inner_steps,
                adjoint=adjoint,
            )

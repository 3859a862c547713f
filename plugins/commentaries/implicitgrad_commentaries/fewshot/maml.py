"""MAML (Finn et al., 2017), second order through the core's unrolled adjoint, and first order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

import implicitgrad as ig

from .base import AbstractMetaLearner, SupportLoss, check_positive

__all__ = ["MAML", "first_order"]


def first_order(
    train_loss: Callable[[Any, Any, Any, int], torch.Tensor],
) -> Callable[[Any, Any, Any, int], torch.Tensor]:
    """The same inner loss with its θ-gradient treated as a constant (first-order MAML).

    Returns $\\tilde\\ell(\\theta) = \\ell(\\theta) + \\langle \\theta - \\bar\\theta,
    \\bar g \\rangle$ evaluated at $\\bar\\theta = \\theta$, where bars are stop-gradients and
    $\\bar g = \\nabla_\\theta \\ell(\\bar\\theta)$: its value is $\\ell$ and its gradient is
    $\\bar g$, a tensor without history. A step $\\theta_{t+1} = \\theta_t - \\alpha\\bar g_t$
    then has $\\partial\\theta_{t+1}/\\partial\\theta_t = I$, so the unrolled meta-gradient
    through [`ig.UnrollAdjoint`][implicitgrad.UnrollAdjoint] is FO-MAML's
    $\\nabla L_\\text{query}(\\theta_K)$ (Finn et al., 2017, Section 5.2; Nichol et al.,
    2018), with the same inner trajectory as second-order MAML.
    """

    def loss(theta: Any, phi: Any, batch: Any, step: int) -> torch.Tensor:
        leaves = list(theta.values())
        value = train_loss(theta, phi, batch, step)
        grads = torch.autograd.grad(value, leaves, allow_unused=True, materialize_grads=True)
        linear = sum((t * g.detach()).sum() for t, g in zip(leaves, grads))
        return value.detach() + (linear - linear.detach())  # type: ignore[operator]

    return loss


@dataclass(frozen=True)
class MAML(AbstractMetaLearner):
    """Model-agnostic meta-learning: learn an initialization $\\theta_0$ that `inner_steps`
    SGD steps on a task's support set turn into a good classifier for its query set.

    The inner loop is $\\theta_{k+1} = \\theta_k - \\alpha\\nabla_\\theta
    \\ell_\\text{support}(\\theta_k, \\phi, k/K)$, $k = 0, \\dots, K-1$, run by
    [`ig.minimize`][implicitgrad.minimize] with [`ig.SGD`][implicitgrad.SGD],
    `differentiate_init=True` and [`ig.UnrollAdjoint`][implicitgrad.UnrollAdjoint], so the
    meta-gradient $\\mathrm{d}L_\\text{query}(\\theta_K)/\\mathrm{d}\\theta_0$ is exact,
    second order: it contains the Hessians of the support loss (Finn et al., 2017,
    Algorithm 2). With a teacher the support loss is weighted per example
    ($\\ell = \\frac1n\\sum_i w_\\phi(x_i, y_i, k/K)\\,\\mathrm{CE}_i$), and the same backward
    pass gives the teacher's gradient $\\mathrm{d}L_\\text{query}/\\mathrm{d}\\phi$: MAML with
    an example-weighting commentary (Raghu et al., 2021, Section 5).

    `first_order=True` is FO-MAML: the inner gradients are constants (see
    [`first_order`][implicitgrad_commentaries.first_order]) and the meta-gradient is
    $\\nabla L_\\text{query}(\\theta_K)$. It has no path to a teacher, so a teacher can only be
    used fixed.

    **Arguments:**

    - `inner_steps`: $K$ (default `5`).
    - `inner_lr`: $\\alpha$ (default `0.4`, MAML's Omniglot value).
    - `first_order`: FO-MAML (default `False`).
    - `checkpoint`: as in [`ig.UnrollAdjoint`][implicitgrad.UnrollAdjoint] (default `False`).

    **Example:**

    ```python
    import torch, implicitgrad as ig
    from types import SimpleNamespace
    from implicitgrad_commentaries.fewshot import MAML, FewShotNet
    torch.manual_seed(0)
    fn, theta0 = ig.make_functional(FewShotNet((1, 8, 8), ways=2, width=4))
    task = SimpleNamespace(support_x=torch.randn(4, 1, 8, 8), support_y=torch.tensor([0, 1, 0, 1]),
                           query_x=torch.randn(6, 1, 8, 8), query_y=torch.tensor([0, 1] * 3))
    MAML(inner_steps=2).query_loss(fn, theta0, task).backward()
    assert all(p.grad is not None for p in theta0.values())
    ```
    """

    inner_steps: int = 5
    inner_lr: float = 0.4
    first_order: bool = False
    checkpoint: bool | int = False

    name: ClassVar[str] = "maml"

    def __post_init__(self) -> None:
        check_positive("MAML", "inner_steps", self.inner_steps, integer=True)
        check_positive("MAML", "inner_lr", self.inner_lr)
        if not isinstance(self.first_order, bool):
            raise ig.InputError(
                f"`MAML(first_order=...)` must be a bool, got {self.first_order!r}."
            )

    @property
    def learns_teacher(self) -> bool:  # type: ignore[override]
        return not self.first_order

    def solve(
        self,
        support: SupportLoss,
        theta0: dict[str, torch.Tensor],
        phi: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        if (
            self.first_order
            and phi is not None
            and torch.is_grad_enabled()
            and any(p.requires_grad for p in phi.values())
        ):
            raise ig.InputError(
                "`MAML(first_order=True).solve(phi=...)`: first-order MAML has no gradient path "
                "to the teacher, so a learned teacher would never change. Pass detached phi (a "
                "fixed teacher), or use MAML(first_order=False) or IMAML to learn it."
            )
        steps = self.inner_steps

        def train_loss(theta: Any, phi: Any, batch: Any, step: int) -> torch.Tensor:
            return support(theta, phi, step / steps)

        return ig.minimize(
            first_order(train_loss) if self.first_order else train_loss,
            theta0,
            phi,
            None,
            ig.SGD(lr=self.inner_lr),
            steps=steps,
            adjoint=ig.UnrollAdjoint(checkpoint=self.checkpoint),
            differentiate_init=True,
        )

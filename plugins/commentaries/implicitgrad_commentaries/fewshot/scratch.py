"""The no-meta-learning baseline: train the network from scratch on each task's support set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

import implicitgrad as ig

from .base import AbstractMetaLearner, SupportLoss, check_positive

__all__ = ["Scratch"]


@dataclass(frozen=True)
class Scratch(AbstractMetaLearner):
    """No meta-learning: every task starts from a fresh random initialization of the same
    network and trains on its support set with Adam.

    Nothing is learned across tasks, so [`meta_train`][implicitgrad_commentaries.meta_train]
    does nothing for it; [`evaluate`][implicitgrad_commentaries.evaluate] draws the
    initialization of task $i$ from the seed `seed + i`. It gets more inner steps than MAML
    by default, and an adaptive optimizer, so that it is not handicapped by MAML's tuned
    step size.

    **Arguments:**

    - `inner_steps`: Adam steps on the support set (default `25`).
    - `inner_lr`: Adam's learning rate (default `0.01`).
    """

    inner_steps: int = 25
    inner_lr: float = 0.01

    name: ClassVar[str] = "scratch"
    is_meta_learned: ClassVar[bool] = False
    learns_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_positive("Scratch", "inner_steps", self.inner_steps, integer=True)
        check_positive("Scratch", "inner_lr", self.inner_lr)

    def solve(
        self,
        support: SupportLoss,
        theta0: dict[str, torch.Tensor],
        phi: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        steps = self.inner_steps

        def train_loss(theta: Any, phi: Any, batch: Any, step: int) -> torch.Tensor:
            return support(theta, phi, step / steps)

        with torch.no_grad():  # nothing upstream to differentiate
            return ig.minimize(
                train_loss,
                {k: v.detach() for k, v in theta0.items()},
                None if phi is None else {k: v.detach() for k, v in phi.items()},
                None,
                ig.Adam(lr=self.inner_lr),
                steps=steps,
                adjoint=ig.UnrollAdjoint(),
            )

"""Label-dependent blending augmentation: a class-pair matrix sets how much to blend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from implicitgrad import InputError

from .base import AbstractCommentary, DataSpec, Student

__all__ = ["BlendingCommentary", "BLENDING_MODES"]

BLENDING_MODES = ("learned", "random")


class BlendingCommentary(AbstractCommentary):
    """Blend pairs of examples by a learned class-pair proportion (Raghu et al., 2021, §4).

    The commentary is a $C \\times C$ matrix $M$. Each example $i$ of a batch is paired with
    example $j = \\pi(i)$ of a random permutation $\\pi$, and with

    $$\\lambda_{ij} = 1 - \\tfrac12\\,\\sigma(M_{y_i y_j}) \\in (\\tfrac12, 1), \\qquad
    \\tilde x_i = \\lambda_{ij} x_i + (1 - \\lambda_{ij}) x_j,$$

    the student's training loss is
    $\\frac1n\\sum_i \\lambda_{ij}\\,\\mathrm{CE}(f(\\tilde x_i), y_i) + (1 - \\lambda_{ij})\\,
    \\mathrm{CE}(f(\\tilde x_i), y_j)$. $M$ starts at $-1$ ($\\lambda \\approx 0.87$) and is
    learned by implicit differentiation (Algorithm 2).

    With `mode="random"` the matrix is ignored and $\\lambda_{ij}$ is drawn uniformly from
    $(\\tfrac12, 1)$ for every pair: the random-blending control of the paper. It is not
    learnable.

    **Arguments:**

    - `spec`: the dataset's [`DataSpec`][implicitgrad_commentaries.DataSpec].
    - `init`: the initial value of every entry of $M$ (default `-1.0`).
    - `mode`: `"learned"` (default) or `"random"`.

    **Example:**

    ```python
    import torch
    from implicitgrad_commentaries import BlendingCommentary, DataSpec
    c = BlendingCommentary(DataSpec("toy", (3,), ("a", "b", "c")))
    lam = c(torch.tensor([0, 1]), torch.tensor([2, 2]))
    assert torch.allclose(lam, 1 - 0.5 * torch.sigmoid(torch.tensor(-1.0)))
    ```
    """

    name = "blending"
    default_method = "ift"
    # The paper uses 1e-2 over 100 CIFAR epochs; a few hundred digits steps need a larger one.
    default_meta_lr = 5e-2

    def __init__(self, spec: DataSpec, init: float = -1.0, mode: str = "learned") -> None:
        super().__init__(spec, init=init, mode=mode)
        if mode not in BLENDING_MODES:
            raise InputError(
                f"`BlendingCommentary(mode={mode!r})`: expected one of {BLENDING_MODES}."
            )
        self.mode = mode
        c = spec.num_classes
        self.matrix = nn.Parameter(torch.full((c, c), float(init)))

    @property
    def is_learnable(self) -> bool:
        return self.mode == "learned"

    def forward(self, y_i: torch.Tensor, y_j: torch.Tensor) -> torch.Tensor:
        """The blending proportions $\\lambda_{ij} = 1 - \\frac12\\sigma(M_{y_i y_j})$."""
        return 1.0 - 0.5 * torch.sigmoid(self.matrix[y_i, y_j])

    def proportions(self) -> torch.Tensor:
        """The $C \\times C$ table of $\\lambda$ for every class pair (detached)."""
        return (1.0 - 0.5 * torch.sigmoid(self.matrix)).detach()

    def loss(
        self,
        phi: dict[str, torch.Tensor],
        student: Student,
        x: torch.Tensor,
        y: torch.Tensor,
        progress: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        n = x.shape[0]
        perm = torch.randperm(n, generator=generator, device="cpu").to(x.device)
        y_j = y[perm]
        if self.mode == "random":
            u = torch.rand(n, generator=generator, device="cpu").to(x.device, x.dtype)
            lam = 0.5 + 0.5 * u
        else:
            lam = functional_call(self, phi, (y, y_j)).to(x.dtype)
        shape = (n,) + (1,) * (x.dim() - 1)
        x_mix = lam.reshape(shape) * x + (1 - lam.reshape(shape)) * x[perm]
        logits = student(x_mix)
        ce_i = F.cross_entropy(logits, y, reduction="none")
        ce_j = F.cross_entropy(logits, y_j, reduction="none")
        return (lam * ce_i + (1 - lam) * ce_j).mean()

    def controls(self, x: torch.Tensor | None = None) -> dict[str, AbstractCommentary]:
        """Random blending proportions, the unlearned initial matrix, and mixup.

        Mixup ([`Mixup`][implicitgrad_commentaries.Mixup], Zhang et al., 2018) is the
        baseline the paper compares learned blending against.

        **Returns:**

        `{"random blending": mode="random", "fixed M = init (unlearned)": the initial M,
        "mixup (α = 1)": Mixup(alpha=1.0)}`.
        """
        from .mixup import Mixup

        init = self.config["init"]
        return {
            "random blending": BlendingCommentary(self.spec, init=init, mode="random"),
            f"fixed M = {init:g} (unlearned)": BlendingCommentary(self.spec, init=init),
            "mixup (α = 1)": Mixup(self.spec, alpha=1.0),
        }

    def describe(self) -> str:
        return "class-pair blending proportions (C x C matrix), mixup-like augmentation"

    def plot(self, data: Any, folder: Path) -> list[Path]:
        """`blending.png`: a heat map of the learned share $1 - \\lambda$ per class pair."""
        from ..plots import plot_blending

        return [plot_blending(self, folder)]

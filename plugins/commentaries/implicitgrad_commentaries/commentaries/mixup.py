"""Mixup (Zhang et al., 2018): the fixed blending baseline the learned blending is compared to."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from implicitgrad import InputError

from .base import AbstractCommentary, DataSpec, Student

__all__ = ["Mixup"]


class Mixup(AbstractCommentary):
    """Mixup augmentation: blend a batch with a permuted copy of itself, labels included.

    *mixup: Beyond Empirical Risk Minimization* (Zhang, Cisse, Dauphin & Lopez-Paz, ICLR
    2018), Eq. (1). For a batch $(x, y)$ and a random permutation $\\pi$ of it, with one
    $\\lambda \\sim \\mathrm{Beta}(\\alpha, \\alpha)$ for the whole batch (as in the authors'
    code),

    $$\\tilde x_i = \\lambda x_i + (1 - \\lambda) x_{\\pi(i)}, \\qquad
    \\tilde y_i = \\lambda\\, e_{y_i} + (1 - \\lambda)\\, e_{y_{\\pi(i)}},$$

    and the student's training loss is the cross-entropy of $f(\\tilde x_i)$ against the
    mixed one-hot label $\\tilde y_i$. Unlike the learned
    [`BlendingCommentary`][implicitgrad_commentaries.BlendingCommentary], $\\lambda$ does
    not depend on the classes and covers all of $(0, 1)$; $\\alpha$ sets how strongly it
    blends ($\\alpha \\to 0$: no blending; $\\alpha = 1$: $\\lambda$ uniform). Mixup has
    no parameters and is not learned: it is one of the blending commentary's
    [`controls`][implicitgrad_commentaries.BlendingCommentary.controls], so
    `commentaries train` and the demo compare a learned blending matrix against it on the
    same seeds. It is not registered as a plugin.

    **Arguments:**

    - `spec`: the dataset's [`DataSpec`][implicitgrad_commentaries.DataSpec].
    - `alpha`: the Beta parameter $\\alpha > 0$ (default `1.0`, the paper's CIFAR-10
      setting; it uses 0.1–0.4 on ImageNet).

    **Example:**

    ```python
    import torch
    from implicitgrad_commentaries import DataSpec, Mixup
    mixup = Mixup(DataSpec("toy", (3,), ("a", "b")), alpha=0.4)
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    x_mix, target, lam, perm = mixup.mix(x, y, torch.Generator().manual_seed(0))
    assert torch.allclose(x_mix, lam * x + (1 - lam) * x[perm])
    assert torch.allclose(target.sum(1), torch.ones(8))
    ```
    """

    name = "mixup"
    default_method = "ift"

    def __init__(self, spec: DataSpec, alpha: float = 1.0) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise InputError(f"`Mixup(alpha=...)` must be a number > 0, got {alpha!r}.")
        if not (math.isfinite(alpha) and alpha > 0):
            raise InputError(f"`Mixup(alpha=...)` must be a finite number > 0, got {alpha!r}.")
        super().__init__(spec, alpha=float(alpha))
        self.alpha = float(alpha)

    @property
    def is_learnable(self) -> bool:
        return False

    def sample_lambda(self, generator: torch.Generator | None = None) -> float:
        """One $\\lambda \\sim \\mathrm{Beta}(\\alpha, \\alpha)$, drawn from `generator`'s stream.

        torch's Beta sampler takes no generator; numpy's does, seeded from `generator` so
        that the same generator state gives the same $\\lambda$.
        """
        seed = int(torch.randint(2**62, (1,), generator=generator))
        return float(np.random.default_rng(seed).beta(self.alpha, self.alpha))

    def mix(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
        """Blend the batch `(x, y)` with a permutation of itself.

        **Returns:**

        `(x_mix, target, lam, perm)`: the blended inputs, the blended one-hot labels of
        shape `(n, C)`, $\\lambda$ and the permutation $\\pi$.
        """
        n = x.shape[0]
        perm = torch.randperm(n, generator=generator, device="cpu").to(x.device)
        lam = self.sample_lambda(generator)
        onehot = F.one_hot(y, self.spec.num_classes).to(x.dtype)
        x_mix = lam * x + (1 - lam) * x[perm]
        target = lam * onehot + (1 - lam) * onehot[perm]
        return x_mix, target, lam, perm

    def loss(
        self,
        phi: dict[str, torch.Tensor],
        student: Student,
        x: torch.Tensor,
        y: torch.Tensor,
        progress: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        x_mix, target, _, _ = self.mix(x, y, generator)
        return F.cross_entropy(student(x_mix), target)

    def describe(self) -> str:
        return f"mixup with lambda ~ Beta({self.alpha:g}, {self.alpha:g}) (Zhang et al., 2018)"

    def extra_repr(self) -> str:
        cfg: dict[str, Any] = self.config
        return ", ".join(f"{k}={v!r}" for k, v in cfg.items())

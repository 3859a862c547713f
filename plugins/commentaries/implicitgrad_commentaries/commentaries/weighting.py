"""Example-weighting curricula: a teacher gives each training example a weight in (0, 1)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from implicitgrad import InputError

from .base import AbstractCommentary, DataSpec, Student
from .students import ConvFeatures

__all__ = ["WeightingCommentary"]


class WeightingCommentary(AbstractCommentary):
    """Per-example weights from a teacher network (Raghu et al., 2021, Section 3).

    The teacher maps an example, its label and the normalized training iteration
    $t \\in [0, 1]$ to a weight $w_\\phi(x, y, t) = \\sigma(\\cdot) \\in (0, 1)$, and the
    student's training loss on a batch is the weighted cross-entropy

    $$L_T(\\theta, \\phi) = \\frac{1}{n}\\sum_{i=1}^n w_\\phi(x_i, y_i, t)\\,
    \\mathrm{CE}(f_\\theta(x_i), y_i).$$

    For images the teacher is a small conv net that sees $t$ as an extra constant input
    channel (as in the paper); its features are concatenated with the one-hot label and
    $t$ before the final linear layer. For vector inputs it is an MLP on
    $[x, \\mathrm{onehot}(y), t]$. Learned by backpropagation through training by default.

    With `normalize=True` the weights are divided by their batch mean,
    $L_T = \\sum_i w_i\\,\\mathrm{CE}_i / \\sum_i w_i$, so the teacher can only shift
    emphasis between examples, not scale the student's effective learning rate.

    !!! warning
        Unnormalized weights (the paper's form) also act as a learned learning-rate scale:
        on a short unrolled run the cheapest way to lower the validation loss is to push
        every weight towards 1, which is no curriculum at all. Check the learned weights
        (`commentaries show`) or use `normalize=True`.

    **Arguments:**

    - `spec`: the dataset's [`DataSpec`][implicitgrad_commentaries.DataSpec].
    - `teacher`: `"conv"`, `"mlp"` or `"auto"` (default: conv for image inputs).
    - `hidden`: hidden width of the MLP teacher (default `32`).
    - `use_iteration`: feed $t$ to the teacher (default `True`; `False` is the paper's
      variant without the iteration input).
    - `init_weight`: the weight every example starts near (default `0.5`), set through the
      bias of the last layer.
    - `normalize`: divide the weights by their batch mean (default `False`, as in the paper).

    **Example:**

    ```python
    import torch
    from implicitgrad_commentaries import DataSpec, WeightingCommentary
    spec = DataSpec("toy", (1, 8, 8), ("a", "b"))
    c = WeightingCommentary(spec)
    w = c(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), 0.3)
    assert w.shape == (4,) and bool(((w > 0) & (w < 1)).all())
    ```
    """

    name = "weighting"
    default_method = "unroll"
    default_meta_lr = 1e-3

    def __init__(
        self,
        spec: DataSpec,
        teacher: str = "auto",
        hidden: int = 32,
        use_iteration: bool = True,
        init_weight: float = 0.5,
        normalize: bool = False,
    ) -> None:
        super().__init__(
            spec,
            teacher=teacher,
            hidden=hidden,
            use_iteration=use_iteration,
            init_weight=init_weight,
            normalize=normalize,
        )
        if teacher == "auto":
            teacher = "conv" if len(spec.input_shape) == 3 else "mlp"
        if teacher not in ("conv", "mlp"):
            raise InputError(
                f"`WeightingCommentary(teacher={teacher!r})`: expected 'conv', 'mlp' or 'auto'."
            )
        if teacher == "conv" and len(spec.input_shape) != 3:
            raise InputError(
                "`WeightingCommentary(teacher='conv')` needs image inputs (channels, height, "
                f"width), got input shape {spec.input_shape}. Use teacher='mlp'."
            )
        if not 0.0 < init_weight < 1.0:
            raise InputError(
                f"`WeightingCommentary(init_weight=...)` must lie in (0, 1), got {init_weight!r}."
            )
        self.kind = teacher
        self.use_iteration = bool(use_iteration)
        self.normalize = bool(normalize)
        extra = spec.num_classes + 1
        if teacher == "conv":
            channels = spec.input_shape[0] + 1
            self.features: nn.Module = ConvFeatures(channels, 8, 16)
            width = self.features.out_features
        else:
            self.features = nn.Sequential(
                nn.Flatten(), nn.Linear(math.prod(spec.input_shape) + extra, hidden), nn.ReLU()
            )
            width = hidden
        self.head = nn.Linear(width + extra, 1)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.fill_(math.log(init_weight / (1 - init_weight)))

    def forward(self, x: torch.Tensor, y: torch.Tensor, progress: float) -> torch.Tensor:
        """The weights $w_\\phi(x_i, y_i, t)$, shape `(n,)`."""
        n = x.shape[0]
        t = float(progress) if self.use_iteration else 0.0
        onehot = F.one_hot(y, self.spec.num_classes).to(x.dtype)
        tcol = x.new_full((n, 1), t)
        if self.kind == "conv":
            plane = x.new_full((n, 1, *x.shape[2:]), t)
            h = self.features(torch.cat([x, plane], dim=1))
        else:
            h = self.features(torch.cat([x.reshape(n, -1), onehot, tcol], dim=1))
        return torch.sigmoid(self.head(torch.cat([h, onehot, tcol], dim=1))).squeeze(1)

    def loss(
        self,
        phi: dict[str, torch.Tensor],
        student: Student,
        x: torch.Tensor,
        y: torch.Tensor,
        progress: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        weights = functional_call(self, phi, (x, y, progress))
        if self.normalize:
            weights = weights / weights.mean()
        return (weights * F.cross_entropy(student(x), y, reduction="none")).mean()

    def controls(self, x: torch.Tensor | None = None) -> dict[str, AbstractCommentary]:
        """The unlearned teacher: the same settings, freshly initialized (every weight near
        `init_weight`).

        **Returns:**

        `{"unlearned teacher": WeightingCommentary(...)}`.
        """
        gen_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)
            fresh = WeightingCommentary(self.spec, **self.config)
        finally:
            torch.random.set_rng_state(gen_state)
        return {"unlearned teacher": fresh}

    def describe(self) -> str:
        return "per-example weights w(x, y, t) in (0, 1) from a teacher network"

    def plot(self, data: Any, folder: Path) -> list[Path]:
        """`weights.png`: the mean weight over training by class, by example difficulty and,
        with injected label noise, for mislabeled and correct examples;
        `weights-examples.png`: the 16 lowest- and highest-weighted training examples.

        When the training labels carry injected noise (`data.train.noisy`, e.g. the
        `digits-noisy` dataset) it also prints one line: how many of the 16 lowest-weighted
        examples are mislabeled against the number expected by chance, and the AUC of "low
        weight ⇒ mislabeled" over the training split
        ([`noise_detection`][implicitgrad_commentaries.plots.noise_detection]).
        """
        from ..plots import (
            has_label_noise,
            mean_weights,
            noise_detection,
            plot_weight_extremes,
            plot_weights,
        )

        paths = [plot_weights(self, data, folder), plot_weight_extremes(self, data, folder, k=16)]
        if has_label_noise(data):
            found = noise_detection(mean_weights(self, data), data.train.noisy, k=16)
            print(f"label noise in {self.spec.name}: {found.describe()}")
        return paths

    def extra_repr(self) -> str:
        cfg: dict[str, Any] = self.config
        return ", ".join(f"{k}={v!r}" for k, v in cfg.items())

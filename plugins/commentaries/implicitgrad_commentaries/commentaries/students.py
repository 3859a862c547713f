"""Small student networks, built by name for any input shape and class count."""

from __future__ import annotations

import math

import torch
from torch import nn

from implicitgrad import InputError

from .base import DataSpec

__all__ = ["STUDENTS", "make_student", "ConvFeatures"]

STUDENTS = ("linear", "mlp", "cnn")
"""Student architectures accepted by `make_student`."""


class ConvFeatures(nn.Sequential):
    """Two conv blocks for small images: Conv3×3 → ReLU → MaxPool(2) → Conv3×3 → ReLU →
    AdaptiveAvgPool(2), flattened to `4 * width2` features.

    A scaled-down version of the commentary paper's teacher/student conv net (5×5 and 3×3
    convolutions with stride 2), sized for 8×8 digits; batch normalization is left out so
    that a network's output on an example does not depend on the rest of its batch.
    """

    def __init__(self, in_channels: int, width1: int = 16, width2: int = 32) -> None:
        super().__init__(
            nn.Conv2d(in_channels, width1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width1, width2, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.out_features = 4 * width2


def make_student(
    arch: str, spec: DataSpec, *, seed: int | None = None, hidden: int = 64
) -> nn.Module:
    """Build a student network mapping `(n, *spec.input_shape)` to `(n, C)` logits.

    **Arguments:**

    - `arch`: `"linear"` (softmax regression), `"mlp"` (one hidden ReLU layer of `hidden`
      units) or `"cnn"` (two conv blocks, then a linear layer; needs image inputs
      `(channels, height, width)`).
    - `spec`: the dataset's [`DataSpec`][implicitgrad_commentaries.DataSpec].
    - `seed`: seeds the initialization when given.
    - `hidden`: hidden width of the MLP.

    **Returns:**

    An `nn.Module`.

    **Example:**

    ```python
    import torch
    from implicitgrad_commentaries import DataSpec
    from implicitgrad_commentaries.models import make_student
    net = make_student("cnn", DataSpec("digits", (1, 8, 8), tuple("0123456789")), seed=0)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    ```
    """
    if seed is not None:
        torch.manual_seed(seed)
    d = math.prod(spec.input_shape)
    c = spec.num_classes
    if arch == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(d, c))
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, c))
    if arch == "cnn":
        if len(spec.input_shape) != 3:
            raise InputError(
                f"`make_student('cnn', ...)` needs image inputs (channels, height, width), got "
                f"input shape {spec.input_shape}. Use arch='mlp' for vector data."
            )
        features = ConvFeatures(spec.input_shape[0])
        return nn.Sequential(features, nn.Linear(features.out_features, c))
    raise InputError(
        f"`make_student(arch={arch!r})`: unknown student; expected one of {', '.join(STUDENTS)}."
    )

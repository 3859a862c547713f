"""The few-shot learner's network: the conv net of MAML (Finn et al., 2017, Section 5.2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from implicitgrad import InputError

__all__ = ["FewShotNet"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "softplus": nn.Softplus}


class FewShotNet(nn.Module):
    """`blocks` conv blocks of `width` channels, then a linear classifier over `ways` classes.

    Each block is Conv3×3 → ReLU → MaxPool(2), the architecture of MAML's Omniglot and
    MiniImageNet experiments (Finn et al., 2017, Section 5.2), scaled down for 8×8 and 16×16
    images. An adaptive average pool before the classifier makes the same network fit any
    image size (a 16×16 glyph is 1×1 after four blocks; an 8×8 digit after three).

    **Departure from the paper:** no batch normalization. MAML's networks normalize with
    the statistics of the current batch (transductively); without it the prediction for a
    query example does not depend on the other query examples, and the network is a pure
    function of its parameters, which is what the differentiation checks need.

    **Arguments:**

    - `input_shape`: `(channels, height, width)` of one image.
    - `ways`: the number of classes of a task, $N$.
    - `width`: channels per block (default `32`).
    - `blocks`: the number of conv blocks (default `4`).
    - `activation`: `"relu"` (default) or `"softplus"`. ReLU networks are piecewise smooth,
      and max-pooling ReLU outputs ties at zero, so finite differences of a meta-gradient
      cross kinks; the gradient checks use the smooth softplus.

    **Example:**

    ```python
    import torch
    from implicitgrad_commentaries.fewshot import FewShotNet
    net = FewShotNet((1, 8, 8), ways=5, width=8)
    assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 5)
    ```
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        ways: int,
        width: int = 32,
        blocks: int = 4,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(tuple(input_shape)) != 3:
            raise InputError(
                f"`FewShotNet(input_shape=...)` must be (channels, height, width), got "
                f"{tuple(input_shape)!r}."
            )
        for name, value, low in (("ways", ways, 2), ("width", width, 1), ("blocks", blocks, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(
                    f"`FewShotNet({name}=...)` must be an int >= {low}, got {value!r}."
                )
        self.config: dict[str, Any] = {
            "input_shape": [int(s) for s in input_shape],
            "ways": ways,
            "width": width,
            "blocks": blocks,
            "activation": activation,
        }
        if activation not in _ACTIVATIONS:
            raise InputError(
                f"`FewShotNet(activation={activation!r})`: expected one of "
                f"{', '.join(_ACTIVATIONS)}."
            )
        layers: list[nn.Module] = []
        channels = int(input_shape[0])
        for _ in range(blocks):
            # ceil_mode: a 1×1 map stays 1×1, so four blocks also fit 8×8 inputs.
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                _ACTIVATIONS[activation](),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, ways)
        # He initialization keeps the signal through four blocks without batch norm;
        # PyTorch's default (uniform, gain 1/sqrt(3)) shrinks it by about half per block.
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape `(n, ways)` for images `x` of shape `(n, *input_shape)`."""
        return self.classifier(self.features(x))

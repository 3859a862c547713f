"""Attention-mask commentaries: a teacher masks each image before the student sees it."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from implicitgrad import InputError

from .base import AbstractCommentary, DataSpec, Student

__all__ = [
    "MaskCommentary",
    "MASK_TEACHERS",
    "MASK_MODES",
    "centre_distance",
    "plot_masks",
    "plot_masked_inputs",
]

MASK_TEACHERS = ("unet", "conv")
"""Teacher parametrizations of [`MaskCommentary`][implicitgrad_commentaries.MaskCommentary]."""

MASK_MODES = ("learned", "centred", "random")
"""`"learned"`, and the two fixed controls: a mask at the canvas centre or at a random place."""


class _UNet(nn.Module):
    """A two-level U-Net that maps `(n, c, H, W)` to one heat-map logit per pixel."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.mid = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
        )
        self.dec = nn.Sequential(
            nn.Conv2d(3 * width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        low = self.mid(F.max_pool2d(skip, 2, ceil_mode=True))
        up = F.interpolate(low, size=skip.shape[-2:], mode="nearest")
        return self.dec(torch.cat([skip, up], dim=1)).flatten(1)


class _CentreNet(nn.Module):
    """A small conv net that maps `(n, c, H, W)` to three numbers: two for the centre and one
    for the width."""

    def __init__(self, channels: int, width: int, height: int, cols: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(),
        )
        cells = math.ceil(math.ceil(height / 2) / 2) * math.ceil(math.ceil(cols / 2) / 2)
        self.head = nn.Linear(2 * width * cells, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class MaskCommentary(AbstractCommentary):
    """A spatial attention mask from a teacher network (Raghu et al., 2021, Section 5).

    The teacher maps an image $x$ to a Gaussian mask over the pixel positions $p$,

    $$m_\\phi(x)_p = b + \\exp\\!\\Big(-\\frac{\\lVert p - \\mu_\\phi(x)\\rVert^2}
    {2\\sigma_\\phi(x)^2}\\Big),$$

    with a learned background level $b = \\sigma(\\beta) \\in (0, 1)$, and the student is
    trained on masked images, $L_T(\\theta, \\phi) = \\mathrm{CE}(f_\\theta(x \\odot
    m_\\phi(x)), y)$. Two teachers give $\\mu$ and $\\sigma$ (in pixels):

    - `teacher="unet"`: a small U-Net produces a heat map $h(x)$; a softmax over the pixels
      gives the soft-argmax centre $\\mu = \\sum_p \\mathrm{softmax}(h)_p\\, p$; $\\sigma$ is
      one learned width $\\tfrac12 + \\mathrm{softplus}(s)$.
    - `teacher="conv"`: a small conv net predicts the centre directly, $\\mu = c +
      \\tfrac{S-1}{2}\\tanh(\\cdot)$ around the canvas centre $c$, and the width $\\sigma = 2
      + 10\\,\\sigma(\\cdot)$.

    **The mask belongs to the student's input pipeline.** A student trained on masked
    images is always applied to masked images: the learner's validation loss is the
    student's cross-entropy on masked validation images, and trained students are tested on
    masked test images (through
    [`student_inputs`][implicitgrad_commentaries.MaskCommentary.student_inputs]). The outer
    loss therefore depends on $\\phi$ directly as well as through $\\theta^*(\\phi)$, and the
    hypergradient is $\\partial L_V/\\partial\\phi - (\\partial^2 L_T/\\partial\\phi\\,
    \\partial\\theta)\\, H^{-1}\\,\\partial L_V/\\partial\\theta$. Learned by implicit
    differentiation (Algorithm 2) by default.

    The fixed controls `mode="centred"` (the mask at the canvas centre) and
    `mode="random"` (a uniformly random centre per image, drawn from the generator) use the
    width `init_sigma` and background `init_background`; they have no parameters and are not
    learnable.

    **Arguments:**

    - `spec`: the dataset's [`DataSpec`][implicitgrad_commentaries.DataSpec]; inputs must be
      images `(channels, height, width)`.
    - `teacher`: `"conv"` (default) or `"unet"`.
    - `mode`: `"learned"` (default), `"centred"` or `"random"`.
    - `width`: channels of the teacher's first layer (default `8`).
    - `init_sigma`: the initial (or, for the controls, fixed) width in pixels (default
      `5.0`; the conv teacher needs it in $(2, 12)$).
    - `init_background`: the initial (or fixed) background level in $(0, 1)$ (default
      `0.3`). A wide mask with some background lets the student learn something before the
      mask has found anything; with a narrow, dark initial mask the student stays near
      chance and the hypergradient carries little signal.

    **Example:**

    ```python
    import torch
    from implicitgrad_commentaries import DataSpec, MaskCommentary
    c = MaskCommentary(DataSpec("toy", (1, 16, 16), ("a", "b")), teacher="unet")
    m = c(torch.rand(4, 1, 16, 16))
    assert m.shape == (4, 1, 16, 16) and bool((m > 0).all())
    ```
    """

    name = "masks"
    default_method = "ift"
    # Larger Adam steps saturate the teacher's tanh/sigmoid outputs while the student is
    # still near chance and its hypergradient is mostly noise (masks stuck in a corner).
    default_meta_lr = 1e-3

    def __init__(
        self,
        spec: DataSpec,
        teacher: str = "conv",
        mode: str = "learned",
        width: int = 8,
        init_sigma: float = 5.0,
        init_background: float = 0.3,
    ) -> None:
        super().__init__(
            spec,
            teacher=teacher,
            mode=mode,
            width=width,
            init_sigma=init_sigma,
            init_background=init_background,
        )
        if len(spec.input_shape) != 3:
            raise InputError(
                "`MaskCommentary(spec=...)` needs image inputs (channels, height, width), got "
                f"input shape {spec.input_shape}."
            )
        if teacher not in MASK_TEACHERS:
            raise InputError(
                f"`MaskCommentary(teacher={teacher!r})`: expected one of {MASK_TEACHERS}."
            )
        if mode not in MASK_MODES:
            raise InputError(f"`MaskCommentary(mode={mode!r})`: expected one of {MASK_MODES}.")
        if not isinstance(width, int) or width < 1:
            raise InputError(f"`MaskCommentary(width=...)` must be an int >= 1, got {width!r}.")
        if not 0.0 < init_background < 1.0:
            raise InputError(
                "`MaskCommentary(init_background=...)` must lie in (0, 1), got "
                f"{init_background!r}."
            )
        low = 2.0 if teacher == "conv" and mode == "learned" else 0.5
        high = 12.0 if teacher == "conv" and mode == "learned" else math.inf
        if not low < init_sigma < high:
            raise InputError(
                f"`MaskCommentary(init_sigma=...)` must lie in ({low}, {high}) for "
                f"teacher={teacher!r}, mode={mode!r}, got {init_sigma!r}."
            )
        self.teacher_kind, self.mode = teacher, mode
        channels, height, cols = spec.input_shape
        if mode != "learned":
            self.register_buffer("fixed_sigma", torch.tensor(float(init_sigma)))
            self.register_buffer("fixed_background", torch.tensor(float(init_background)))
            return
        self.background = nn.Parameter(torch.tensor(_logit(init_background)))
        if teacher == "unet":
            self.net: nn.Module = _UNet(channels, width)
            # softplus(s) + 1/2 = init_sigma
            self.log_sigma = nn.Parameter(torch.tensor(math.log(math.expm1(init_sigma - 0.5))))
        else:
            self.net = _CentreNet(channels, width, height, cols)
            with torch.no_grad():
                # Start every mask at the canvas centre with width init_sigma.
                self.net.head.weight.mul_(0.1)
                self.net.head.bias.copy_(torch.tensor([0.0, 0.0, _logit((init_sigma - 2) / 10)]))

    @property
    def is_learnable(self) -> bool:
        return self.mode == "learned"

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = torch.arange(h, dtype=x.dtype, device=x.device)
        cols = torch.arange(w, dtype=x.dtype, device=x.device)
        return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # (H, W, 2)

    def parameters_of_mask(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mask's centre $\\mu$ `(n, 2)` as (row, column), width $\\sigma$ `(n,)` and
        background $b$ (a scalar), all in pixels, for a batch of images `x`."""
        n, (h, w) = x.shape[0], x.shape[-2:]
        centre = x.new_tensor([(h - 1) / 2, (w - 1) / 2])
        if self.mode != "learned":
            sigma = self.fixed_sigma.to(x.dtype).expand(n)
            background = self.fixed_background.to(x.dtype)
            if self.mode == "centred":
                return centre.expand(n, 2), sigma, background
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            u = torch.rand(n, 2, generator=gen, device="cpu").to(x.device, x.dtype)
            return u * x.new_tensor([h - 1, w - 1]), sigma, background
        background = torch.sigmoid(self.background)
        if self.teacher_kind == "unet":
            weights = torch.softmax(self.net(x), dim=1)  # (n, H*W)
            mu = weights @ self._grid(x).reshape(h * w, 2)
            sigma = (0.5 + F.softplus(self.log_sigma)).expand(n)
            return mu, sigma, background
        out = self.net(x)
        mu = centre + torch.tanh(out[:, :2]) * x.new_tensor([(h - 1) / 2, (w - 1) / 2])
        sigma = 2.0 + 10.0 * torch.sigmoid(out[:, 2])
        return mu, sigma, background

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The masks $m_\\phi(x)$, shape `(n, 1, H, W)`."""
        mu, sigma, background = self.parameters_of_mask(x, generator)
        d2 = ((self._grid(x)[None] - mu[:, None, None, :]) ** 2).sum(-1)  # (n, H, W)
        return (background + torch.exp(-d2 / (2 * sigma[:, None, None] ** 2)))[:, None]

    def student_inputs(
        self,
        phi: dict[str, torch.Tensor],
        x: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The masked images $x \\odot m_\\phi(x)$ that the student sees, in training and
        at validation and test time."""
        return x * functional_call(self, phi, (x, generator))

    def loss(
        self,
        phi: dict[str, torch.Tensor],
        student: Student,
        x: torch.Tensor,
        y: torch.Tensor,
        progress: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return F.cross_entropy(student(self.student_inputs(phi, x, generator)), y)

    def controls(self, x: torch.Tensor | None = None) -> dict[str, MaskCommentary]:
        """The fixed controls for this commentary: a centred mask and a random-centre mask.

        With images `x`, the controls take this commentary's mean width and its background
        over `x`, so that they differ from it only in where the mask is.

        **Returns:**

        label → a [`MaskCommentary`][implicitgrad_commentaries.MaskCommentary] with
        `mode="centred"` or `"random"`.
        """
        sigma, background = float(self.config["init_sigma"]), float(self.config["init_background"])
        if x is not None:
            with torch.no_grad():
                _, s, b = self.parameters_of_mask(x.to(self._dtype()))
            sigma, background = float(s.mean()), float(b)
        kw = dict(width=self.config["width"], init_sigma=sigma, init_background=background)
        return {
            "centred mask": MaskCommentary(self.spec, mode="centred", **kw),
            "random-centre mask": MaskCommentary(self.spec, mode="random", **kw),
        }

    def _dtype(self) -> torch.dtype:
        for t in self.state_dict().values():
            return t.dtype
        return torch.get_default_dtype()

    def describe(self) -> str:
        return "a Gaussian attention mask per image from a teacher network (U-Net or conv)"

    def plot(self, data: Any, folder: Path) -> list[Path]:
        """`masks.png`: test images with their masks and, where known, the true centres;
        `masked-inputs.png`: 16 test canvases beside what the student sees through the mask.

        When the test split records the target centres (a
        [`PlacedSplit`][implicitgrad_commentaries.mask_data.PlacedSplit]) it also prints
        the mean distance of the mask centre to the target over the test split, and that of
        the centred control.
        """
        split = data.test
        centre = getattr(split, "centre", None)
        paths = [
            plot_masks(self, split.x, folder, centre),
            plot_masked_inputs(self, split.x, folder, centre),
        ]
        if centre is not None:
            x = split.x.to(self._dtype())
            learned = float(centre_distance(self, x, centre).mean())
            centred = float(centre_distance(self.controls()["centred mask"], x, centre).mean())
            print(
                f"masks on {self.spec.name}: the mask centre is {learned:.2f} px from the "
                f"target on average over {len(split)} test canvases (centred mask: "
                f"{centred:.2f} px)"
            )
        return paths

    def extra_repr(self) -> str:
        cfg: dict[str, Any] = self.config
        return ", ".join(f"{k}={v!r}" for k, v in cfg.items())


@torch.no_grad()
def centre_distance(
    commentary: MaskCommentary, x: torch.Tensor, centre: torch.Tensor, seed: int = 0
) -> torch.Tensor:
    """The distance in pixels between each mask's centre and the true target centre.

    **Arguments:**

    - `commentary`: a [`MaskCommentary`][implicitgrad_commentaries.MaskCommentary] (learned
      or a control; a random control draws its centres from `seed`).
    - `x`: images `(n, c, H, W)`.
    - `centre`: the true centres `(n, 2)` as (row, column), e.g. a
      [`PlacedSplit`][implicitgrad_commentaries.mask_data.PlacedSplit]'s `centre`.

    **Returns:**

    The distances, shape `(n,)`.

    **Example:**

    ```python
    import torch
    from implicitgrad_commentaries import DataSpec, MaskCommentary
    from implicitgrad_commentaries.masks import centre_distance
    c = MaskCommentary(DataSpec("toy", (1, 9, 9), ("a", "b")), mode="centred")
    d = centre_distance(c, torch.rand(2, 1, 9, 9), torch.tensor([[4.0, 4.0], [4.0, 7.0]]))
    assert torch.allclose(d, torch.tensor([0.0, 3.0]))
    ```
    """
    commentary.eval()
    mu, _, _ = commentary.parameters_of_mask(x, torch.Generator().manual_seed(seed))
    return (mu - centre.to(mu.dtype)).norm(dim=1)


def plot_masks(
    commentary: MaskCommentary,
    x: torch.Tensor,
    out: str | os.PathLike[str],
    centre: torch.Tensor | None = None,
    rows: int = 4,
    cols: int = 8,
) -> Path:
    """Write a grid of images with their masks overlaid as `masks.png` (matplotlib, Agg).

    Each image is shown in grey with the mask as a translucent heat map, the mask's centre
    as a red cross and, when `centre` is given, the true target centre as a green plus.

    **Arguments:**

    - `commentary`: a [`MaskCommentary`][implicitgrad_commentaries.MaskCommentary].
    - `x`: images `(n, 1, H, W)`; the first `rows * cols` are drawn.
    - `out`: the folder (created if needed).
    - `centre`: the true target centres `(n, 2)`, optional.

    **Returns:**

    The path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(rows * cols, x.shape[0])
    images = x[:k].to(commentary._dtype())
    commentary.eval()
    with torch.no_grad():
        masks = commentary(images, torch.Generator().manual_seed(0))[:, 0].float()
        mu, sigma, background = commentary.parameters_of_mask(
            images, torch.Generator().manual_seed(0)
        )
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= k:
            continue
        ax.imshow(images[i, 0].float().numpy(), cmap="gray", vmin=0, vmax=1)
        ax.imshow(masks[i].numpy(), cmap="magma", alpha=0.45)
        ax.plot(float(mu[i, 1]), float(mu[i, 0]), "rx", markersize=6)
        if centre is not None:
            ax.plot(float(centre[i, 1]), float(centre[i, 0]), "g+", markersize=8)
        ax.set_title(f"σ={float(sigma[i]):.1f}", fontsize=7)
    fig.suptitle(
        f"{commentary.spec.name}: masks ({commentary.teacher_kind}, {commentary.mode}), "
        f"background {float(background):.2f}; red x: mask centre, green +: target"
    )
    return _save(fig, out, "masks.png")


def plot_masked_inputs(
    commentary: MaskCommentary,
    x: torch.Tensor,
    out: str | os.PathLike[str],
    centre: torch.Tensor | None = None,
    rows: int = 4,
    cols: int = 4,
) -> Path:
    """Write `masked-inputs.png`: a grid of canvases, each beside what the student sees.

    Each of the first `rows * cols` images is drawn twice: the canvas with the mask's
    $1\\sigma$ and $2\\sigma$ circles around its centre (red cross) and, when `centre` is
    given, the true target centre (green plus) and their distance; and the masked image
    $x \\odot m_\\phi(x)$ that the student is trained and tested on. With `centre`, the
    title gives the mean distance over all of `x`.

    **Arguments:**

    - `commentary`: a [`MaskCommentary`][implicitgrad_commentaries.MaskCommentary].
    - `x`: images `(n, 1, H, W)`.
    - `out`: the folder (created if needed).
    - `centre`: the true target centres `(n, 2)` as (row, column), optional.
    - `rows`, `cols`: the grid of canvases (default 4 × 4).

    **Returns:**

    The path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    k = min(rows * cols, x.shape[0])
    images = x.to(commentary._dtype())
    commentary.eval()
    with torch.no_grad():
        shown = images[:k]
        masked = commentary.student_inputs(
            commentary.phi(), shown, torch.Generator().manual_seed(0)
        )[:, 0].float()
        mu, sigma, background = commentary.parameters_of_mask(
            shown, torch.Generator().manual_seed(0)
        )
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(1.5 * 2 * cols, 1.65 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(k):
        left, right = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        left.imshow(shown[i, 0].float().numpy(), cmap="gray", vmin=0, vmax=1)
        ring = (float(mu[i, 1]), float(mu[i, 0]))
        for radius, style in ((1.0, "-"), (2.0, "--")):
            left.add_patch(
                Circle(ring, radius * float(sigma[i]), fill=False, color="red", ls=style, lw=0.8)
            )
        left.plot(*ring, "rx", markersize=5)
        if centre is not None:
            left.plot(float(centre[i, 1]), float(centre[i, 0]), "g+", markersize=8)
            gap = float((mu[i] - centre[i].to(mu.dtype)).norm())
            left.set_title(f"{gap:.1f} px", fontsize=7)
        left.set_xlim(-0.5, shown.shape[-1] - 0.5)
        left.set_ylim(shown.shape[-2] - 0.5, -0.5)
        right.imshow(masked[i].numpy(), cmap="gray", vmin=0, vmax=1)
        right.set_title("student sees", fontsize=7)
    title = (
        f"{commentary.spec.name}: masks ({commentary.teacher_kind}, {commentary.mode}), "
        f"background {float(background):.2f}. Left: canvas, mask centre (red x) with its 1σ and "
        "2σ circles"
    )
    if centre is not None:
        mean = float(centre_distance(commentary, images, centre).mean())
        title += (
            f", target centre (green +), distance in px.\nMean distance over all "
            f"{images.shape[0]} canvases {mean:.2f} px"
        )
    fig.suptitle(title + ". Right: x ⊙ m.", fontsize=8)
    return _save(fig, out, "masked-inputs.png")


def _save(fig: Any, out: str | os.PathLike[str], name: str) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""A synthetic many-class glyph set, generated from a seed: the few-shot data set with
enough classes for meta-learning to matter, available without downloads."""

from __future__ import annotations

import math

import numpy as np
import torch

from implicitgrad import InputError

from .episodes import ClassSplit, EpisodicDataset

__all__ = ["make_glyphs", "GLYPH_SPLIT"]

GLYPH_SPLIT = (0.64, 0.16, 0.20)
"""The shares of glyph classes (by class id, in order) for meta-training, -validation, -test."""

_MAX_STROKES = 4
_POINTS = 9  # points along each stroke: 8 straight segments approximate the curve
_CHUNK = 64  # examples rendered at once: small enough to stay in cache (2 MB an array)


def _render(
    segments: torch.Tensor, present: torch.Tensor, half_width: torch.Tensor, size: int
) -> torch.Tensor:
    """Anti-aliased strokes: coverage of each pixel by the nearest segment's thick line.

    `segments` is `(n, s, 2, 2)` (start and end points in unit coordinates), `present`
    `(n, s)` marks the real ones, `half_width` is `(n,)`.
    """
    # NumPy rather than torch: its single-threaded elementwise kernels on cache-sized
    # chunks are 2-3 times faster here than torch's thread pool on a busy 2-core machine.
    seg, hw = segments.numpy(), half_width.numpy()[:, None]
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    rows, cols = np.repeat(centres, size)[None, :, None], np.tile(centres, size)[None, :, None]
    ax, ay = seg[:, None, :, 0, 0], seg[:, None, :, 0, 1]  # (n, 1, s)
    dx, dy = seg[:, None, :, 1, 0] - ax, seg[:, None, :, 1, 1] - ay
    px, py = rows - ax, cols - ay  # (n, pixels, s)
    t = np.clip((px * dx + py * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0, 1)
    px -= t * dx
    py -= t * dy
    dist2 = np.where(present.numpy()[:, None], px * px + py * py, np.inf).min(-1)
    coverage = np.clip((hw - np.sqrt(dist2)) * size + 0.5, 0, 1).astype(np.float32)
    return torch.from_numpy(coverage).reshape(-1, 1, size, size)


def make_glyphs(
    n_classes: int = 400, per_class: int = 20, size: int = 16, seed: int = 0
) -> EpisodicDataset:
    """A synthetic glyph set: `n_classes` random stroke figures, `per_class` drawings of each.

    The set is **synthetic**, generated procedurally and identical for a given seed, so
    that few-shot learning can be studied on hundreds of classes without downloads (digits
    has ten). It plays the role Omniglot plays in the literature, but it is not Omniglot.

    - **A class** is 2 to 4 strokes (the count uniform), each a straight line (40%) or a
      quadratic Bézier arc (60%) with control points uniform in $[0.15, 0.85]^2$ of the unit
      square.
    - **A drawing** of a class moves each control point by $\\mathcal N(0, 0.03^2)$, then
      applies a random affine map about the centre: a rotation uniform in
      $\\pm 15°$, a scale uniform in $[0.85, 1.1]$ and a shift uniform in $\\pm 0.08$ per
      axis. The strokes are rendered anti-aliased with a half-width uniform in
      $[0.035, 0.06]$ (0.6 to 1 pixel at size 16), then Gaussian pixel noise
      ($\\sigma = 0.05$) is added and the image clipped to $[0, 1]$.
    - **The class split** is by class id: the first 64% meta-training, the next 16%
      meta-validation, the last 20% meta-test (`GLYPH_SPLIT`); with the defaults 256 / 64 /
      80 classes.

    Generation is vectorized: the default 8,000 images take a few seconds on a CPU.

    **Arguments:**

    - `n_classes`: the number of classes (at least 5).
    - `per_class`: drawings per class.
    - `size`: the image side in pixels.
    - `seed`: the generator seed; the same seed gives identical tensors.

    **Returns:**

    An [`EpisodicDataset`][implicitgrad_commentaries.EpisodicDataset] named `"glyphs"`
    with inputs `(1, size, size)` in $[0, 1]$ (strokes bright on a dark ground, like
    digits), ordered by class.

    **Example:**

    ```python
    from implicitgrad_commentaries import make_glyphs

    glyphs = make_glyphs()
    print(glyphs.x.shape, [len(glyphs.classes(p)) for p in ("train", "val", "test")])
    # torch.Size([8000, 1, 16, 16]) [256, 64, 80]
    ```
    """
    for arg, value, low in (
        ("n_classes", n_classes, 5),
        ("per_class", per_class, 1),
        ("size", size, 4),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"`make_glyphs({arg}=...)` must be an int >= {low}, got {value!r}.")
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=gen)

    # The classes: control points (class, stroke, P0/P1/P2, xy) and which strokes exist.
    control = uniform(0.15, 0.85, n_classes, _MAX_STROKES, 3, 2)
    is_line = torch.rand(n_classes, _MAX_STROKES, generator=gen) < 0.4
    midpoint = (control[:, :, 0] + control[:, :, 2]) / 2
    control[:, :, 1] = torch.where(is_line[..., None], midpoint, control[:, :, 1])
    n_strokes = torch.randint(2, _MAX_STROKES + 1, (n_classes,), generator=gen)
    present = torch.arange(_MAX_STROKES) < n_strokes[:, None]

    # The drawings: per-example control-point wobble, affine jitter and stroke width.
    n = n_classes * per_class
    y = torch.arange(n_classes).repeat_interleave(per_class)
    points = control[y] + 0.03 * torch.randn(n, _MAX_STROKES, 3, 2, generator=gen)
    angle = uniform(-math.pi / 12, math.pi / 12, n)
    scale = uniform(0.85, 1.1, n)
    shift = uniform(-0.08, 0.08, n, 2)
    half_width = uniform(0.035, 0.06, n)
    noise = 0.05 * torch.randn(n, 1, size, size, generator=gen)

    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    points = torch.einsum("nij,nscj->nsci", linear, points - 0.5) + 0.5 + shift[:, None, None]

    t = torch.linspace(0, 1, _POINTS)[:, None]
    p0, p1, p2 = points[:, :, None, 0], points[:, :, None, 1], points[:, :, None, 2]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (n, stroke, point, xy)
    segments = torch.stack([curve[:, :, :-1], curve[:, :, 1:]], 3)  # (n, stroke, seg, 2, 2)
    segments = segments.reshape(n, -1, 2, 2)
    seg_present = present[y].repeat_interleave(_POINTS - 1, dim=1)

    chunks = [slice(i, i + _CHUNK) for i in range(0, n, _CHUNK)]
    images = torch.cat([_render(segments[c], seg_present[c], half_width[c], size) for c in chunks])
    x = (images + noise).clamp_(0, 1)
    return EpisodicDataset(
        name="glyphs",
        x=x,
        y=y,
        split=ClassSplit.by_fraction(range(n_classes), GLYPH_SPLIT),
        input_shape=(1, size, size),
        description=(
            f"Synthetic glyphs (seed {seed}): {n_classes} classes of 2-4 random strokes, "
            f"{per_class} jittered drawings each, {size}x{size}; generated, not real data."
        ),
        class_names=tuple(f"glyph {c}" for c in range(n_classes)),
    )

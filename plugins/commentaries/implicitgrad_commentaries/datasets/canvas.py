"""Canvas tasks built from scikit-learn's digits for attention-mask commentaries.

Two tasks, both on a larger canvas with the target digit at a random position:

- `cluttered`: distractor fragments (random crops of other digits) around the target;
- `spurious`: a class-coded bar at the bottom of the canvas that predicts the label in the
  training and validation splits but not in the test split.

Every split records where its target digit is, so that a learned mask can be checked for
localization. The digits of the train, validation and test canvases come from the disjoint,
stratified splits of [`load_digits_dataset`][implicitgrad_commentaries.data.load_digits_dataset];
everything is seeded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from implicitgrad import InputError

from ..commentaries.base import DataSpec
from .digits import load_digits_dataset
from .splits import Dataset, Split

__all__ = ["PlacedSplit", "MASK_DATASETS", "load_cluttered", "load_spurious", "load_mask_dataset"]

MASK_DATASETS = ("cluttered", "spurious")
"""Names accepted by `load_mask_dataset`."""

_DIGIT = 8


@dataclass(frozen=True)
class PlacedSplit(Split):
    """A [`Split`][implicitgrad_commentaries.data.Split] that also records where the target
    digit of every canvas is.

    **Fields:**

    - `x`, `y`: inputs `(n, 1, H, W)` in $[0, 1]$ and labels `(n,)`, as in `Split`.
    - `centre`: the target digit's centre in pixels, `(n, 2)` as (row, column), float32.
    """

    centre: torch.Tensor

    def __getitem__(self, idx: torch.Tensor) -> PlacedSplit:
        return PlacedSplit(self.x[idx], self.y[idx], self.centre[idx])


def _check(call: str, size: int, stride: int, copies: int, **counts: int) -> None:
    if not isinstance(size, int) or size < 2 * _DIGIT:
        raise InputError(
            f"`{call}(size=...)` must be an int >= {2 * _DIGIT} (the canvas must hold a digit "
            f"and room around it), got {size!r}."
        )
    for name, value in (("stride", stride), ("copies", copies)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"`{call}({name}=...)` must be an int >= 1, got {value!r}.")
    for name, value in counts.items():
        if not isinstance(value, int) or value < 0:
            raise InputError(f"`{call}({name}=...)` must be an int >= 0, got {value!r}.")


def _place_targets(
    digits: np.ndarray, size: int, rng: np.random.Generator, max_row: int, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    n = digits.shape[0]
    canvas = np.zeros((n, size, size), dtype=np.float32)
    rows = rng.integers(0, max_row // stride + 1, n) * stride
    cols = rng.integers(0, (size - _DIGIT) // stride + 1, n) * stride
    corner = np.stack([rows, cols], axis=1)
    for i, (r, c) in enumerate(corner):
        canvas[i, r : r + _DIGIT, c : c + _DIGIT] = digits[i]
    return canvas, corner


def _add_distractors(
    canvas: np.ndarray,
    corner: np.ndarray,
    digits: np.ndarray,
    count: int,
    crop: int,
    rng: np.random.Generator,
) -> None:
    n, size = canvas.shape[0], canvas.shape[1]
    for i in range(n):
        placed = 0
        for _ in range(50 * count):
            if placed == count:
                break
            r, c = rng.integers(0, size - crop + 1, 2)
            # Keep fragments off the target, so that the target stays the only whole digit.
            tr, tc = corner[i]
            if r < tr + _DIGIT and r + crop > tr and c < tc + _DIGIT and c + crop > tc:
                continue
            j = int(rng.integers(0, n - 1))
            j += j >= i
            sr, sc = rng.integers(0, _DIGIT - crop + 1, 2)
            patch = digits[j, sr : sr + crop, sc : sc + crop]
            region = canvas[i, r : r + crop, c : c + crop]
            np.maximum(region, patch, out=region)
            placed += 1


def _placed(canvas: np.ndarray, y: np.ndarray, corner: np.ndarray) -> PlacedSplit:
    centre = corner.astype(np.float32) + (_DIGIT - 1) / 2
    return PlacedSplit(
        torch.from_numpy(canvas[:, None].copy()),
        torch.tensor(y, dtype=torch.int64),
        torch.from_numpy(centre),
    )


@functools.lru_cache(maxsize=4)
def _splits(seed: int) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    base = load_digits_dataset(seed)
    splits = (("train", base.train), ("val", base.val), ("test", base.test))
    out = tuple((name, split.x[:, 0].numpy(), split.y.numpy()) for name, split in splits)
    for _, digits, labels in out:  # cached: shared by every call, so never written to
        digits.flags.writeable = labels.flags.writeable = False
    return out


def load_cluttered(
    size: int = 24,
    distractors: int = 6,
    crop: int = 4,
    stride: int = 8,
    copies: int = 2,
    seed: int = 0,
) -> Dataset:
    """Digits on a cluttered canvas: find the whole digit among fragments of others.

    Each canvas holds one digit (the target; its class is the label) at a random position
    whose coordinates are multiples of `stride`, and `distractors` fragments:
    `crop`×`crop` crops of the digits of other canvases of the same split, placed anywhere
    that does not overlap the target. The target is the only complete digit, so a student
    that looks at the right place can classify it and one that looks everywhere must ignore
    the fragments.

    !!! tip
        The default `stride=8` puts the target at one of nine places on the 24×24 canvas;
        with `stride=1` every position is possible, which the small students here cannot
        learn from 1,077 digits (they stay near chance), masked or not.

    **Arguments:**

    - `size`: the canvas side in pixels (default `24`).
    - `distractors`: fragments per canvas (default `6`).
    - `crop`: the side of a fragment (default `4`, half a digit).
    - `stride`: the grid of target positions, in pixels (default `8`).
    - `copies`: canvases per training digit, each with its own placement (default `2`).
    - `seed`: the split and placement seed (default `0`; the documented results use it).

    **Returns:**

    A [`Dataset`][implicitgrad_commentaries.data.Dataset] named `"cluttered"` with inputs
    `(1, size, size)`, whose splits are
    [`PlacedSplit`][implicitgrad_commentaries.mask_data.PlacedSplit]s.

    **Example:**

    ```python
    from implicitgrad_commentaries.mask_data import load_cluttered
    data = load_cluttered()
    print(data.spec.input_shape, len(data.train), tuple(data.test.centre.shape))
    ```
    """
    _check("load_cluttered", size, stride, copies, distractors=distractors, crop=crop)
    if not 1 <= crop <= _DIGIT:
        raise InputError(f"`load_cluttered(crop=...)` must lie in [1, {_DIGIT}], got {crop!r}.")
    rng = np.random.default_rng([seed, 1])
    out = {}
    for name, digits, y in _splits(seed):
        if name == "train":
            digits, y = np.repeat(digits, copies, axis=0), np.repeat(y, copies)
        canvas, corner = _place_targets(digits, size, rng, size - _DIGIT, stride)
        _add_distractors(canvas, corner, digits, int(distractors), int(crop), rng)
        out[name] = _placed(canvas, y, corner)
    spec = DataSpec("cluttered", (1, size, size), tuple(str(c) for c in range(10)))
    return Dataset(spec, out["train"], out["val"], out["test"])


def load_spurious(
    size: int = 24,
    correlation: float = 0.9,
    stride: int = 8,
    copies: int = 2,
    val_correlation: float | None = None,
    seed: int = 0,
) -> Dataset:
    """Digits on a canvas with a spurious, class-coded bar that stops predicting at test time.

    Each canvas holds one digit at a random position (multiples of `stride`, as in
    [`load_cluttered`][implicitgrad_commentaries.mask_data.load_cluttered]) in its upper
    part and, in the bottom
    two rows, a bar of width two at column $2k$ that encodes a class $k$. In the training and
    validation splits $k$ is the label with probability `correlation` and a uniformly random
    class otherwise; in the test split $k$ is always random. A student that reads the bar
    does well on training and validation data and fails at test time; one that reads the
    digit does not.

    **Arguments:**

    - `size`: the canvas side in pixels (default `24`; at least 20 so that the bar fits).
    - `correlation`: probability that the bar shows the label in train and validation
      (default `0.9`).
    - `stride`: the grid of digit positions, in pixels (default `8`).
    - `copies`: canvases per training digit (default `2`).
    - `val_correlation`: the correlation in the validation split, if it should differ from
      `correlation` (default `None`: the same). `0.0` gives a validation split that, like
      the test split, does not reward reading the bar.
    - `seed`: the split and placement seed.

    **Returns:**

    A [`Dataset`][implicitgrad_commentaries.data.Dataset] named `"spurious"` whose splits are
    [`PlacedSplit`][implicitgrad_commentaries.mask_data.PlacedSplit]s.

    **Example:**

    ```python
    from implicitgrad_commentaries.mask_data import load_spurious
    data = load_spurious()
    bar = data.train.x[:, 0, -1, ::2].argmax(1)   # the class the bar encodes
    print(round(float((bar == data.train.y).float().mean()), 2) > 0.85)
    ```
    """
    _check("load_spurious", size, stride, copies)
    if size < 20:
        raise InputError(
            f"`load_spurious(size=...)` must be >= 20 so that the ten-class bar fits, got {size}."
        )
    if val_correlation is None:
        val_correlation = correlation
    for name, value in (("correlation", correlation), ("val_correlation", val_correlation)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"`load_spurious({name}=...)` must lie in [0, 1], got {value!r}.")
    rates = {"train": correlation, "val": val_correlation, "test": 0.0}
    rng = np.random.default_rng([seed, 2])
    out = {}
    # The digit stays out of the bottom rows so that the bar never overlaps it.
    max_row = size - _DIGIT - 4
    for name, digits, y in _splits(seed):
        if name == "train":
            digits, y = np.repeat(digits, copies, axis=0), np.repeat(y, copies)
        canvas, corner = _place_targets(digits, size, rng, max_row, stride)
        random_class = rng.integers(0, 10, y.shape[0])
        honest = rng.random(y.shape[0]) < rates[name]
        code = np.where(honest, y, random_class)
        for i, k in enumerate(code):
            canvas[i, size - 2 :, 2 * k : 2 * k + 2] = 1.0
        out[name] = _placed(canvas, y, corner)
    spec = DataSpec("spurious", (1, size, size), tuple(str(c) for c in range(10)))
    return Dataset(spec, out["train"], out["val"], out["test"])


def load_mask_dataset(name: str, seed: int = 0) -> Dataset:
    """Load `"cluttered"` or `"spurious"` with its default settings.

    **Arguments:**

    - `name`: one of `MASK_DATASETS`.
    - `seed`: the split and placement seed.

    **Returns:**

    A [`Dataset`][implicitgrad_commentaries.data.Dataset].

    **Example:**

    ```python
    from implicitgrad_commentaries.mask_data import load_mask_dataset
    assert load_mask_dataset("cluttered").spec.name == "cluttered"
    ```
    """
    if name == "cluttered":
        return load_cluttered(seed=seed)
    if name == "spurious":
        return load_spurious(seed=seed)
    raise InputError(
        f"`load_mask_dataset(name={name!r})`: expected one of {', '.join(MASK_DATASETS)}."
    )

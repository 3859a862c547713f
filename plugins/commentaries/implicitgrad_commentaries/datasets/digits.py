"""scikit-learn's bundled digits with fixed splits, and two-class tasks built from them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from implicitgrad import InputError

from ..commentaries.base import DataSpec
from .splits import Dataset, stratified_split

__all__ = ["load_digits_dataset", "load_binary_digits", "load_noisy_digits"]


def load_digits_dataset(seed: int = 0) -> Dataset:
    """scikit-learn's digits: 1,797 8×8 grayscale images of 10 classes, split 60/15/25.

    **Arguments:**

    - `seed`: the split seed (default `0`; the documented results use it).

    **Returns:**

    A [`Dataset`][implicitgrad_commentaries.data.Dataset] with inputs of shape `(1, 8, 8)`
    scaled to $[0, 1]$.

    **Example:**

    ```python
    from implicitgrad_commentaries.data import load_digits_dataset
    data = load_digits_dataset()
    print(len(data.train), len(data.val), len(data.test))   # 1077 270 450
    ```
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    train, val, test = stratified_split(x, bunch.target, (0.15, 0.25), seed)
    spec = DataSpec("digits", (1, 8, 8), tuple(str(c) for c in range(10)))
    return Dataset(spec, train, val, test)


def load_binary_digits(overlap: bool, seed: int = 0) -> Dataset:
    """A two-class task built from digits, with or without overlapping classes.

    Class `a` holds the 0s and class `b` the 1s. In the overlapping variant each class also
    holds half of the 8s (assigned at random with `seed`), so one region of input space
    carries both labels and no student can fit it: the setting where a curriculum can
    choose to down-weight (or up-weight) examples near the class boundary.

    **Arguments:**

    - `overlap`: build the overlapping variant.
    - `seed`: the split (and 8-assignment) seed.

    **Returns:**

    A two-class [`Dataset`][implicitgrad_commentaries.data.Dataset] named
    `"digits-binary-overlap"` or `"digits-binary"`.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    t = bunch.target
    keep = (t == 0) | (t == 1) | ((t == 8) & overlap)
    x, t = x[keep], t[keep]
    y = (t == 1).astype(np.int64)
    if overlap:
        eights = np.flatnonzero(t == 8)
        rng = np.random.default_rng(seed)
        y[eights] = rng.permutation(np.arange(eights.size) % 2)
    train, val, test = stratified_split(x, y, (0.15, 0.25), seed)
    name = "digits-binary-overlap" if overlap else "digits-binary"
    return Dataset(DataSpec(name, (1, 8, 8), ("a", "b")), train, val, test)


def load_noisy_digits(noise: float = 0.2, seed: int = 0) -> Dataset:
    """Digits with label noise in the training split: a test of whether an example-weighting
    commentary learns to down-weight mislabeled examples.

    The splits are those of
    [`load_digits_dataset`][implicitgrad_commentaries.data.load_digits_dataset] with the
    same `seed`. Exactly `round(noise * n_train)` training examples, chosen at random
    with `seed`, get a label drawn uniformly from the *other* nine classes. The validation and
    test splits are left clean, so the outer loss rewards a student that fits the true
    labels. The training split records the flips in `noisy` and the original labels in
    `clean_y`.

    **Arguments:**

    - `noise`: the fraction of training labels to replace, in $[0, 1]$ (default `0.2`).
    - `seed`: the split and noise seed (default `0`; the documented results use it).

    **Returns:**

    A [`Dataset`][implicitgrad_commentaries.data.Dataset] named `"digits-noisy"`.

    **Example:**

    ```python
    from implicitgrad_commentaries.datasets import load_noisy_digits
    data = load_noisy_digits(noise=0.2)
    flipped = data.train.noisy
    print(int(flipped.sum()), len(data.train))  # 215 1077
    assert bool((data.train.y[flipped] != data.train.clean_y[flipped]).all())
    ```
    """
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 1:
        raise InputError(
            f"`load_noisy_digits(noise=...)` must be a fraction in [0, 1], got {noise!r}."
        )
    clean = load_digits_dataset(seed)
    y = clean.train.y
    n, classes = len(y), clean.spec.num_classes
    rng = np.random.default_rng(seed)
    flip = rng.permutation(n)[: round(noise * n)]
    noisy = torch.zeros(n, dtype=torch.bool)
    noisy[flip] = True
    # An offset in 1..C-1 gives each other class the same probability.
    offset = torch.as_tensor(rng.integers(1, classes, flip.size), dtype=torch.int64)
    given = y.clone()
    given[flip] = (y[flip] + offset) % classes
    train = replace(clean.train, y=given, noisy=noisy, clean_y=y.clone())
    spec = DataSpec("digits-noisy", clean.spec.input_shape, clean.spec.classes)
    return Dataset(spec, train, clean.val, clean.test)

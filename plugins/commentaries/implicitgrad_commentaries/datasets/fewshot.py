"""The few-shot data sets by name: digits with a fixed class split, the synthetic glyphs,
and the MiniImageNet and Omniglot readers."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from implicitgrad import InputError

from .episodes import ClassSplit, EpisodicDataset
from .fewshot_readers import read_miniimagenet_pickle, read_omniglot_folder
from .glyphs import make_glyphs

__all__ = ["DIGITS_CLASS_SPLIT", "load_fewshot_digits", "FEWSHOT_DATASETS", "load_fewshot_dataset"]

DIGITS_CLASS_SPLIT = ClassSplit(train=(0, 1, 2, 3, 4), val=(), test=(5, 6, 7, 8, 9))
"""Digits' fixed class split: 0-4 for meta-training, 5-9 for meta-test, no meta-validation."""


def load_fewshot_digits(split: ClassSplit = DIGITS_CLASS_SPLIT) -> EpisodicDataset:
    """scikit-learn's digits (1,797 8×8 images of 10 classes) as a few-shot data set.

    Ten classes allow one 5-way split only: meta-training tasks draw from digits 0-4 and
    meta-test tasks from digits 5-9, so every meta-test class is new. Nothing is left for
    meta-validation: `sampler("val", ...)` raises an
    [`InputError`][implicitgrad.InputError]; select hyperparameters on meta-training tasks
    or on the glyph set, which has a validation part. Pass another `split` for fewer ways
    (for example three parts of three classes for 3-way tasks).

    **Arguments:**

    - `split`: the class split (default `DIGITS_CLASS_SPLIT`).

    **Returns:**

    An [`EpisodicDataset`][implicitgrad_commentaries.EpisodicDataset] named `"digits"`
    with inputs `(1, 8, 8)` in $[0, 1]$; about 180 images per class.

    **Example:**

    ```python
    from implicitgrad_commentaries import load_fewshot_digits

    digits = load_fewshot_digits()
    print(digits.classes("train"), digits.classes("test"))   # (0, 1, 2, 3, 4) (5, 6, 7, 8, 9)
    ```
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32)[:, None])
    return EpisodicDataset(
        name="digits",
        x=x,
        y=torch.as_tensor(bunch.target, dtype=torch.int64),
        split=split,
        input_shape=(1, 8, 8),
        description="scikit-learn's digits: 1,797 8x8 handwritten digits; real data.",
        class_names=tuple(str(c) for c in range(10)),
    )


FEWSHOT_DATASETS: dict[str, Callable[..., EpisodicDataset]] = {
    "digits": load_fewshot_digits,
    "glyphs": make_glyphs,
    "miniimagenet": read_miniimagenet_pickle,
    "omniglot": read_omniglot_folder,
}
"""Few-shot data sets by name. `"digits"` and `"glyphs"` need no files; `"miniimagenet"` and
`"omniglot"` take the folder with the files as their first argument."""

_NEEDS_PATH = ("miniimagenet", "omniglot")


def load_fewshot_dataset(
    name: str, path: str | os.PathLike[str] | None = None, **options: object
) -> EpisodicDataset:
    """A few-shot data set by name, from `FEWSHOT_DATASETS`.

    **Arguments:**

    - `name`: `"digits"`, `"glyphs"`, `"miniimagenet"` or `"omniglot"`.
    - `path`: the folder with the files, for `"miniimagenet"` and `"omniglot"` only.
    - `options`: keyword arguments of the loader, such as `n_classes=` for the glyphs.

    **Returns:**

    An [`EpisodicDataset`][implicitgrad_commentaries.EpisodicDataset].
    """
    if name not in FEWSHOT_DATASETS:
        raise InputError(
            f"`load_fewshot_dataset(name={name!r})`: unknown data set; expected one of "
            f"{', '.join(FEWSHOT_DATASETS)}."
        )
    loader = FEWSHOT_DATASETS[name]
    if name in _NEEDS_PATH:
        if path is None:
            raise InputError(
                f"`load_fewshot_dataset({name!r})` reads local files: pass path=<their folder>."
            )
        return loader(path, **options)
    if path is not None:
        raise InputError(
            f"`load_fewshot_dataset({name!r}, path=...)`: {name!r} needs no files; drop path."
        )
    return loader(**options)

"""Every data set by name: the digits tasks, the canvas tasks and the local readers.

Nothing is downloaded. CIFAR-10/100 and MNIST are read from files the user placed in a
local folder; a missing file raises an error that says where to put it.
"""

from __future__ import annotations

import os

import torch

from implicitgrad import InputError

from ..commentaries.base import DataSpec
from .canvas import load_mask_dataset
from .digits import load_binary_digits, load_digits_dataset, load_noisy_digits
from .readers import read_cifar, read_mnist
from .splits import Dataset, Split

__all__ = ["DATASETS", "load_dataset"]

DATASETS = (
    "digits",
    "digits-binary",
    "digits-binary-overlap",
    "digits-noisy",
    "cluttered",
    "spurious",
    "mnist",
    "cifar10",
    "cifar100",
)
"""Names accepted by [`load_dataset`][implicitgrad_commentaries.data.load_dataset]."""


def _with_val(name: str, train: Split, test: Split, classes: list[str], seed: int) -> Dataset:
    """Carve a seeded 10% validation split out of a training set."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=gen)
    n_val = max(1, len(train) // 10)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    spec = DataSpec(name, tuple(train.x.shape[1:]), tuple(classes))
    return Dataset(
        spec,
        Split(train.x[train_idx], train.y[train_idx]),
        Split(train.x[val_idx], train.y[val_idx]),
        test,
    )


def load_dataset(name: str, data_dir: str | os.PathLike[str] = "data", seed: int = 0) -> Dataset:
    """Load a dataset by name with fixed, seeded splits.

    **Arguments:**

    - `name`: one of `DATASETS`: `"digits"`, `"digits-binary"`, `"digits-binary-overlap"`
      (bundled with scikit-learn), `"digits-noisy"` (20% of the training labels replaced,
      [`load_noisy_digits`][implicitgrad_commentaries.datasets.load_noisy_digits]),
      `"cluttered"`, `"spurious"` (canvas tasks built from
      digits, in `implicitgrad_commentaries.mask_data`), or `"mnist"`, `"cifar10"`,
      `"cifar100"` (read from
      `data_dir`).
    - `data_dir`: the folder with the MNIST/CIFAR files (default `"data"`).
    - `seed`: the split seed.

    **Returns:**

    A [`Dataset`][implicitgrad_commentaries.data.Dataset].
    """
    if name == "digits":
        return load_digits_dataset(seed)
    if name in ("digits-binary", "digits-binary-overlap"):
        return load_binary_digits(name.endswith("overlap"), seed)
    if name == "digits-noisy":
        return load_noisy_digits(0.2, seed)
    if name in ("cluttered", "spurious"):
        return load_mask_dataset(name, seed)
    if name == "mnist":
        return _with_val(name, *read_mnist(data_dir), seed)
    if name in ("cifar10", "cifar100"):
        return _with_val(name, *read_cifar(data_dir, int(name[5:])), seed)
    raise InputError(
        f"`load_dataset(name={name!r})`: unknown dataset; expected one of {', '.join(DATASETS)}."
    )

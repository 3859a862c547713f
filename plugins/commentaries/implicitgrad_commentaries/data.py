"""Datasets: scikit-learn's digits with fixed splits, tasks built from it, and local readers.

Nothing is downloaded. CIFAR-10/100 and MNIST are read from files the user placed in a
local folder; a missing file raises an error that says where to put it.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from implicitgrad import InputError

from ._base import DataSpec

__all__ = [
    "Split",
    "Dataset",
    "DATASETS",
    "load_dataset",
    "load_digits_dataset",
    "load_binary_digits",
    "read_cifar",
    "read_mnist",
]

DATASETS = (
    "digits",
    "digits-binary",
    "digits-binary-overlap",
    "cluttered",
    "spurious",
    "mnist",
    "cifar10",
    "cifar100",
)
"""Names accepted by [`load_dataset`][implicitgrad_commentaries.data.load_dataset]."""


@dataclass(frozen=True)
class Split:
    """Inputs `x` (float32, `(n, *input_shape)`, in $[0, 1]$) and labels `y` (int64, `(n,)`)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    """Fixed train/validation/test splits with their `DataSpec`."""

    spec: DataSpec
    train: Split
    val: Split
    test: Split


def _split(
    x: np.ndarray, y: np.ndarray, fractions: tuple[float, float], seed: int
) -> tuple[Split, Split, Split]:
    """Stratified, seeded split into train / validation / test."""
    from sklearn.model_selection import train_test_split

    val_frac, test_frac = fractions
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_frac, random_state=seed, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_frac / (1 - test_frac), random_state=seed + 1, stratify=y_rest
    )

    def make(a: np.ndarray, b: np.ndarray) -> Split:
        return Split(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.int64))

    return make(x_train, y_train), make(x_val, y_val), make(x_test, y_test)


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
    train, val, test = _split(x, bunch.target, (0.15, 0.25), seed)
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
    train, val, test = _split(x, y, (0.15, 0.25), seed)
    name = "digits-binary-overlap" if overlap else "digits-binary"
    return Dataset(DataSpec(name, (1, 8, 8), ("a", "b")), train, val, test)


def _missing(what: str, path: Path, how: str) -> InputError:
    return InputError(
        f"{what}: file {str(path)!r} not found. Nothing is downloaded; {how} Pass its "
        "folder with --data-dir (or data_dir=...)."
    )


def read_cifar(
    root: str | os.PathLike[str], num_classes: int = 10
) -> tuple[Split, Split, list[str]]:
    """Read CIFAR-10 or CIFAR-100 from the official "python version" pickle batches.

    **Arguments:**

    - `root`: the folder that holds `cifar-10-batches-py/` (CIFAR-10: `data_batch_1..5`,
      `test_batch`, `batches.meta`) or `cifar-100-python/` (CIFAR-100: `train`, `test`,
      `meta`).
    - `num_classes`: `10` or `100`.

    **Returns:**

    `(train, test, class_names)`, inputs of shape `(n, 3, 32, 32)` scaled to $[0, 1]$.
    """
    if num_classes not in (10, 100):
        raise InputError(f"`read_cifar(num_classes=...)` must be 10 or 100, got {num_classes!r}.")
    how = (
        f"download cifar-{num_classes}-python.tar.gz from https://www.cs.toronto.edu/~kriz/"
        f"cifar.html and extract it into {str(root)!r}."
    )
    if num_classes == 10:
        folder = Path(root) / "cifar-10-batches-py"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, meta_file, label_key, names_key = (
            ["test_batch"],
            "batches.meta",
            b"labels",
            b"label_names",
        )
    else:
        folder = Path(root) / "cifar-100-python"
        train_files, test_files, meta_file = ["train"], ["test"], "meta"
        label_key, names_key = b"fine_labels", b"fine_label_names"

    def read(name: str) -> dict:
        path = folder / name
        if not path.is_file():
            raise _missing(f"read_cifar(num_classes={num_classes})", path, how)
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")

    def split(names: list[str]) -> Split:
        batches = [read(n) for n in names]
        x = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
        y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        x = x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        return Split(torch.from_numpy(x), torch.from_numpy(y))

    meta = read(meta_file)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return split(train_files), split(test_files), classes


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise InputError(
            f"read_mnist: {str(path)!r} is not an unsigned-byte IDX file (header {data[:4]!r})."
        )
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_mnist(root: str | os.PathLike[str]) -> tuple[Split, Split, list[str]]:
    """Read MNIST from the original IDX files, optionally gzipped.

    **Arguments:**

    - `root`: the folder holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
      `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` (each possibly with `.gz`).

    **Returns:**

    `(train, test, class_names)`, inputs of shape `(n, 1, 28, 28)` scaled to $[0, 1]$.
    """

    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz"):
            if (Path(root) / name).is_file():
                return Path(root) / name
        raise _missing(
            "read_mnist",
            Path(root) / stem,
            f"put the four MNIST IDX files (optionally .gz) into {str(root)!r}.",
        )

    def split(prefix: str) -> Split:
        images = _read_idx(find(f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(find(f"{prefix}-labels-idx1-ubyte"))
        if images.shape[0] != labels.shape[0]:
            raise InputError(
                f"read_mnist: {prefix} has {images.shape[0]} images but {labels.shape[0]} labels."
            )
        x = images.astype(np.float32)[:, None] / 255.0
        return Split(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)))

    return split("train"), split("t10k"), [str(c) for c in range(10)]


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
      (bundled with scikit-learn), `"cluttered"`, `"spurious"` (canvas tasks built from
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
    if name in ("cluttered", "spurious"):
        from .mask_data import load_mask_dataset  # imports this module

        return load_mask_dataset(name, seed)
    if name == "mnist":
        return _with_val(name, *read_mnist(data_dir), seed)
    if name in ("cifar10", "cifar100"):
        return _with_val(name, *read_cifar(data_dir, int(name[5:])), seed)
    raise InputError(
        f"`load_dataset(name={name!r})`: unknown dataset; expected one of {', '.join(DATASETS)}."
    )

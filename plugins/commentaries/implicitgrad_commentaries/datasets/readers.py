"""Readers for CIFAR-10/100 and MNIST files the user placed in a local folder.

Nothing is downloaded; a missing file raises an error that says where to put it.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from implicitgrad import InputError

from .splits import Split

__all__ = ["read_cifar", "read_mnist"]


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

"""Datasets and readers: digits splits, the binary tasks, and CIFAR/MNIST readers on tiny
files generated here in the official formats; checkpoints and their metadata checks."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from commentary_helpers import make_tiny
from implicitgrad_commentaries import BlendingCommentary, WeightingCommentary
from implicitgrad_commentaries.checkpoint import (
    CheckpointError,
    atomic_write,
    check_compatible,
    load_commentary,
    save_commentary,
)
from implicitgrad_commentaries.data import (
    load_binary_digits,
    load_dataset,
    load_digits_dataset,
    read_cifar,
    read_mnist,
)

from implicitgrad import InputError


def test_digits_splits_are_fixed_disjoint_and_stratified() -> None:
    a, b = load_digits_dataset(), load_digits_dataset()
    assert (len(a.train), len(a.val), len(a.test)) == (1077, 270, 450)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(load_digits_dataset(seed=1).train.y, a.train.y)
    rows = {tuple(x.flatten().tolist()) for x in a.test.x}
    assert sum(tuple(x.flatten().tolist()) in rows for x in a.train.x[:200]) < 5  # duplicates
    assert torch.bincount(a.test.y).min() >= 40
    assert a.spec.input_shape == (1, 8, 8) and float(a.train.x.max()) <= 1.0


@pytest.mark.parametrize("overlap", [False, True])
def test_binary_digits(overlap: bool) -> None:
    data = load_binary_digits(overlap)
    assert data.spec.classes == ("a", "b")
    n = len(data.train) + len(data.val) + len(data.test)
    assert n > (500 if overlap else 340)
    assert set(data.train.y.tolist()) == {0, 1}


def _cifar_files(root: Path, num_classes: int, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = (np.arange(n) % num_classes).tolist()
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            batch = {b"data": data, b"labels": labels, b"batch_label": b"x"}
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
        (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
        names = {b"label_names": [f"class{i}".encode() for i in range(10)]}
        (folder / "batches.meta").write_bytes(pickle.dumps(names))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for name in ("train", "test"):
            batch = {b"data": data, b"fine_labels": labels, b"coarse_labels": labels}
            (folder / name).write_bytes(pickle.dumps(batch))
        meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)]}
        (folder / "meta").write_bytes(pickle.dumps(meta))
    return data


@pytest.mark.parametrize("num_classes", [10, 100])
def test_read_cifar(tmp_path: Path, num_classes: int) -> None:
    raw = _cifar_files(tmp_path, num_classes)
    train, test, classes = read_cifar(tmp_path, num_classes)
    assert len(classes) == num_classes
    assert train.x.shape == ((30 if num_classes == 10 else 6), 3, 32, 32)
    assert test.x.shape == (6, 3, 32, 32) and test.y.tolist() == [i % num_classes for i in range(6)]
    # channel-major layout: the first 1024 bytes are the red plane
    assert torch.allclose(test.x[1, 0].flatten(), torch.from_numpy(raw[1, :1024] / 255.0).float())
    data = load_dataset(f"cifar{num_classes}", tmp_path)
    assert data.spec.input_shape == (3, 32, 32) and len(data.val) >= 1


def _idx(path: Path, array: np.ndarray, zipped: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    blob = header + array.astype(np.uint8).tobytes()
    if zipped:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)


@pytest.mark.parametrize("zipped", [False, True])
def test_read_mnist(tmp_path: Path, zipped: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    for prefix in ("train", "t10k"):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte", images, zipped)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels, zipped)
    train, test, classes = read_mnist(tmp_path)
    assert train.x.shape == (5, 1, 28, 28) and test.y.tolist() == [3, 1, 4, 1, 5]
    assert torch.allclose(train.x[2, 0], torch.from_numpy(images[2] / 255.0).float())
    assert classes == [str(i) for i in range(10)]


def test_missing_files_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"cifar-10-batches-py.*Nothing is downloaded.*--data-dir"):
        read_cifar(tmp_path, 10)
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte.*MNIST IDX files"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("imagenet")


def test_corrupt_idx_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(InputError, match="not an unsigned-byte IDX file"):
        read_mnist(tmp_path)


def test_checkpoint_round_trip_and_metadata(tmp_path: Path) -> None:
    data = make_tiny()
    c = WeightingCommentary(data.spec, hidden=7, use_iteration=False)
    save_commentary(c, tmp_path, extra={"note": "x"})
    meta = json.loads((tmp_path / "commentary.json").read_text())
    assert meta["plugin"] == "weighting" and meta["dataset"]["classes"] == ["c0", "c1", "c2"]
    assert set(meta["versions"]) >= {"implicitgrad", "implicitgrad_commentaries", "torch"}
    loaded = load_commentary(tmp_path)
    assert loaded.config == c.config and not loaded.use_iteration
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_mismatched_checkpoint_gives_a_clear_error(tmp_path: Path) -> None:
    c = BlendingCommentary(make_tiny().spec)
    with pytest.raises(CheckpointError, match=r"dataset 'tiny' \(saved\) vs 'other'"):
        check_compatible(c, make_tiny(name="other").spec, where="train")
    with pytest.raises(CheckpointError, match=r"3 classes .* vs 4 classes"):
        check_compatible(c, make_tiny(classes=4).spec, where="train")
    save_commentary(c, tmp_path)
    meta = json.loads((tmp_path / "commentary.json").read_text())
    meta["dataset"]["classes"] = ["a", "b"]
    (tmp_path / "commentary.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_commentary(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_commentary(tmp_path / "missing")


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]

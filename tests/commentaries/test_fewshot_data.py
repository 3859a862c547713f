"""Episodic few-shot data: the task sampler (class splits, determinism, labels, support and
query sets), digits' class split, the synthetic glyph set, and the MiniImageNet and Omniglot
readers on tiny files written here in the real formats."""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from implicitgrad_commentaries import (
    FEWSHOT_DATASETS,
    ClassSplit,
    EpisodicDataset,
    Task,
    TaskSampler,
    load_fewshot_dataset,
    load_fewshot_digits,
    make_glyphs,
    read_miniimagenet_pickle,
    read_omniglot_folder,
)
from implicitgrad_commentaries.datasets._png import PNGError, decode_png

from implicitgrad import InputError


@pytest.fixture(scope="module")
def glyphs() -> EpisodicDataset:
    return make_glyphs()


@pytest.fixture(scope="module")
def digits() -> EpisodicDataset:
    return load_fewshot_digits()


def indexed(data: EpisodicDataset) -> EpisodicDataset:
    """The same labels and split with `x[i] = i`, so that a task shows which rows it took."""
    x = torch.arange(len(data.y), dtype=torch.float32)[:, None]
    return EpisodicDataset("indexed", x, data.y, data.split, (1,), "row numbers")


def rows(x: torch.Tensor) -> list[int]:
    return x[:, 0].long().tolist()


def assert_one_line_input_error(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


# --------------------------------------------------------------------------------------------
# Class splits.


def test_class_split_parts_must_be_disjoint() -> None:
    with pytest.raises(InputError) as excinfo:
        ClassSplit(train=(0, 1, 2), val=(3,), test=(2, 4))
    assert_one_line_input_error(excinfo, "class 2", "'train'", "'test'")
    with pytest.raises(InputError, match="twice"):
        ClassSplit(train=(0, 0), val=(), test=(1,))
    with pytest.raises(InputError, match="negative"):
        ClassSplit(train=(-1,), val=(), test=(1,))
    split = ClassSplit([0, 1], (2,), range(3, 5))  # sequences are normalized to int tuples
    assert split.test == (3, 4) and isinstance(split.train, tuple)
    assert ClassSplit.by_fraction(range(400), (0.64, 0.16, 0.2)) == ClassSplit(
        tuple(range(256)), tuple(range(256, 320)), tuple(range(320, 400))
    )


def test_builtin_splits_are_disjoint_and_fixed(digits, glyphs) -> None:
    assert digits.classes("train") == (0, 1, 2, 3, 4)
    assert digits.classes("val") == ()
    assert digits.classes("test") == (5, 6, 7, 8, 9)
    for data, n in ((digits, 10), (glyphs, 400)):
        parts = [set(data.classes(p)) for p in ("train", "val", "test")]
        assert sum(map(len, parts)) == len(set().union(*parts)) == n
    assert [len(glyphs.classes(p)) for p in ("train", "val", "test")] == [256, 64, 80]


# Digits has no meta-validation classes (its sampler refuses "val": test_sampler_errors).
@pytest.mark.parametrize(
    "name, part", [("digits", "train"), ("glyphs", "train"), ("glyphs", "val")]
)
def test_meta_training_and_validation_tasks_never_use_other_classes(
    name, part, digits, glyphs
) -> None:
    data = {"digits": digits, "glyphs": glyphs}[name]
    allowed = set(data.classes(part))
    ways = min(5, len(allowed))
    sampler = indexed(data).sampler(part, ways=ways, shots=2, queries=3, seed=0)
    for task in sampler.tasks(300):
        assert set(task.classes) <= allowed
        # Check the rows themselves, not only what the task says about them.
        taken = data.y[rows(task.support_x) + rows(task.query_x)]
        assert set(taken.tolist()) <= allowed


def test_tasks_hold_the_classes_they_name_with_disjoint_support_and_query(digits) -> None:
    data = indexed(digits)
    for task in data.sampler("test", ways=5, shots=3, queries=4, seed=3).tasks(100):
        support, query = rows(task.support_x), rows(task.query_x)
        assert len(set(support)) == 15 and len(set(query)) == 20
        assert not set(support) & set(query)
        assert torch.equal(data.y[support], torch.tensor(task.classes)[task.support_y])
        assert torch.equal(data.y[query], torch.tensor(task.classes)[task.query_y])


# --------------------------------------------------------------------------------------------
# The sampler.


def test_task_shapes_and_labels(digits) -> None:
    task = digits.sampler("train", ways=5, shots=5, queries=15, seed=0).sample()
    assert isinstance(task, Task) and task.ways == 5
    assert task.support_x.shape == (25, 1, 8, 8) and task.query_x.shape == (75, 1, 8, 8)
    assert task.support_x.dtype == task.query_x.dtype == torch.float32
    assert task.support_y.dtype == task.query_y.dtype == torch.int64
    assert torch.equal(task.support_y, torch.arange(5).repeat_interleave(5))
    assert torch.equal(task.query_y, torch.arange(5).repeat_interleave(15))
    assert sorted(task.classes) == [0, 1, 2, 3, 4]


def test_labels_are_permuted_across_tasks(digits) -> None:
    tasks = digits.sampler("train", ways=5, shots=1, queries=1, seed=0).tasks(50)
    # Every task uses the same five training digits; only the label map can change.
    assert len({t.classes for t in tasks}) > 20
    for digit in range(5):
        assert len({t.classes.index(digit) for t in tasks}) == 5


def assert_same_tasks(a: list[Task], b: list[Task]) -> None:
    for s, t in zip(a, b, strict=True):
        assert s.classes == t.classes
        for field in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(s, field), getattr(t, field))


def test_sampler_is_deterministic_per_seed(glyphs) -> None:
    first = glyphs.sampler("train", 5, 1, 5, seed=7).tasks(20)
    assert_same_tasks(first, glyphs.sampler("train", 5, 1, 5, seed=7).tasks(20))
    other = glyphs.sampler("train", 5, 1, 5, seed=8).tasks(20)
    assert sum(s.classes != t.classes for s, t in zip(first, other)) >= 19
    # Task i depends on (seed, i) only: random access, iteration and reset agree.
    sampler = glyphs.sampler("train", 5, 1, 5, seed=7)
    assert_same_tasks([sampler.task(i) for i in (0, 5, 19)], [first[0], first[5], first[19]])
    iterator = iter(sampler)
    assert_same_tasks([next(iterator) for _ in range(3)], first[:3])
    sampler.reset()
    assert_same_tasks(sampler.tasks(2), first[:2])
    assert isinstance(sampler, TaskSampler) and "seed=7" in repr(sampler)


def test_uint8_inputs_become_float_tasks() -> None:
    x = torch.arange(40, dtype=torch.uint8).repeat_interleave(4).reshape(40, 1, 2, 2) * 6
    data = EpisodicDataset(
        "bytes", x, torch.arange(40) % 4, ClassSplit((0, 1), (), (2, 3)), (1, 2, 2), "test data"
    )
    task = data.sampler("test", 2, 2, 2, seed=0).sample()
    assert task.support_x.dtype == torch.float32
    assert 0 <= task.support_x.min() and task.support_x.max() <= 1
    assert torch.allclose(task.support_x * 255, task.support_x.mul(255).round())


def test_sampler_errors(digits) -> None:
    with pytest.raises(InputError) as excinfo:
        digits.sampler("val", ways=5, shots=1, queries=1, seed=0)
    assert_one_line_input_error(excinfo, "'val'", "0 val classes", "another part")
    with pytest.raises(InputError) as excinfo:
        digits.sampler("test", ways=6, shots=1, queries=1, seed=0)
    assert_one_line_input_error(excinfo, "ways <= 5")
    with pytest.raises(InputError) as excinfo:
        digits.sampler("meta-test", ways=5, shots=1, queries=1, seed=0)
    assert_one_line_input_error(excinfo, "'train', 'val', 'test'")
    with pytest.raises(InputError) as excinfo:
        digits.sampler("train", ways=5, shots=100, queries=100, seed=0)
    assert_one_line_input_error(excinfo, "shots + queries = 200")
    for bad in ({"ways": 0}, {"shots": 1.5}, {"queries": -1}, {"seed": -2}):
        kwargs = {"ways": 5, "shots": 1, "queries": 1, "seed": 0, **bad}
        with pytest.raises(InputError):
            digits.sampler("train", **kwargs)
    with pytest.raises(InputError, match="classes with no example"):
        EpisodicDataset(
            "x", torch.zeros(4, 1), torch.arange(4), ClassSplit((0,), (), (9,)), (1,), ""
        )
    with pytest.raises(InputError, match="input_shape"):
        EpisodicDataset(
            "x", torch.zeros(4, 2), torch.arange(4), ClassSplit((0,), (), (1,)), (1,), ""
        )


# --------------------------------------------------------------------------------------------
# The glyph set.


def test_glyphs_are_deterministic_from_their_seed() -> None:
    a, b = make_glyphs(n_classes=30, per_class=5, seed=3), make_glyphs(30, 5, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, make_glyphs(30, 5, seed=4).x)
    assert a.x.shape == (150, 1, 16, 16) and a.x.dtype == torch.float32
    assert 0 <= a.x.min() and a.x.max() <= 1
    assert make_glyphs(10, 2, size=12).input_shape == (1, 12, 12)
    with pytest.raises(InputError, match="n_classes"):
        make_glyphs(n_classes=3)


def test_glyph_classes_are_distinguishable(glyphs) -> None:
    """A sanity check that the set is learnable: nearest class mean on raw pixels, 5-way
    5-shot on meta-test classes, is far above chance (0.2); it is also far below 1, so a
    meta-learner has something to gain."""
    accuracy = []
    for task in glyphs.sampler("test", ways=5, shots=5, queries=5, seed=0).tasks(100):
        means = task.support_x.reshape(5, 5, -1).mean(1)
        predicted = torch.cdist(task.query_x.flatten(1), means).argmin(1)
        accuracy.append((predicted == task.query_y).float().mean().item())
    assert 0.6 < float(np.mean(accuracy)) < 0.98


# --------------------------------------------------------------------------------------------
# The registry.


def test_registry(digits) -> None:
    assert set(FEWSHOT_DATASETS) == {"digits", "glyphs", "miniimagenet", "omniglot"}
    assert torch.equal(load_fewshot_dataset("digits").x, digits.x)
    assert load_fewshot_dataset("glyphs", n_classes=10, per_class=2).x.shape[0] == 20
    with pytest.raises(InputError, match="unknown data set"):
        load_fewshot_dataset("cub")
    with pytest.raises(InputError, match="path="):
        load_fewshot_dataset("omniglot")
    with pytest.raises(InputError, match="needs no files"):
        load_fewshot_dataset("digits", path="data")


# --------------------------------------------------------------------------------------------
# MiniImageNet pickles.


def write_miniimagenet(folder: Path, seed: int = 0) -> dict[str, dict]:
    """Three tiny split files: 3 / 2 / 2 classes of 4 images, plus one image no class lists."""
    rng = np.random.default_rng(seed)
    contents = {}
    names = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}
    for part, classes in names.items():
        images = rng.integers(0, 256, (4 * len(classes) + 1, 84, 84, 3), dtype=np.uint8)
        order = rng.permutation(4 * len(classes))
        class_dict = {name: order[4 * i : 4 * i + 4].tolist() for i, name in enumerate(classes)}
        contents[part] = {"image_data": images, "class_dict": class_dict}
        with open(folder / f"mini-imagenet-cache-{part}.pkl", "wb") as fh:
            pickle.dump(contents[part], fh)
    return contents


def test_miniimagenet_reader(tmp_path) -> None:
    contents = write_miniimagenet(tmp_path)
    data = read_miniimagenet_pickle(tmp_path)
    assert data.x.shape == (28, 3, 84, 84) and data.x.dtype == torch.float32
    assert data.input_shape == (3, 84, 84) and data.name == "miniimagenet"
    assert data.class_names == ("n01", "n02", "n03", "n04", "n05", "n06", "n07")
    assert data.split == ClassSplit((0, 1, 2), (3, 4), (5, 6))
    # One image, back to its file: channels first, scaled to [0, 1].
    c = data.class_names.index("n05")
    original = contents["val"]["image_data"][sorted(contents["val"]["class_dict"]["n05"])]
    mine = data.x[data.y == c]
    assert torch.equal(mine, torch.from_numpy(original).permute(0, 3, 1, 2).float() / 255)
    small = read_miniimagenet_pickle(tmp_path / "mini-imagenet-cache-test.pkl", as_uint8=True)
    assert small.x.dtype == torch.uint8 and torch.equal(small.x.float() / 255, data.x)
    task = small.sampler("test", ways=2, shots=1, queries=3, seed=0).sample()
    assert task.query_x.shape == (6, 3, 84, 84) and task.query_x.dtype == torch.float32


def test_miniimagenet_reader_errors(tmp_path) -> None:
    with pytest.raises(InputError) as excinfo:
        read_miniimagenet_pickle(tmp_path / "nowhere")
    assert_one_line_input_error(excinfo, "nowhere", "not a folder")
    write_miniimagenet(tmp_path)
    (tmp_path / "mini-imagenet-cache-val.pkl").unlink()
    with pytest.raises(InputError) as excinfo:
        read_miniimagenet_pickle(tmp_path)
    assert_one_line_input_error(excinfo, "mini-imagenet-cache-val.pkl", "not found")
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as fh:
        pickle.dump({"images": np.zeros((1, 84, 84, 3), np.uint8), "labels": {}}, fh)
    with pytest.raises(InputError) as excinfo:
        read_miniimagenet_pickle(tmp_path)
    assert_one_line_input_error(excinfo, "'image_data'", "'class_dict'", "['images', 'labels']")
    (tmp_path / "mini-imagenet-cache-val.pkl").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="not a readable pickle"):
        read_miniimagenet_pickle(tmp_path)
    bad = {"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n09": [0, 5]}}
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as fh:
        pickle.dump(bad, fh)
    with pytest.raises(InputError, match="indexes image 5"):
        read_miniimagenet_pickle(tmp_path)
    bad = {"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n01": [0, 1]}}
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as fh:
        pickle.dump(bad, fh)
    with pytest.raises(InputError, match="more than one split"):
        read_miniimagenet_pickle(tmp_path)


# --------------------------------------------------------------------------------------------
# Omniglot folders, and the PNG decoder they need.


def _filter_row(kind: int, row: bytes, prev: bytes, bpp: int) -> bytes:
    """PNG row filters (specification, section 9.2), for the encoder below."""
    out = bytearray(len(row))
    for i, value in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = a
        elif kind == 2:
            pred = b
        elif kind == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out[i] = (value - pred) % 256
    return bytes(out)


def encode_png(image: np.ndarray, depth: int = 8, color: int = 0) -> bytes:
    """A minimal PNG encoder: grey (`color=0`) or RGB (`color=2`) uint8 `image`, depth 1 or
    8; rows use filter types 0-4 in turn, so the decoder meets every one of them."""
    height, width = image.shape[:2]
    channels = 3 if color == 2 else 1
    if depth == 1:
        packed = np.packbits(image.reshape(height, width) > 0, axis=1)
    else:
        packed = image.reshape(height, width * channels).astype(np.uint8)
    bpp = max(1, channels * depth // 8)
    raw, prev = bytearray(), bytes(packed.shape[1])
    for r in range(height):
        row = packed[r].tobytes()
        raw += bytes([r % 5]) + _filter_row(r % 5, row, prev, bpp)
        prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )


def test_png_decoder_round_trips_every_filter() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (11, 7), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(grey))[..., 0], grey / np.float32(255))
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(rgb, color=2)), rgb / np.float32(255))
    bits = rng.integers(0, 2, (9, 13), dtype=np.uint8)  # Omniglot's files are 1-bit grey
    assert np.array_equal(decode_png(encode_png(bits, depth=1))[..., 0], bits)
    with pytest.raises(PNGError, match="signature"):
        decode_png(b"GIF89a")


def test_png_decoder_agrees_with_pillow_where_installed(tmp_path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    for mode, array in (
        ("L", rng.integers(0, 256, (20, 17), dtype=np.uint8)),
        ("RGB", rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)),
        ("1", rng.integers(0, 2, (15, 21), dtype=np.uint8) * 255),
        ("P", rng.integers(0, 4, (5, 6), dtype=np.uint8)),
    ):
        image = image_module.fromarray(array, "L" if mode in ("1", "P") else mode)
        if mode == "1":
            image = image.convert("1")
        if mode == "P":
            image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
            image = image.convert("P") if image.mode != "P" else image
        path = tmp_path / f"{mode}.png"
        image.save(path)
        expected = np.asarray(image_module.open(path).convert("RGB" if mode != "L" else "L"))
        mine = decode_png(path.read_bytes())
        if mode in ("1", "L"):
            mine = np.repeat(mine, 3, -1) if mode == "1" else mine[..., 0]
        assert np.array_equal(np.round(mine * 255).astype(np.uint8), expected), mode


def write_omniglot(root: Path, side: int = 10) -> None:
    """Background: alphabets Alpha (2 characters) and Beta (1); evaluation: Gamma (2);
    3 drawings each, 1-bit black-on-white like the real files."""
    rng = np.random.default_rng(0)
    layout = {
        "images_background": {"Alpha": 2, "Beta": 1},
        "images_evaluation": {"Gamma": 2},
    }
    for set_name, alphabets in layout.items():
        for alphabet, n in alphabets.items():
            for c in range(1, n + 1):
                folder = root / set_name / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for k in range(3):
                    ink = rng.random((side, side)) < 0.3
                    png = encode_png((~ink).astype(np.uint8), depth=1)
                    (folder / f"{c:04d}_{k:02d}.png").write_bytes(png)


def test_omniglot_reader(tmp_path) -> None:
    write_omniglot(tmp_path)
    data = read_omniglot_folder(tmp_path, size=28, val_alphabets=1)
    assert data.x.shape == (15, 1, 28, 28) and data.input_shape == (1, 28, 28)
    assert data.class_names == (
        "images_background/Alpha/character01",
        "images_background/Alpha/character02",
        "images_background/Beta/character01",
        "images_evaluation/Gamma/character01",
        "images_evaluation/Gamma/character02",
    )
    assert data.split == ClassSplit(train=(0, 1), val=(2,), test=(3, 4))
    assert torch.equal(data.y, torch.arange(5).repeat_interleave(3))
    assert 0 <= data.x.min() and data.x.max() <= 1
    # At the files' own size no resampling happens: strokes (black in the file) become 1.
    native = read_omniglot_folder(tmp_path, size=10, val_alphabets=1)
    png = (tmp_path / "images_evaluation/Gamma/character02/0002_00.png").read_bytes()
    ink = 1 - decode_png(png)[..., 0]
    assert torch.equal(native.x[12, 0], torch.from_numpy(ink))
    assert torch.equal(read_omniglot_folder(tmp_path, 10, 1, invert=False).x, 1 - native.x)
    task = data.sampler("test", ways=2, shots=1, queries=2, seed=0).sample()
    assert task.support_x.shape == (2, 1, 28, 28)
    assert read_omniglot_folder(tmp_path, val_alphabets=0).split.val == ()


def test_omniglot_reader_errors(tmp_path) -> None:
    with pytest.raises(InputError) as excinfo:
        read_omniglot_folder(tmp_path / "missing")
    assert_one_line_input_error(excinfo, "missing", "not a folder")
    write_omniglot(tmp_path)
    with pytest.raises(InputError) as excinfo:
        read_omniglot_folder(tmp_path, val_alphabets=2)
    assert_one_line_input_error(excinfo, "val_alphabets=2", "2 background alphabets")
    bad = tmp_path / "images_evaluation/Gamma/character02/0002_00.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    with pytest.raises(InputError) as excinfo:
        read_omniglot_folder(tmp_path, val_alphabets=1)
    assert_one_line_input_error(excinfo, "cannot decode", "0002_00.png")
    empty = tmp_path / "images_evaluation/Gamma/character03"
    empty.mkdir()
    with pytest.raises(InputError, match="has no .png files"):
        read_omniglot_folder(tmp_path, val_alphabets=1)
    for path in sorted((tmp_path / "images_evaluation").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "images_evaluation").rmdir()
    with pytest.raises(InputError) as excinfo:
        read_omniglot_folder(tmp_path, val_alphabets=1)
    assert_one_line_input_error(excinfo, "images_evaluation", "not found")

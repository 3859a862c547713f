"""Readers for the two common few-shot benchmarks, for users who have the files: the
MiniImageNet pickles and the Omniglot image folders. Nothing is downloaded."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from implicitgrad import InputError

from ._png import PNGError, decode_png, to_gray
from .episodes import ClassSplit, EpisodicDataset

__all__ = ["read_miniimagenet_pickle", "read_omniglot_folder", "MINIIMAGENET_FILES"]

MINIIMAGENET_FILES = {
    "train": "mini-imagenet-cache-train.pkl",
    "val": "mini-imagenet-cache-val.pkl",
    "test": "mini-imagenet-cache-test.pkl",
}
"""The file of each class split that `read_miniimagenet_pickle` looks for."""


def _load_pickle(call: str, path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            try:
                content = pickle.load(fh)
            except UnicodeDecodeError:  # written by Python 2
                fh.seek(0)
                content = pickle.load(fh, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as err:
        raise InputError(f"`{call}`: {str(path)!r} is not a readable pickle ({err}).") from None
    if not isinstance(content, dict) or not {"image_data", "class_dict"} <= set(content):
        keys = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise InputError(
            f"`{call}`: {str(path)!r} should hold a dict with keys 'image_data' and "
            f"'class_dict', got {keys}."
        )
    return content


def read_miniimagenet_pickle(
    path: str | os.PathLike[str], as_uint8: bool = False
) -> EpisodicDataset:
    """Read MiniImageNet from the common pickle format: one file per class split.

    The folder holds `mini-imagenet-cache-train.pkl`, `mini-imagenet-cache-val.pkl` and
    `mini-imagenet-cache-test.pkl` (Ravi and Larochelle's 64 / 16 / 20 class split). Each
    is a dict with `"image_data"`, a uint8 array `(n, 84, 84, 3)`, and `"class_dict"`,
    mapping a class name (a WordNet id such as `"n01532829"`) to the indices of its images.

    !!! warning
        Unpickling runs code from the file; read only files from a source you trust. As
        float32 the full set takes about 5 GB of memory; `as_uint8=True` keeps a quarter
        of that and the sampler converts each task.

    **Arguments:**

    - `path`: the folder (or one of the three files in it).
    - `as_uint8`: keep `x` as uint8 in $0..255$ instead of float32 in $[0, 1]$.

    **Returns:**

    An [`EpisodicDataset`][implicitgrad_commentaries.EpisodicDataset] named
    `"miniimagenet"` with inputs `(3, 84, 84)`: class ids number the train classes, then
    the val classes, then the test classes, each in sorted name order; `class_names` holds
    the names.
    """
    call = f"read_miniimagenet_pickle({str(path)!r})"
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(
            f"`{call}`: not a folder; pass the folder that holds "
            f"{', '.join(MINIIMAGENET_FILES.values())}."
        )
    xs, ys, names, parts = [], [], [], {}
    for part, filename in MINIIMAGENET_FILES.items():
        file = folder / filename
        if not file.is_file():
            raise InputError(f"`{call}`: file {str(file)!r} not found; nothing is downloaded.")
        content = _load_pickle(call, file)
        images = np.asarray(content["image_data"])
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(
                f"`{call}`: {filename} 'image_data' should be uint8 (n, height, width, 3), got "
                f"{images.dtype} {images.shape}."
            )
        labels = np.full(len(images), -1, np.int64)
        ids = []
        for name in sorted(content["class_dict"]):
            if name in names:
                raise InputError(f"`{call}`: class {name!r} is in more than one split file.")
            index = np.asarray(content["class_dict"][name], np.int64)
            if index.size and (index.min() < 0 or index.max() >= len(images)):
                raise InputError(
                    f"`{call}`: {filename} class {name!r} indexes image {int(index.max())}, but "
                    f"'image_data' has {len(images)} images."
                )
            labels[index] = len(names)
            ids.append(len(names))
            names.append(name)
        keep = labels >= 0  # images that no class lists are not part of the benchmark
        xs.append(torch.from_numpy(np.ascontiguousarray(images[keep].transpose(0, 3, 1, 2))))
        ys.append(torch.from_numpy(labels[keep]))
        parts[part] = tuple(ids)
    x = torch.cat(xs)
    if not as_uint8:
        x = x.float().div_(255.0)
    return EpisodicDataset(
        name="miniimagenet",
        x=x,
        y=torch.cat(ys),
        split=ClassSplit(**parts),
        input_shape=tuple(x.shape[1:]),
        description=f"MiniImageNet read from {str(folder)!r}: {len(names)} ImageNet classes.",
        class_names=tuple(names),
    )


def _characters(call: str, background: Path) -> list[tuple[str, list[Path]]]:
    """`(alphabet/character, its PNG files)` in sorted order."""
    found = []
    for alphabet in sorted(p for p in background.iterdir() if p.is_dir()):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
            files = sorted(character.glob("*.png"))
            if not files:
                raise InputError(
                    f"`{call}`: character folder {str(character)!r} has no .png files."
                )
            found.append((f"{alphabet.name}/{character.name}", files))
    if not found:
        raise InputError(f"`{call}`: {str(background)!r} has no alphabet/character/*.png folders.")
    return found


def _read_images(call: str, files: list[Path], size: int, invert: bool) -> torch.Tensor:
    images = []
    for file in files:
        try:
            gray = to_gray(decode_png(file.read_bytes()))
        except PNGError as err:
            raise InputError(f"`{call}`: cannot decode {str(file)!r}: {err}.") from None
        images.append(torch.from_numpy(np.ascontiguousarray(gray))[None, None])
    out = torch.empty(len(images), 1, size, size)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        shapes.setdefault(tuple(image.shape), []).append(i)
    for index in shapes.values():
        batch = torch.cat([images[i] for i in index])
        if batch.shape[-2:] != (size, size):
            batch = F.interpolate(batch, (size, size), mode="bilinear", antialias=True)
        out[index] = batch
    out = out.clamp_(0, 1)
    return 1 - out if invert else out


def read_omniglot_folder(
    path: str | os.PathLike[str], size: int = 28, val_alphabets: int = 5, invert: bool = True
) -> EpisodicDataset:
    """Read Omniglot from its image folders; each character is a class.

    The folder holds `images_background/` and `images_evaluation/` (the two archives of
    Lake et al.'s release, unzipped), each laid out as `alphabet/character/*.png`. The
    background alphabets are meta-training data, except the last `val_alphabets` of them
    in sorted order, which are meta-validation; the evaluation alphabets are meta-test.
    With the full release: 30 background alphabets (964 characters), 20 evaluation
    alphabets (659 characters), 20 drawings per character.

    The PNGs are decoded by a small decoder on the standard library's zlib (no imaging
    dependency), converted to grey and resized to `size` × `size` with antialiased
    bilinear interpolation.

    **Arguments:**

    - `path`: the folder holding `images_background/` and `images_evaluation/`.
    - `size`: the side of the resized images (28 is usual).
    - `val_alphabets`: background alphabets held out for meta-validation; fewer than the
      number of background alphabets.
    - `invert`: make strokes bright on a dark ground (the files are black on white).

    **Returns:**

    An [`EpisodicDataset`][implicitgrad_commentaries.EpisodicDataset] named `"omniglot"`
    with inputs `(1, size, size)` in $[0, 1]$; `class_names[c]` is
    `"images_background/Alphabet/character01"` and the like.
    """
    call = f"read_omniglot_folder({str(path)!r})"
    root = Path(path)
    if not root.is_dir():
        raise InputError(
            f"`{call}`: not a folder; pass the folder that holds images_background/ and "
            "images_evaluation/ (unzipped from Omniglot's release)."
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"`read_omniglot_folder(size=...)` must be a positive int, got {size!r}.")
    sets = {}
    for name in ("images_background", "images_evaluation"):
        if not (root / name).is_dir():
            raise InputError(f"`{call}`: folder {str(root / name)!r} not found.")
        sets[name] = _characters(call, root / name)
    alphabets = sorted({c.split("/")[0] for c, _ in sets["images_background"]})
    if isinstance(val_alphabets, bool) or not 0 <= val_alphabets < len(alphabets):
        raise InputError(
            f"`{call}`: val_alphabets={val_alphabets!r} must be in 0..{len(alphabets) - 1}, "
            f"there are {len(alphabets)} background alphabets."
        )
    held_out = set(alphabets[len(alphabets) - val_alphabets :])
    xs, ys, names = [], [], []
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for set_name, characters in sets.items():
        for character, files in characters:
            c = len(names)
            if set_name == "images_evaluation":
                parts["test"].append(c)
            else:
                parts["val" if character.split("/")[0] in held_out else "train"].append(c)
            xs.append(_read_images(call, files, size, invert))
            ys.append(torch.full((len(files),), c, dtype=torch.int64))
            names.append(f"{set_name}/{character}")
    return EpisodicDataset(
        name="omniglot",
        x=torch.cat(xs),
        y=torch.cat(ys),
        split=ClassSplit(*(tuple(parts[p]) for p in ("train", "val", "test"))),
        input_shape=(1, size, size),
        description=f"Omniglot read from {str(root)!r}: {len(names)} characters, {size}x{size}.",
        class_names=tuple(names),
    )

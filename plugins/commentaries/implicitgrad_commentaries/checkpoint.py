"""Save and load learned commentaries with metadata, atomically."""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

import implicitgrad as ig
from implicitgrad import InputError

from ._base import AbstractCommentary, DataSpec

__all__ = [
    "CheckpointError",
    "save_commentary",
    "load_commentary",
    "check_compatible",
    "atomic_write",
    "versions",
]

FORMAT = 1
_META, _WEIGHTS = "commentary.json", "commentary.pt"


class CheckpointError(InputError):
    """A saved commentary is missing, unreadable, or does not match the data it is used with."""


def versions() -> dict[str, str]:
    """Versions of the libraries that produced a result."""
    from . import __version__

    return {
        "implicitgrad": ig.__version__,
        "implicitgrad_commentaries": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`,
    so that readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_commentary(
    commentary: AbstractCommentary, out: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Save a commentary into the folder `out`: `commentary.json` (metadata) and
    `commentary.pt` (its state dict).

    The metadata records the plugin name, the commentary's config, the dataset (name,
    classes, input shape), `extra` (e.g. how it was learned) and the library versions.

    **Arguments:**

    - `commentary`: the commentary to save.
    - `out`: the folder (created if needed).
    - `extra`: additional JSON-serializable metadata.

    **Returns:**

    The folder's path.

    **Example:**

    ```python
    import tempfile
    from implicitgrad_commentaries import BlendingCommentary, DataSpec
    from implicitgrad_commentaries.checkpoint import load_commentary, save_commentary
    c = BlendingCommentary(DataSpec("toy", (3,), ("a", "b")))
    folder = save_commentary(c, tempfile.mkdtemp())
    assert load_commentary(folder).config == c.config
    ```
    """
    out = Path(out)
    buffer = io.BytesIO()
    torch.save(commentary.state_dict(), buffer)
    meta = {
        "format": FORMAT,
        "plugin": commentary.name,
        "config": commentary.config,
        "dataset": commentary.spec.to_json(),
        "versions": versions(),
        "extra": extra or {},
    }
    atomic_write(out / _WEIGHTS, buffer.getvalue())
    atomic_write(out / _META, json.dumps(meta, indent=2, sort_keys=True))
    return out


def read_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a saved commentary, validated."""
    path = Path(folder) / _META
    if not path.is_file():
        raise CheckpointError(
            f"`load_commentary({str(folder)!r})`: no {_META} there. Pass the folder written by "
            "`commentaries learn --out DIR` (or save_commentary)."
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"`load_commentary`: {str(path)!r} is not valid JSON: {err}."
        ) from err
    missing = {"format", "plugin", "config", "dataset"} - set(meta)
    if missing or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"`load_commentary`: {str(path)!r} is not a commentary checkpoint of format {FORMAT} "
            f"(missing {sorted(missing)}, format {meta.get('format')!r})."
        )
    return meta


def load_commentary(folder: str | os.PathLike[str]) -> AbstractCommentary:
    """Load a commentary saved by `save_commentary`.

    The class is found through the plugin registry by the saved plugin name, so a
    commentary from any installed plugin loads.

    **Arguments:**

    - `folder`: the folder that holds `commentary.json` and `commentary.pt`.

    **Returns:**

    The commentary, with its saved parameters.
    """
    meta = read_metadata(folder)
    try:
        cls = ig.plugins.load(meta["plugin"])
    except ig.ImplicitGradError as err:
        raise CheckpointError(
            f"`load_commentary({str(folder)!r})`: it was saved by plugin {meta['plugin']!r}, "
            f"which cannot be loaded: {err}"
        ) from err
    spec = DataSpec.from_json(meta["dataset"])
    commentary = cls(spec, **meta["config"])
    weights = Path(folder) / _WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"`load_commentary`: {str(weights)!r} is missing.")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        commentary.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"`load_commentary({str(folder)!r})`: the saved parameters do not fit "
            f"{cls.__name__}({meta['config']}): {err}"
        ) from err
    return commentary


def check_compatible(commentary: AbstractCommentary, spec: DataSpec, *, where: str) -> None:
    """Raise [`CheckpointError`][implicitgrad_commentaries.checkpoint.CheckpointError] if a
    commentary learned on one dataset is used with data of another.

    Compares the dataset name, the classes and the input shape, and says which differs.
    """
    saved = commentary.spec
    problems = []
    if saved.name != spec.name:
        problems.append(f"dataset {saved.name!r} (saved) vs {spec.name!r} (requested)")
    if saved.classes != spec.classes:
        problems.append(
            f"{saved.num_classes} classes {list(saved.classes)[:10]} (saved) vs "
            f"{spec.num_classes} classes {list(spec.classes)[:10]} (requested)"
        )
    if saved.input_shape != spec.input_shape:
        problems.append(
            f"input shape {saved.input_shape} (saved) vs {spec.input_shape} (requested)"
        )
    if problems:
        raise CheckpointError(
            f"{where}: the commentary does not match the data: " + "; ".join(problems) + ". "
            f"Use the dataset it was learned on (--dataset {saved.name}), or learn a new "
            "commentary on this dataset with `commentaries learn`."
        )

"""Save and load learned commentaries: one folder, replaced as one unit.

A commentary folder holds `commentary.json` (metadata), `commentary.pt` (the state dict)
and whatever the run that learned it wrote beside them (its metrics). A save writes a
complete new folder next to the old one, flushes every file and the folder to disk, and
then swaps the two with one `rename`, so that at any instant the path holds either the
complete old commentary or the complete new one. On Linux the swap is
`renameat2(RENAME_EXCHANGE)`; elsewhere the old folder is moved aside first, and the next
save or load puts back whichever complete folder an interrupted save left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import os
import platform
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import implicitgrad as ig
from implicitgrad import InputError

from ..commentaries.base import AbstractCommentary, DataSpec

__all__ = [
    "CheckpointError",
    "save_commentary",
    "load_commentary",
    "read_metadata",
    "recover",
    "check_compatible",
    "atomic_write",
    "versions",
]

FORMAT = 2
_META, _WEIGHTS = "commentary.json", "commentary.pt"
_SAVING = ".saving-"
_PAUSE_ENV = "IMPLICITGRAD_COMMENTARIES_PAUSE_AT"
"""Test-only hook: `POINT:FILE` makes a save create `FILE` and sleep at save point `POINT`,
so that a fault-injection test can kill the process there."""


class CheckpointError(InputError):
    """A saved commentary is missing, damaged, or does not match what it is used with.

    The message names the folder, says what is wrong and what to do, on one line.
    """


def _one_line(text: object, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def versions() -> dict[str, str]:
    """Versions of the libraries that produced a result."""
    from .. import __version__

    return {
        "implicitgrad": ig.__version__,
        "implicitgrad_commentaries": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _pause(point: str) -> None:
    hook = os.environ.get(_PAUSE_ENV)
    if not hook:
        return
    name, _, flag = hook.partition(":")
    if name == point:
        Path(flag).write_text(point)
        time.sleep(600)


def _fsync_dir(path: Path) -> None:
    if sys.platform == "win32":  # folders cannot be opened for fsync there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    # os.open with mode 0o666 lets the umask decide the permissions (tempfile uses 0o600).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder, `fsync` and
    `os.replace`, so that readers never see a half-written file. The file's permissions
    follow the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.parent / f".{path.name}{_SAVING}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        _write_file(tmp, raw)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); False if the
    platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _leftovers(out: Path) -> list[Path]:
    """Folders an interrupted save of `out` left beside it (their process is gone)."""
    found = []
    prefix = f".{out.name}{_SAVING}"
    if not out.parent.is_dir():
        return found
    for entry in out.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            found.append(entry)
    return found


def completeness(read_meta: Callable[[Path], object], payload: str) -> Callable[[Path], bool]:
    """The test of whether a saved folder is whole: its metadata reads (through
    `read_meta`, which raises `CheckpointError` otherwise) and its `payload` file exists."""

    def is_complete(folder: Path) -> bool:
        try:
            read_meta(folder)
        except CheckpointError:
            return False
        return (folder / payload).is_file()

    return is_complete


def _is_complete(folder: Path) -> bool:
    return completeness(read_metadata, _WEIGHTS)(folder)


def recover(out: str | os.PathLike[str]) -> None:
    """Finish or undo a save of `out` that was interrupted, and remove its leftovers.

    Where the swap is atomic, `out` is always complete and the leftovers are only removed.
    Where it is not (the old folder is moved aside before the new one is moved in), a kill
    between the two renames leaves no `out`; the complete folder beside it is put back.
    """
    recover_folder(out, _is_complete)


def recover_folder(out: str | os.PathLike[str], is_complete: Callable[[Path], bool]) -> None:
    """[`recover`][implicitgrad_commentaries.checkpoint.recover] for any folder written by
    `save_folder`, with `is_complete` telling a complete folder from a partial one."""
    out = Path(out)
    leftovers = _leftovers(out)
    if not out.exists():
        for candidate in sorted(leftovers, key=lambda p: p.stat().st_mtime, reverse=True):
            if is_complete(candidate):
                os.rename(candidate, out)
                leftovers.remove(candidate)
                break
    for entry in leftovers:
        shutil.rmtree(entry, ignore_errors=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_commentary(
    commentary: AbstractCommentary,
    out: str | os.PathLike[str],
    extra: dict[str, Any] | None = None,
    *,
    files: dict[str, str | bytes] | None = None,
) -> Path:
    """Save a commentary as the folder `out`, replacing what was there as one unit.

    The folder gets `commentary.json` (the plugin name, the commentary's config, the
    dataset's name, classes and input shape, `extra`, the library versions and the SHA-256
    of the weights), `commentary.pt` (the state dict, on the CPU) and `files`. A complete
    new folder is written beside `out` and swapped in with one rename: a process killed at
    any point leaves `out` holding either the complete old commentary or the complete new
    one. Everything else in an old `out` (metrics and plots of the earlier run) is
    replaced with it. Files and the folder follow the umask.

    **Arguments:**

    - `commentary`: the commentary to save; its parameters must be finite.
    - `out`: the folder (its parent is created if needed).
    - `extra`: additional JSON-serializable metadata.
    - `files`: more files to write into the folder with it, name → content.

    **Returns:**

    The folder's path.

    **Raises:**

    [`CheckpointError`][implicitgrad_commentaries.checkpoint.CheckpointError] if a
    parameter is not finite (nothing is written then).

    **Example:**

    ```python
    import tempfile
    from implicitgrad_commentaries import BlendingCommentary, DataSpec
    from implicitgrad_commentaries.checkpoint import load_commentary, save_commentary
    c = BlendingCommentary(DataSpec("toy", (3,), ("a", "b")))
    folder = save_commentary(c, tempfile.mkdtemp() + "/blend")
    assert load_commentary(folder).config == c.config
    ```
    """
    out = Path(out)
    state = {k: v.detach().cpu() for k, v in commentary.state_dict().items()}
    bad = _non_finite(state)
    if bad:
        raise CheckpointError(
            f"`save_commentary(out={str(out)!r})`: {bad}; nothing was saved. The learning "
            "run diverged: learn again with a smaller meta learning rate or student "
            "learning rate."
        )
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    meta = {
        "format": FORMAT,
        "plugin": commentary.name,
        "config": commentary.config,
        "dataset": commentary.spec.to_json(),
        "versions": versions(),
        "extra": extra or {},
        "weights_sha256": _sha256(weights),
    }
    contents = [
        (_WEIGHTS, weights, "weights-written"),
        (_META, json.dumps(meta, indent=2, sort_keys=True).encode(), "metadata-written"),
    ]
    contents += [(name, content, None) for name, content in (files or {}).items()]
    return save_folder(out, contents, _is_complete, where="save_commentary", pauses=True)


def save_folder(
    out: str | os.PathLike[str],
    contents: list[tuple[str, str | bytes, str | None]],
    is_complete: Callable[[Path], bool],
    *,
    where: str,
    pauses: bool = False,
) -> Path:
    """Write the files `(name, content, pause point)` as the folder `out`, replacing what
    was there as one unit.

    A complete new folder is written beside `out`, every file and the folder are flushed to
    disk, and it is swapped in with one rename (see the module's description); leftovers
    of an interrupted earlier save are recovered first with `is_complete`. `where` names
    the public call in errors; `pauses` enables the test-only pause points.
    """
    pause = _pause if pauses else _no_pause
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(out, is_complete)
    new = out.parent / f".{out.name}{_SAVING}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(new)  # mode 0o777 less the umask
        pause("folder-created")
        for name, content, point in contents:
            _write_file(new / name, content.encode() if isinstance(content, str) else content)
            if point is not None:
                pause(point)
        _fsync_dir(new)
        pause("synced")
        _swap_in(new, out, where, pause)
        pause("swapped")
    finally:
        if new.exists():
            shutil.rmtree(new, ignore_errors=True)
    return out


def _no_pause(point: str) -> None:
    pass


def _swap_in(
    new: Path,
    out: Path,
    where: str = "save_commentary",
    pause: Callable[[str], None] = _pause,
) -> None:
    """Make `new` the folder `out` with one rename; the old `out` ends up at `new`."""
    if out.exists() and not (out.is_dir() and not out.is_symlink()):
        raise CheckpointError(
            f"`{where}(out={str(out)!r})`: that path exists and is not a folder; "
            "choose another --out."
        )
    if out.is_dir() and any(out.iterdir()):
        if not _exchange(new, out):
            aside = out.parent / f".{out.name}{_SAVING}{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(out, aside)
            pause("old-moved-aside")
            os.rename(new, out)
            os.rename(aside, new)
    else:
        os.replace(new, out)  # onto nothing, or onto an empty folder
    _fsync_dir(out.parent)


def _non_finite(state: dict[str, Any]) -> str | None:
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                count = int((~finite).sum())
                return f"{count} of {value.numel()} values of {key!r} are NaN or infinite"
    return None


def _fail(folder: Path, what: str, todo: str | None = None) -> CheckpointError:
    todo = todo or (
        f"Learn it again with `commentaries learn ... --out {folder} --overwrite`, or pass the "
        "folder of an intact commentary."
    )
    return CheckpointError(f"commentary folder {str(folder)!r}: {_one_line(what)}. {todo}")


def read_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata (`commentary.json`) of a saved commentary, validated.

    **Raises:**

    [`CheckpointError`][implicitgrad_commentaries.checkpoint.CheckpointError] if the folder
    or the file is missing, the file is not a JSON object of the expected format, or a
    field has the wrong type.
    """
    written_by = "Pass the folder written by `commentaries learn --out DIR` (or save_commentary)."
    meta = read_json_object(
        Path(folder), _META, _fail, written_by, "Pass the folder that holds it."
    )
    missing = sorted({"format", "plugin", "config", "dataset"} - set(meta))
    if missing:
        raise _fail(folder, f"{_META} lacks the fields {missing}")
    if meta["format"] not in (1, FORMAT):
        raise _fail(
            folder,
            f"{_META} has format {meta['format']!r}; this version reads formats 1 and {FORMAT}",
        )
    for key, kind in (("plugin", str), ("config", dict), ("dataset", dict)):
        if not isinstance(meta[key], kind):
            raise _fail(
                folder,
                f"the field {key!r} of {_META} is a {type(meta[key]).__name__}, "
                f"not a {kind.__name__}",
            )
    return meta


def load_commentary(
    folder: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> AbstractCommentary:
    """Load a commentary saved by `save_commentary`.

    The class is found through the plugin registry by the saved plugin name, so a
    commentary from any installed plugin loads. The weights are checked against their
    SHA-256 in the metadata, must fit the class built from the saved config and must be
    finite.

    **Arguments:**

    - `folder`: the folder that holds `commentary.json` and `commentary.pt`.
    - `device`: where to put the commentary (default: the CPU); the weights are loaded
      with `map_location`, so a commentary learned on one device loads on any other.

    **Returns:**

    The commentary, with its saved parameters.

    **Raises:**

    [`CheckpointError`][implicitgrad_commentaries.checkpoint.CheckpointError], on one line,
    for every way the folder can be damaged or mismatched.
    """
    from ..commentaries.registry import load_class

    folder = Path(folder)
    if not folder.exists():
        recover(folder)
    meta = read_metadata(folder)
    try:
        cls = load_class(meta["plugin"])
    except InputError as err:
        raise _fail(
            folder,
            f"it was saved by the commentary plugin {meta['plugin']!r}, which cannot be "
            f"loaded: {err}",
            "Install the distribution that provides that plugin, or fix the plugin name in "
            f"{_META}.",
        ) from err
    try:
        spec = DataSpec.from_json(meta["dataset"])
    except Exception as err:  # KeyError, TypeError, ValueError, InputError
        raise _fail(folder, f"the dataset description in {_META} is invalid ({err!r})") from err
    try:
        commentary = cls(spec, **meta["config"])
    except Exception as err:  # anything the plugin's constructor raises on a bad config
        raise _fail(
            folder,
            f"its config {meta['config']} does not fit {cls.__name__}: {type(err).__name__}: {err}",
        ) from err
    state = load_checked(folder, _WEIGHTS, _META, meta.get("weights_sha256"), _fail)
    if not isinstance(state, dict):
        raise _fail(folder, f"{_WEIGHTS} holds a {type(state).__name__}, not a state dict")
    bad = _non_finite(state)
    if bad:
        raise _fail(
            folder,
            f"its weights are not finite ({bad})",
            "The run that learned it diverged: learn it again with a smaller --meta-lr or "
            "--student-lr.",
        )
    mine = commentary.state_dict()
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    if missing or unexpected:
        raise _fail(
            folder,
            f"its weights do not fit {cls.__name__}({_fmt_config(meta['config'])}): "
            f"missing {_few(missing)}, unexpected {_few(unexpected)} (weights of another "
            "plugin or config?)",
        )
    shapes = [
        f"{k} {tuple(state[k].shape)} (saved) vs {tuple(v.shape)}"
        for k, v in mine.items()
        if isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if shapes:
        raise _fail(
            folder,
            f"its weights do not fit {cls.__name__}({_fmt_config(meta['config'])}): {_few(shapes)}",
        )
    commentary.load_state_dict(state)
    if device is not None:
        commentary.to(device)
    return commentary


def read_json_object(
    folder: Path,
    name: str,
    fail: Callable[..., CheckpointError],
    written_by: str,
    is_file: str,
) -> dict[str, Any]:
    """The JSON object in `folder / name`; a missing folder or file, a file in place of the
    folder, or a file that is not a JSON object is raised as `fail(folder, what[, todo])`,
    with the advice `written_by` (where such folders come from) or `is_file`."""
    if not folder.exists():
        raise fail(folder, "does not exist", written_by)
    if not folder.is_dir():
        raise fail(folder, "is a file, not a folder", is_file)
    path = folder / name
    if not path.is_file():
        raise fail(folder, f"no {name} there", written_by)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise fail(folder, f"{name} is not valid JSON ({err})") from err
    except OSError as err:
        raise fail(folder, f"{name} cannot be read ({err})") from err
    if not isinstance(meta, dict):
        raise fail(folder, f"{name} holds a JSON {type(meta).__name__}, not an object")
    return meta


def load_checked(
    folder: Path,
    name: str,
    meta_name: str,
    expected: str | None,
    fail: Callable[[Path, str], CheckpointError],
) -> Any:
    """`torch.load(folder / name, weights_only=True)` on the CPU, after checking the file
    against the SHA-256 `expected` (recorded in `meta_name`; `None`: not checked); every
    problem is raised as `fail(folder, what)`."""
    path = folder / name
    if not path.is_file():
        raise fail(folder, f"{name} is missing")
    raw = path.read_bytes()
    if not raw:
        raise fail(folder, f"{name} is empty")
    if expected is not None and expected != _sha256(raw):
        raise fail(
            folder,
            f"{name} does not match the checksum in {meta_name} (the file is damaged, "
            "truncated, or comes from another save)",
        )
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and torch errors of a damaged file
        raise fail(folder, f"{name} cannot be read ({type(err).__name__}: {err})") from err


def _few(items: list[str], limit: int = 4) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _fmt_config(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


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

"""Save and load few-shot models as one folder, replaced as one unit.

The folder holds `fewshot.json` (the method, the meta-learner's settings, the network's
configuration, the data set, the SHA-256 of the weights, the run's history) and `init.pt`
(the meta-learned initialization $\\theta_0$). With a teacher it is at the same time a
commentary folder (`commentary.json`, `commentary.pt`, written by
[`save_commentary`][implicitgrad_commentaries.save_commentary]), so
[`load_commentary`][implicitgrad_commentaries.load_commentary] loads the trained teacher
from it for reuse like any other commentary. Either way the folder is written beside the
old one and swapped in with one rename (the plugin's checkpoint machinery).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

import implicitgrad as ig

from ..learning import checkpoint as ckpt
from ..learning.checkpoint import CheckpointError, load_commentary, save_commentary, versions
from .model import METHODS, FewShotModel, _learner
from .network import FewShotNet

__all__ = ["save_fewshot", "load_fewshot", "FEWSHOT_META", "FEWSHOT_INIT"]

FORMAT = 1
FEWSHOT_META, FEWSHOT_INIT = "fewshot.json", "init.pt"


def _encode(value: Any) -> Any:
    if isinstance(value, ig.AbstractSolver):
        return {"solver": type(value).__name__, "fields": dataclasses.asdict(value)}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"solver", "fields"}:
        cls = getattr(ig, str(value["solver"]), None)
        if not (isinstance(cls, type) and issubclass(cls, ig.AbstractSolver)):
            raise ValueError(f"unknown solver {value['solver']!r}")
        return cls(**value["fields"])
    return value


def _settings(model: FewShotModel) -> dict[str, Any]:
    learner: Any = model.learner
    return {f.name: _encode(getattr(learner, f.name)) for f in dataclasses.fields(learner)}


def save_fewshot(
    model: FewShotModel, out: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Save a few-shot model as the folder `out`, replacing what was there as one unit.

    **Arguments:**

    - `model`: the [`FewShotModel`][implicitgrad_commentaries.FewShotModel].
    - `out`: the folder.
    - `extra`: JSON-able metadata (the command line stores its settings and the history).

    **Returns:**

    The folder's path.

    **Raises:**

    [`CheckpointError`][implicitgrad_commentaries.checkpoint.CheckpointError] when a weight
    is NaN or infinite (nothing is written then).

    **Example:**

    ```python
    import tempfile
    from implicitgrad_commentaries.fewshot import load_fewshot, make_model, save_fewshot
    model = make_model("maml-commentary", (1, 8, 8), 5, width=4)
    folder = save_fewshot(model, tempfile.mkdtemp() + "/run")
    assert load_fewshot(folder).method == "maml-commentary"
    ```
    """
    out = Path(out)
    state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
    bad = ckpt._non_finite(state)
    if bad:
        raise CheckpointError(
            f"`save_fewshot(out={str(out)!r})`: {bad}; nothing was saved. Meta-training "
            "diverged: lower --meta-lr or --inner-lr."
        )
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    meta = {
        "format": FORMAT,
        "method": model.method,
        "dataset": model.dataset,
        "net": model.net.config,
        "learner": _settings(model),
        "teacher": model.teacher is not None,
        "learn_teacher": model.learn_teacher,
        "init_sha256": hashlib.sha256(weights).hexdigest(),
        "versions": versions(),
        "extra": extra or {},
    }
    files: dict[str, str | bytes] = {
        FEWSHOT_INIT: weights,
        FEWSHOT_META: json.dumps(meta, indent=2, sort_keys=True),
    }
    if model.teacher is not None:
        return save_commentary(model.teacher, out, {"fewshot": meta}, files=files)
    return _save_folder(out, files)


def _save_folder(out: Path, files: dict[str, str | bytes]) -> Path:
    """`save_commentary`'s atomic folder swap, for a model without a teacher."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    new = out.parent / f".{out.name}{ckpt._SAVING}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(new)
        for name, content in files.items():
            ckpt._write_file(new / name, content.encode() if isinstance(content, str) else content)
        ckpt._fsync_dir(new)
        ckpt._swap_in(new, out)
    finally:
        if new.exists():
            shutil.rmtree(new, ignore_errors=True)
    return out


def _recover(folder: Path) -> None:
    """`recover` for few-shot folders: off Linux a killed swap can leave only the complete
    new folder beside `folder`; put it back before the leftovers are removed."""
    if not folder.exists():
        leftovers = sorted(ckpt._leftovers(folder), key=lambda p: p.stat().st_mtime, reverse=True)
        for candidate in leftovers:
            if (candidate / FEWSHOT_META).is_file() and (candidate / FEWSHOT_INIT).is_file():
                os.rename(candidate, folder)
                break
    ckpt.recover(folder)


def _fail(folder: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"few-shot folder {str(folder)!r}: {ckpt._one_line(what)}. Learn it again with "
        f"`commentaries fewshot-learn ... --out {folder} --overwrite`, or pass the folder of an "
        "intact run."
    )


def load_fewshot(
    folder: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> FewShotModel:
    """Load a few-shot model saved by
    [`save_fewshot`][implicitgrad_commentaries.save_fewshot].

    The weights are checked against their SHA-256, must fit the network built from the
    saved configuration and must be finite; a teacher is loaded with `load_commentary`
    (with all its checks).

    **Raises:**

    [`CheckpointError`][implicitgrad_commentaries.checkpoint.CheckpointError], on one line,
    for every way the folder can be missing, damaged or mismatched.
    """
    folder = Path(folder)
    if not folder.exists():
        _recover(folder)
    if not folder.is_dir():
        raise _fail(folder, "does not exist or is not a folder")
    path = folder / FEWSHOT_META
    if not path.is_file():
        raise _fail(folder, f"no {FEWSHOT_META} there (not a few-shot run)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(folder, f"{FEWSHOT_META} cannot be read ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(folder, f"{FEWSHOT_META} is not a format-{FORMAT} few-shot description")
    missing = sorted({"method", "dataset", "net", "learner", "teacher", "init_sha256"} - set(meta))
    if missing:
        raise _fail(folder, f"{FEWSHOT_META} lacks the fields {missing}")
    if meta["method"] not in METHODS:
        raise _fail(folder, f"unknown method {meta['method']!r}")
    try:
        net = FewShotNet(**meta["net"])
        kind = METHODS[meta["method"]][0]
        learner = _learner(kind, {k: _decode(v) for k, v in meta["learner"].items()})
    except Exception as err:  # TypeError, ValueError, InputError of a tampered description
        raise _fail(folder, f"its settings are invalid ({type(err).__name__}: {err})") from err
    init = folder / FEWSHOT_INIT
    raw = init.read_bytes() if init.is_file() else b""
    if not raw:
        raise _fail(folder, f"{FEWSHOT_INIT} is missing or empty")
    if hashlib.sha256(raw).hexdigest() != meta["init_sha256"]:
        raise _fail(folder, f"{FEWSHOT_INIT} does not match the checksum in {FEWSHOT_META}")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as err:
        raise _fail(folder, f"{FEWSHOT_INIT} does not fit the network ({err})") from err
    bad = ckpt._non_finite(state)
    if bad:
        raise _fail(folder, f"its weights are not finite ({bad})")
    teacher = None
    if meta["teacher"]:
        teacher = load_commentary(folder)
        if not meta.get("learn_teacher", False):
            teacher.requires_grad_(False)
    model = FewShotModel(
        meta["method"], learner, net, teacher, bool(meta.get("learn_teacher")), meta["dataset"]
    )
    return model if device is None else model.to(device)

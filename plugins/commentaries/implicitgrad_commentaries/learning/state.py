"""The state of a `learn` run between meta-steps, saved as one folder, to resume it exactly.

A state folder holds `state.pt` (everything the run needs, as plain containers of tensors,
numbers and strings that `torch.load(..., weights_only=True)` reads) and `state.json` (the
format, the step, what the run was, the caller's settings, the library versions and the
SHA-256 of `state.pt`). It is written and replaced as one unit, like a commentary folder
(see [`save_commentary`][implicitgrad_commentaries.save_commentary]).
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from implicitgrad import InputError

from .checkpoint import (
    CheckpointError,
    _one_line,
    _sha256,
    completeness,
    load_checked,
    read_json_object,
    recover_folder,
    save_folder,
    versions,
)

if TYPE_CHECKING:  # the learner builds states; this module only stores them
    from .learner import LearnHistory

__all__ = ["LearnState"]

FORMAT = 1
_META, _STATE = "state.json", "state.pt"
_FIELDS = (
    "step",
    "history",
    "commentary",
    "meta_optimizer",
    "batches",
    "rng",
    "student",
    "run",
    "settings",
)
_HISTORY = (
    "method",
    "val_loss",
    "hypergrad_norm",
    "skipped",
    "first_error",
    "not_converged",
    "first_warning",
    "diverged_at",
    "seconds",
)


@dataclass(eq=False)  # eq=False: fields hold tensors, which do not compare to bool
class LearnState:
    """Everything needed to continue a [`learn`][implicitgrad_commentaries.learn] run
    exactly where it stopped.

    `learn(..., checkpoint=fn, checkpoint_every=k)` calls `fn(state)` after every $k$-th
    meta-step; `learn(..., resume=state)` continues from it. The resumed run gives the same
    commentary parameters and the same history (bitwise on the same machine and device;
    `seconds` aside) as a run that was never interrupted, because the state holds every
    quantity the remaining meta-steps read: the commentary's parameters and the Adam state
    of the meta-optimizer, the generator that draws the batches, torch's global random
    number generators, the student the next meta-step continues from (the seed it was
    initialized with, its parameters and its optimizer state) and the history so far.

    `save(folder)` writes it as one folder and `LearnState.load(folder)` reads it back.
    The tensors are on the CPU; `learn` moves them to its device.

    **Fields:**

    - `step`: the meta-steps completed.
    - `history`: the [`LearnHistory`][implicitgrad_commentaries.LearnHistory] of those
      steps.
    - `commentary`: the commentary's `state_dict()`.
    - `meta_optimizer`: the `state_dict()` of the Adam optimizer on $\\phi$.
    - `batches`: the state of the generator that draws the batches.
    - `rng`: torch's global generator states, `{"cpu": ..., "cuda": [...]}`.
    - `student`: `{"seed", "theta", "optimizer"}`: the student's initialization seed, its
      parameters and its optimizer state (an `ig.SGDState`, `ig.AdamState` or `None`).
    - `run`: what the run is (commentary, config, dataset, schedule, student, batch size,
      seed, meta learning rate); `learn(resume=...)` refuses a state of another run.
    - `settings`: free-form JSON-serializable values given by the caller through
      `learn(settings=...)` (a command line stores its flags there).

    !!! warning

        A preconditioner that carries state from one solve to the next (one reused across
        solves with `refresh_every > 1`, or a
        [`RecycledPreconditioner`][implicitgrad.RecycledPreconditioner], which keeps the
        products of earlier solves) keeps it in the solver object, which is not part of
        the state: the resumed run starts it afresh, so its hypergradients differ slightly
        from an uninterrupted run's.

    **Example:**

    ```python
    import tempfile
    from implicitgrad_commentaries import BlendingCommentary, DataSpec
    from implicitgrad_commentaries.learning import LearnState, learn
    from implicitgrad_commentaries.data import Dataset, Split
    import torch

    g = torch.Generator().manual_seed(0)
    split = lambda n: Split(torch.rand(n, 3, generator=g), torch.arange(n) % 2)
    data = Dataset(DataSpec("toy", (3,), ("a", "b")), split(16), split(8), split(8))
    states = []
    full = learn(BlendingCommentary(data.spec), data, "ift", student="linear", steps=4,
                 batch_size=8, checkpoint=states.append, checkpoint_every=2)
    folder = tempfile.mkdtemp() + "/run.resume"
    states[0].save(folder)
    state = LearnState.load(folder)
    history = learn(BlendingCommentary(data.spec), data, "ift", student="linear",
                    steps=4, batch_size=8, resume=state)
    assert state.step == 2 and history.val_loss == full.val_loss
    ```
    """

    step: int
    history: LearnHistory
    commentary: dict[str, torch.Tensor]
    meta_optimizer: dict[str, Any]
    batches: torch.Tensor
    rng: dict[str, Any]
    student: dict[str, Any] | None
    run: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the state as the folder `folder`, replacing what was there as one unit.

        A process killed at any point leaves `folder` holding either the complete old state
        or the complete new one.

        **Returns:**

        The folder's path.
        """
        payload = {name: getattr(self, name) for name in _FIELDS}
        payload["history"] = _history_to_dict(self.history)
        payload["student"] = _encode(self.student)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        raw = buffer.getvalue()
        meta = {
            "format": FORMAT,
            "step": self.step,
            "run": self.run,
            "settings": self.settings,
            "versions": versions(),
            "state_sha256": _sha256(raw),
        }
        contents: list[tuple[str, str | bytes, str | None]] = [
            (_STATE, raw, None),
            (_META, json.dumps(meta, indent=2, sort_keys=True), None),
        ]
        return save_folder(folder, contents, _is_complete, where="LearnState.save")

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], device: str | torch.device | None = None
    ) -> LearnState:
        """Read a state written by [`save`][implicitgrad_commentaries.LearnState.save].

        **Arguments:**

        - `folder`: the state folder.
        - `device`: where to put the tensors (default: the CPU; `learn` moves them to its
          own device anyway).

        **Returns:**

        The `LearnState`.

        **Raises:**

        [`CheckpointError`][implicitgrad_commentaries.checkpoint.CheckpointError], on one
        line naming the folder, when it is missing, damaged (truncated, a flipped bit, a
        file of another kind) or of an unknown format.
        """
        folder = Path(folder)
        if not folder.exists():
            recover_folder(folder, _is_complete)
        meta = _read_meta(folder)
        payload = load_checked(folder, _STATE, _META, meta["state_sha256"], _fail)
        try:
            state = _from_payload(payload)
        except (KeyError, TypeError, ValueError, ImportError, AttributeError) as err:
            raise _fail(folder, f"{_STATE} does not hold a learn state ({err!r})") from err
        for key in ("step", "run", "settings"):
            if meta[key] != getattr(state, key):
                raise _fail(folder, f"the {key!r} of {_META} and {_STATE} differ")
        return state.to(device) if device is not None else state

    def to(self, device: str | torch.device) -> LearnState:
        """The same state with the commentary, the meta-optimizer and the student's
        tensors on `device` (the generator states stay on the CPU, where torch keeps
        them)."""
        return LearnState(
            step=self.step,
            history=self.history,
            commentary=to_device(self.commentary, device),
            meta_optimizer=to_device(self.meta_optimizer, device),
            batches=self.batches,
            rng=self.rng,
            student=to_device(self.student, device),
            run=self.run,
            settings=self.settings,
        )


def _history_to_dict(history: LearnHistory) -> dict[str, Any]:
    return {name: copy.copy(getattr(history, name)) for name in _HISTORY}


def _history_from_dict(data: dict[str, Any]) -> LearnHistory:
    from .learner import LearnHistory

    if not isinstance(data, dict) or sorted(data) != sorted(_HISTORY):
        raise ValueError("the history has the wrong fields")
    history = LearnHistory(**data)
    if not (len(history.val_loss) == len(history.hypergrad_norm)):
        raise ValueError("the history's lists differ in length")
    return history


def _from_payload(payload: Any) -> LearnState:
    if not isinstance(payload, dict) or sorted(payload) != sorted(_FIELDS):
        got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"expected the fields {list(_FIELDS)}, found {got}")
    state = LearnState(**payload)
    state.history = _history_from_dict(payload["history"])
    state.student = _decode(payload["student"])
    checks = (
        ("step", int),
        ("commentary", dict),
        ("meta_optimizer", dict),
        ("batches", torch.Tensor),
        ("rng", dict),
        ("run", dict),
        ("settings", dict),
    )
    for name, kind in checks:
        if not isinstance(getattr(state, name), kind):
            raise TypeError(f"its {name!r} is a {type(getattr(state, name)).__name__}")
    for name, value in (("batches", state.batches), ("rng['cpu']", state.rng.get("cpu"))):
        if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8):
            raise TypeError(f"its {name} is not a generator state")
    if len(state.history.val_loss) != state.step:
        raise ValueError(f"its history has {len(state.history.val_loss)} steps, not {state.step}")
    return state


# The student's optimizer state is a tree of named tuples (`ig.SGDState`, `ig.AdamState`),
# tuples, lists and dicts; weights_only loading reads none of the named tuples, so they are
# stored as tagged dicts and rebuilt by their import path.
_TAG = "__tree__"


def _encode(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor) or tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        kind = type(tree)
        return {
            _TAG: f"namedtuple:{kind.__module__}:{kind.__qualname__}",
            "items": [_encode(v) for v in tree],
        }
    if isinstance(tree, (tuple, list)):
        return {_TAG: type(tree).__name__, "items": [_encode(v) for v in tree]}
    if isinstance(tree, dict):
        return {_TAG: "dict", "keys": list(tree), "items": [_encode(v) for v in tree.values()]}
    raise InputError(
        f"`LearnState.save`: the student's optimizer state holds a {type(tree).__name__}, "
        "which cannot be saved; an optimizer state must be a tree of tensors, numbers, "
        "strings, tuples, lists, dicts and named tuples."
    )


def _decode(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    tag, items = tree[_TAG], [_decode(v) for v in tree["items"]]
    if tag == "tuple":
        return tuple(items)
    if tag == "list":
        return items
    if tag == "dict":
        return dict(zip(tree["keys"], items, strict=True))
    if tag.startswith("namedtuple:"):
        _, module, qualname = tag.split(":")
        # Only types already loaded: a state file never makes this process import a module.
        kind: Any = sys.modules.get(module)
        if kind is None:
            raise TypeError(
                f"the named tuple {module}.{qualname} is not loaded; import the module of "
                "the optimizer that made this state first"
            )
        for part in qualname.split("."):
            kind = getattr(kind, part)
        if not (isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields")):
            raise TypeError(f"{module}.{qualname} is not a named tuple")
        return kind(*items)
    raise ValueError(f"unknown tree tag {tag!r}")


def _fail(folder: Path, what: str, todo: str | None = None) -> CheckpointError:
    todo = todo or (
        "The run cannot be resumed from it: start it again without resuming, or pass an "
        "intact state folder."
    )
    return CheckpointError(f"learn state folder {str(folder)!r}: {_one_line(what)}. {todo}")


def _read_meta(folder: Path) -> dict[str, Any]:
    written_by = "Pass a folder written by `LearnState.save`."
    meta = read_json_object(folder, _META, _fail, written_by, written_by)
    missing = sorted({"format", "step", "run", "settings", "state_sha256"} - set(meta))
    if missing:
        raise _fail(folder, f"{_META} lacks the fields {missing}")
    if meta["format"] != FORMAT:
        raise _fail(
            folder, f"{_META} has format {meta['format']!r}; this version reads format {FORMAT}"
        )
    return meta


def _is_complete(folder: Path) -> bool:
    return completeness(_read_meta, _STATE)(folder)


def to_device(tree: Any, device: torch.device | str | None) -> Any:
    """`tree` with its tensors on `device` (the tensors already there are kept)."""
    return torch.utils._pytree.tree_map(
        lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tree
    )

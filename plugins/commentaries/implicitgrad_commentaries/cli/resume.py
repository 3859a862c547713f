"""`commentaries learn --resume`: the saved state of an interrupted run, checked against the
flags of the run that continues it.

While it learns, `learn` saves a [`LearnState`][implicitgrad_commentaries.learning.LearnState]
every `--checkpoint-every` meta-steps to the folder `OUT.resume` beside `--out`, and
removes it once the commentary is saved. `--resume` continues from that state; the flags
that decide what the run computes must be those of the run that saved it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..learning.checkpoint import CheckpointError
from ..learning.state import LearnState
from .checks import UsageError

__all__ = ["RUN_INDEPENDENT", "run_flags", "load_state", "check_state", "restored_rows"]

# Flags that do not change what a run computes: a resumed run may give them other values.
# (--out names the state folder, so it is the same by construction.)
RUN_INDEPENDENT = frozenset(
    {
        "steps",
        "quiet",
        "debug",
        "device",
        "resume",
        "overwrite",
        "checkpoint_every",
        "log_dir",
        "config",
        "progress_every",
        "out",
    }
)


def run_flags(args: argparse.Namespace, resolved: dict[str, Any]) -> dict[str, Any]:
    """The flags that decide what `learn` computes, with the values the run resolved
    (the plugin's default method, say), as JSON values."""
    flags = {k: resolved.get(k, v) for k, v in vars(args).items() if k not in RUN_INDEPENDENT}
    return json.loads(json.dumps(flags))


def _flag(dest: str) -> str:
    return dest if dest == "name" else "--" + dest.replace("_", "-")


def _shown(dest: str, value: Any) -> str:
    if dest == "set":
        return " ".join(f"{k}={json.dumps(v)}" for k, v in (value or {}).items()) or "(none)"
    return json.dumps(value)


def load_state(folder: Path) -> LearnState:
    """The state in `folder`; `UsageError` (one line) when it is missing or damaged."""
    try:
        state = LearnState.load(folder)
    except CheckpointError as err:
        if not folder.exists():
            raise UsageError(
                f"--resume: there is no saved state in {str(folder)!r} (a run saves one every "
                "--checkpoint-every meta-steps and removes it when it finishes); start the "
                "run without --resume"
            ) from None
        raise UsageError(f"--resume: {err}") from None
    return state


def check_state(state: LearnState, folder: Path, flags: dict[str, Any], steps: int) -> None:
    """Refuse (`UsageError`, one line) a state saved by a run with other `flags`, or one
    that has already done `steps` meta-steps."""
    saved = state.settings.get("flags")
    if state.settings.get("command") != "commentaries learn" or not isinstance(saved, dict):
        raise UsageError(
            f"--resume: the state in {str(folder)!r} was not saved by `commentaries learn`; "
            "start the run without --resume"
        )
    differ = [
        f"{_flag(k)} {_shown(k, flags.get(k))} (saved: {_shown(k, saved.get(k))})"
        for k in [*flags, *(k for k in saved if k not in flags)]
        if flags.get(k) != saved.get(k)
    ]
    if differ:
        raise UsageError(
            f"--resume: the run saved in {str(folder)!r} was started with other settings: "
            f"{'; '.join(differ)}. Pass the flags of that run, or start again without "
            "--resume and with --overwrite"
        )
    if state.step >= steps:
        raise UsageError(
            f"--resume --steps {steps}: the saved run has already completed {state.step} "
            f"meta-steps; pass --steps greater than {state.step} (the total number)"
        )


def restored_rows(state: LearnState, earlier: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The CSV rows of the meta-steps a resumed run starts with: the values from the
    state's history, the elapsed seconds from the rows the interrupted run wrote (blank
    where there are none)."""
    seconds = {row.get("step"): row.get("seconds", "") for row in earlier}
    history = state.history
    rows = []
    for k, (val_loss, norm) in enumerate(zip(history.val_loss, history.hypergrad_norm), 1):
        rows.append(
            {
                "step": k,
                "val_loss": val_loss,
                "hypergrad_norm": norm,
                "skipped": int(math.isnan(norm)),
                "seconds": seconds.get(str(k), ""),
            }
        )
    return rows

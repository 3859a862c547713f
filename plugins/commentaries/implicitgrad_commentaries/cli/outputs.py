"""What `learn` and `train` write besides their results: where their logs go, and the
resolved configuration of a run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checks import UsageError, writable_dir
from .config import dump_config
from .logs import warn

__all__ = ["Work", "log_folder", "resolved_toml", "sibling"]

#: What a command's `prepare_*` function returns: the work, once everything was checked.
Work = Callable[[], None]


def sibling(path: Path, suffix: str) -> Path:
    """`path` with `suffix` added to its name (`runs/blend` → `runs/blend.log`)."""
    path = path if path.name else path.resolve()
    return path.with_name(path.name + suffix)


def log_folder(args: argparse.Namespace, default: Path, out: Path) -> Path:
    log_dir = Path(args.log_dir) if args.log_dir is not None else default
    if log_dir.exists() and not log_dir.is_dir():
        raise UsageError(f"--log-dir {str(log_dir)!r} is an existing file; pass a folder")
    if args.command == "learn":
        # Both folders are replaced as a whole (the commentary on save, the state at every
        # checkpoint) and removed or swapped with everything in them.
        for flag, folder in (("--out", out), ("its state folder", sibling(out, ".resume"))):
            if log_dir.resolve().is_relative_to(folder.resolve()):
                raise UsageError(
                    f"--log-dir {str(log_dir)!r} is inside {flag} {str(folder)!r}, which is "
                    "replaced as a whole when it is saved; choose a folder outside it"
                )
    writable_dir(log_dir, "--log-dir")
    return log_dir


def resolved_toml(args: argparse.Namespace, resolved: dict[str, Any]) -> str:
    """The resolved settings of this run as TOML, warning about what TOML cannot hold."""
    from .main import build_parser

    sub = build_parser().subcommands[args.command]  # type: ignore[attr-defined]
    text, left_out = dump_config(args.command, sub, args, resolved)
    for name in left_out:
        warn(
            f"commentaries {args.command}",
            f"--set {name}: a value that is or holds null cannot be written to the saved "
            "configuration (TOML has no null); it is left out there",
        )
    return text

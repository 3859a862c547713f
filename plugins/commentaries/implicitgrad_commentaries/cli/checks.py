"""Checks the command line runs on every argument and path before any work starts."""

from __future__ import annotations

import argparse
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "UsageError",
    "WorkError",
    "integer",
    "number",
    "writable_dir",
    "writable_folder",
    "writable_file",
]


class UsageError(Exception):
    """Bad arguments or input files: one line on stderr, exit status 2."""


class WorkError(Exception):
    """The work started and failed: one line on stderr, exit status 1."""


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in `[low, high]`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
        return value

    return parse


def number(
    low: float, *, inclusive: bool = False, high: float = math.inf
) -> Callable[[str], float]:
    """An argparse type: a finite number above `low` (or equal to it with `inclusive`) and
    below `high`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        above = value >= low if inclusive else value > low
        if not above or not value < high:
            where = f"{'>=' if inclusive else '>'} {low:g}"
            if math.isfinite(high):
                where += f" and < {high:g}"
            raise argparse.ArgumentTypeError(f"expected a number {where}, got {text!r}")
        return value

    return parse


def writable_dir(folder: Path, flag: str) -> None:
    """Raise UsageError unless `folder` exists as a writable folder or can be created."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"{flag} {str(folder)!r}: {str(existing)!r} is a file, so no folder can be made "
            "there; choose another path"
        )
    probe = existing / f".commentaries-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:  # os.access does not see read-only mounts, immutable folders, or root's limits
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise UsageError(
            f"{flag} {str(folder)!r}: cannot write into {str(existing)!r} "
            f"({err.strerror or err}); choose a folder you can write to"
        ) from None


def writable_folder(path: str, flag: str, *, overwrite: bool, marker: str | None = None) -> Path:
    """Check that `path` can become an output folder.

    An existing folder must be empty, or hold `marker` (the file a previous run of this
    command wrote) and `overwrite` must be set: the run then replaces it, earlier outputs
    included.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {path!r} is an existing file; pass a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if marker is not None and not (folder / marker).exists():
            raise UsageError(
                f"{flag} {path!r} is a folder that holds other files; choose a new or empty folder"
            )
        if not overwrite:
            raise UsageError(
                f"{flag} {path!r} already holds a commentary; pass --overwrite to replace it "
                "(its earlier outputs are removed with it), or choose another folder"
            )
    writable_dir(folder.parent if folder.is_dir() else folder, flag)
    if folder.is_dir():
        writable_dir(folder, flag)
    return folder


def writable_file(path: str, flag: str) -> Path:
    """Check that the file `path` can be written (its folder created if needed)."""
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"{flag} {path!r} is a folder; pass a file name")
    writable_dir(file.parent, flag)
    return file

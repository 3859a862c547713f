"""Checks the command line runs on every argument and path before any work starts."""

from __future__ import annotations

import argparse
import math
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "UsageError",
    "WorkError",
    "integer",
    "number",
    "seed_list",
    "toml_kind",
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

    parse.from_toml = _scalar(parse, int, "an integer")  # type: ignore[attr-defined]
    return parse


def toml_kind(value: Any) -> str:
    """How a value read from a TOML file is named in an error message."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    kinds |= {list: "an array", dict: "a table"}
    return next((name for t, name in kinds.items() if isinstance(value, t)), type(value).__name__)


def _scalar(
    parse: Callable[[str], Any], kind: type | tuple[type, ...], expected: str
) -> Callable[[Any], Any]:
    """The TOML form of an argparse type: a value of TOML type `kind`, then the same
    checks as on the command line."""

    def from_toml(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {toml_kind(value)}")
        return parse(str(value))

    return from_toml


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

    parse.from_toml = _scalar(parse, (int, float), "a number")  # type: ignore[attr-defined]
    return parse


_SEED_ITEM = re.compile(r"(\d+)(?:-(\d+))?")


def seed_list(
    max_seed: int = 2**31 - 1, max_count: int = 10_000
) -> Callable[[str], tuple[int, ...]]:
    """An argparse type for seeds: a count (`3` is seeds 0, 1, 2), a list (`0,4,7`), an
    inclusive range (`5-9`) or a mix of both (`0-2,7`). Duplicates and negative seeds are
    refused. In a TOML file the value may also be an array of seeds."""
    usage = "a count (3), a list (0,4,7) or a range (5-9)"

    def checked(seeds: list[int]) -> tuple[int, ...]:
        if not seeds:
            raise argparse.ArgumentTypeError(f"expected {usage}, got no seeds")
        if len(seeds) > max_count:
            raise argparse.ArgumentTypeError(
                f"expected at most {max_count} seeds, got {len(seeds)}"
            )
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise argparse.ArgumentTypeError(
                f"seed {', '.join(map(str, repeated))} is given twice; each seed once"
            )
        if max(seeds) > max_seed:
            raise argparse.ArgumentTypeError(f"seeds must be <= {max_seed}, got {max(seeds)}")
        return tuple(seeds)

    def parse(text: str) -> tuple[int, ...]:
        text = text.strip()
        if text.isdigit():
            count = int(text)
            if count < 1:
                raise argparse.ArgumentTypeError(
                    f"expected at least 1 seed, got the count {count} (for seed 0 alone: 0-0)"
                )
            if count > max_count:
                raise argparse.ArgumentTypeError(
                    f"expected at most {max_count} seeds, got the count {count}"
                )
            return tuple(range(count))
        seeds: list[int] = []
        for item in text.split(","):
            m = _SEED_ITEM.fullmatch(item.strip())
            if m is None:
                if re.fullmatch(r"\s*-\d+.*", item):
                    raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
                raise argparse.ArgumentTypeError(f"expected {usage}, got {text!r}")
            low, high = int(m[1]), int(m[2] if m[2] is not None else m[1])
            if high < low:
                raise argparse.ArgumentTypeError(
                    f"the range {item.strip()!r} is empty; write the smaller seed first"
                )
            if high - low >= max_count:
                raise argparse.ArgumentTypeError(
                    f"expected at most {max_count} seeds, got the range {item.strip()!r}"
                )
            seeds.extend(range(low, high + 1))
        return checked(seeds)

    def from_toml(value: Any) -> tuple[int, ...]:
        if isinstance(value, list):
            bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int)]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"expected an array of integer seeds, got {toml_kind(bad[0])} in it"
                )
            if any(v < 0 for v in value):
                raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {min(value)}")
            return checked(list(value))
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise argparse.ArgumentTypeError(
                f"expected {usage} or an array of seeds, got {toml_kind(value)}"
            )
        return parse(str(value))

    parse.from_toml = from_toml  # type: ignore[attr-defined]
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

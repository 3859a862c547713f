"""The commands of `commentaries`: each checks everything first and returns its work.

A command's `prepare_*` function validates the arguments, the paths, the plugin, the data
set and the device, and raises `UsageError` (or `InputError`) on anything wrong, before
any learning or training has run. It returns a closure that does the work; a failure
there raises `WorkError`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..commentaries.registry import discover
from ..commentaries.students import STUDENTS
from ..datasets.registry import DATASETS, load_dataset
from ..learning.checkpoint import load_commentary
from ..learning.learner import METHODS
from .checks import UsageError, writable_dir
from .fewshot import PREPARE_FEWSHOT
from .learn import SOLVERS, make_method, make_solver, prepare_learn
from .outputs import Work
from .train import prepare_train

__all__ = [
    "PREPARE",
    "SOLVERS",
    "DATASETS",
    "METHODS",
    "STUDENTS",
    "make_method",
    "make_solver",
]


# ------------------------------------------------------------------------------------------
# list


def prepare_list(args: argparse.Namespace) -> Work:
    def work() -> None:
        found = discover()
        for name, cls in sorted(found.classes.items()):
            doc = (cls.__doc__ or "").strip().splitlines()
            print(f"{name:12s} {doc[0] if doc else name}  [learned by: {cls.default_method}]")
        for name, problem in sorted(found.problems.items()):
            state = "CLASH" if name in found.classes else "BROKEN"
            print(f"{name:12s} {state}: {problem}")

    return work


# ------------------------------------------------------------------------------------------
# show


def prepare_show(args: argparse.Namespace) -> Work:
    try:
        from ..plots import plot_commentary
    except ImportError as err:
        raise UsageError(
            f"`commentaries show` needs matplotlib ({err}); install the extra: "
            "pip install 'implicitgrad-commentaries[plots]'"
        ) from err
    commentary = load_commentary(args.commentary)
    data = load_dataset(commentary.spec.name, args.data_dir)
    out = Path(args.out or args.commentary)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is an existing file; pass a folder")
    writable_dir(out, "--out")

    def work() -> None:
        paths = plot_commentary(commentary, data, out)
        for path in paths:
            print(f"wrote {path}")
        if not paths:
            print(f"{type(commentary).__name__} draws no plots")

    return work


PREPARE: dict[str, Callable[[argparse.Namespace], Work]] = {
    "list": prepare_list,
    "learn": prepare_learn,
    "train": prepare_train,
    "show": prepare_show,
}
PREPARE.update(PREPARE_FEWSHOT)

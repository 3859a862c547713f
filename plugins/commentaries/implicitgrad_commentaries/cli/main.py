"""The `commentaries` command line: list, learn, train (reuse) and show commentaries.

```text
commentaries list
commentaries learn blending --dataset digits --method ift --steps 300 --out runs/blend
commentaries train --commentary runs/blend --student cnn --seeds 3
commentaries show runs/blend
```

Every command checks all its arguments and paths before it starts any work. Bad usage or
bad input files give one line `commentaries COMMAND: error: ...` and exit status 2; a
failure during the work (a learning run that diverged, say) gives one such line and exit
status 1. `--debug` shows the traceback as well.

`learn` and `train` also read their settings from a TOML file (`--config FILE`; flags on
the command line win, `config.py`) and save the resolved settings beside their outputs;
they log their metrics to a CSV file flushed row by row, and to TensorBoard with
`--log-dir` (`logs.py`); on a terminal they show a progress bar, elsewhere periodic plain
lines (`--progress-every`, `progress.py`). `learn` saves its state every
`--checkpoint-every` meta-steps to `OUT.resume` and continues from it with `--resume`
(`resume.py`); `train --seeds` takes a count, a list or a range, and `train` draws the
learning curves of every condition.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import implicitgrad as ig

from ..learning.device import DEVICES
from . import commands
from . import fewshot as fewshot_commands
from .checks import UsageError, WorkError, integer, number, seed_list
from .config import read_config
from .progress import add_progress_flag

__all__ = ["main", "build_parser"]


class _ParseError(UsageError):
    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _ParseError(self.prog, message)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` wherever there is a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        if isinstance(action.default, list) and not action.default:
            return text
        return super()._get_help_string(action)


def versions_line() -> str:
    """Both distributions' versions, and torch's, for `--version`."""
    import torch

    from .. import __version__

    return (
        f"commentaries (implicitgrad-commentaries {__version__}, implicitgrad "
        f"{ig.__version__}, torch {torch.__version__})"
    )


def _global_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On the subcommands the defaults are SUPPRESS, so that a flag given before the
    # subcommand is not reset by the subcommand's own default.
    default: Any = argparse.SUPPRESS if suppress else False
    parser.add_argument(
        "--quiet", action="store_true", default=default, help="no progress bars or lines"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="on an error, show the Python traceback too",
    )


def _device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help=f"where students, teachers and data live: {', '.join(DEVICES)}; auto is CUDA "
        "when available, else the CPU",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `commentaries` command."""
    parser = _Parser(
        prog="commentaries",
        description="Learn commentaries (Raghu et al., ICLR 2021) with implicitgrad and reuse "
        "them to train new students.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=versions_line())
    _global_flags(parser, suppress=False)
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do (COMMAND --help: more)",
    )

    def subcommand(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        _global_flags(p, suppress=True)
        return p

    subcommand("list", "list the installed commentary plugins and the broken ones")

    lp = subcommand("learn", "learn a commentary and save it")
    lp.add_argument(
        "name",
        nargs="?",
        help="plugin name (see `commentaries list`); required, here or in --config",
    )
    lp.add_argument("--out", help="folder to save the commentary in; required, here or in --config")
    _config_flag(lp)
    lp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the commentary already in --out (its earlier outputs go with it)",
    )
    lp.add_argument("--dataset", default="digits", choices=commands.DATASETS, help="data set")
    lp.add_argument("--data-dir", default="data", help="folder with MNIST/CIFAR files")
    lp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="commentary setting, e.g. --set normalize=true (value parsed as JSON); repeatable",
    )
    lp.add_argument(
        "--method",
        choices=commands.METHODS,
        help="unroll (Algorithm 1) or ift (Algorithm 2); default: the plugin's own",
    )
    lp.add_argument(
        "--solver", choices=commands.SOLVERS, default="neumann", help="linear solver for ift"
    )
    lp.add_argument(
        "--neumann-terms", type=integer(0), default=1, help="Neumann series terms K (ift)"
    )
    lp.add_argument(
        "--cg-iters", type=integer(1), default=20, help="CG, GMRES, BiCGStab: maximum products"
    )
    lp.add_argument(
        "--cg-damping",
        type=number(0.0, inclusive=True),
        default=0.0,
        help="CG: damping added to the Hessian's diagonal (> 0 for a non-convex student)",
    )
    lp.add_argument(
        "--cg-tol",
        type=number(0.0, high=1.0),
        default=1e-4,
        help="CG, GMRES, BiCGStab: relative tolerance",
    )
    lp.add_argument(
        "--student", choices=commands.STUDENTS, default="mlp", help="student while learning"
    )
    lp.add_argument(
        "--student-lr", type=number(0.0), default=0.1, help="the student's learning rate"
    )
    lp.add_argument(
        "--student-steps",
        type=integer(1),
        default=500,
        help="ift: student steps before it is re-initialized",
    )
    lp.add_argument(
        "--inner-steps", type=integer(1), default=20, help="unroll: student steps N per meta-step"
    )
    lp.add_argument("--steps", type=integer(1), default=300, help="meta-steps (updates of phi)")
    lp.add_argument(
        "--meta-lr", type=number(0.0), help="Adam step on phi; default: the plugin's own"
    )
    lp.add_argument("--batch-size", type=integer(1), default=64, help="batch size")
    lp.add_argument("--seed", type=integer(0, 2**63 - 1), default=0, help="random seed")
    _device_flag(lp)
    lp.add_argument(
        "--log-dir",
        help="folder for the metrics CSV (learn-metrics.csv, one row per meta-step) and "
        "TensorBoard scalars (with the tensorboard extra); default: OUT.log beside --out, "
        "CSV only",
    )
    add_progress_flag(lp)
    lp.add_argument(
        "--checkpoint-every",
        type=integer(0),
        default=10,
        metavar="K",
        help="save the run's state to OUT.resume every K meta-steps, for --resume (0: never); "
        "removed once the commentary is saved",
    )
    lp.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose state is in OUT.resume; the flags that "
        "change what it computes must be those it was started with",
    )

    tp = subcommand("train", "train fresh students with a saved commentary")
    tp.add_argument("--commentary", help="folder written by `learn`; required, here or in --config")
    _config_flag(tp)
    tp.add_argument(
        "--dataset",
        choices=commands.DATASETS,
        help="data set; default: the one it was learned on",
    )
    tp.add_argument("--data-dir", default="data", help="folder with MNIST/CIFAR files")
    tp.add_argument("--student", choices=commands.STUDENTS, default="cnn", help="student")
    tp.add_argument(
        "--seeds",
        type=seed_list(),
        default="3",
        help="a count (3: seeds 0, 1, 2), a list (0,4,7) or an inclusive range (5-9)",
    )
    tp.add_argument("--steps", type=integer(1), default=1500, help="student training steps")
    tp.add_argument("--lr", type=number(0.0), default=0.05, help="student learning rate")
    tp.add_argument("--batch-size", type=integer(1), default=64, help="batch size")
    tp.add_argument("--out", help="metrics JSON file; default: COMMENTARY/train-STUDENT.json")
    tp.add_argument(
        "--curve-points",
        type=integer(0),
        default=20,
        help="evenly spaced tests of every student for the learning curves (OUT_STEM.png)",
    )
    _device_flag(tp)
    tp.add_argument(
        "--log-dir",
        help="folder for the metrics CSV (OUT_STEM.csv, one row per condition, seed and "
        "test) and TensorBoard scalars (with the tensorboard extra); default: the folder of "
        "--out, CSV only",
    )
    add_progress_flag(tp)

    sp = subcommand("show", "write PNG plots of a saved commentary")
    sp.add_argument("commentary", help="folder written by `learn`")
    sp.add_argument("--data-dir", default="data", help="folder with MNIST/CIFAR files")
    sp.add_argument("--out", help="folder for the PNGs; default: the commentary folder")

    fewshot_commands.add_parsers(subcommand, _device_flag)
    parser.subcommands = sub.choices  # type: ignore[attr-defined]
    return parser


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of settings (keys: the long flag names); flags given here win",
    )


# Required, but possibly given by the --config file rather than on the command line.
_NEEDED = {"learn": ("name", "--out"), "train": ("--commentary",)}


def _with_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]
) -> argparse.Namespace:
    """`argv` parsed again over the settings of its `--config` file, if it has one."""
    sub = parser.subcommands[args.command]  # type: ignore[attr-defined]
    if getattr(args, "config", None) is not None:
        found = read_config(args.config, args.command, parser.subcommands)  # type: ignore[attr-defined]
        # A false switch in the file is the default anyway, and as a subcommand default it
        # would undo the same switch given before the subcommand.
        sub.set_defaults(**{k: v for k, v in found.items() if v is not False})
        args = parser.parse_args(argv)
    needed = _NEEDED.get(args.command, ())
    missing = [name for name in needed if getattr(args, name.lstrip("-")) is None]
    if missing:
        raise _ParseError(
            sub.prog,
            f"the following arguments are required: {', '.join(missing)} (on the command "
            "line or in --config)",
        )
    return args


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _show_warnings(prog: list[str]) -> None:
    def show(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        print(f"{prog[0]}: warning: {_one_line(message)}", file=sys.stderr)

    warnings.showwarning = show  # type: ignore[assignment]


def _report(prog: str, err: BaseException, debug: bool, prefix: str = "") -> None:
    if debug:
        traceback.print_exception(err)
    print(f"{prog}: error: {prefix}{_one_line(err)}", file=sys.stderr)


_USAGE_ERRORS = (UsageError, ig.InputError)
_WORK_ERRORS = (WorkError, ig.ImplicitGradError, OSError, RuntimeError, ValueError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `commentaries` command; returns the exit status.

    **Arguments:**

    - `argv`: the arguments (default: `sys.argv[1:]`).

    **Returns:**

    `0` on success, `2` for bad usage or bad input files, `1` for a failure during the
    work, `130` when interrupted.

    **Example:**

    ```python
    from implicitgrad_commentaries.cli import main
    assert main(["list"]) == 0
    ```
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    prog = ["commentaries"]
    with warnings.catch_warnings():
        _show_warnings(prog)
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            prog[0] = f"commentaries {args.command}"
            args = _with_config(parser, args, argv)
            work: Callable[[], None] = commands.PREPARE[args.command](args)
        except _ParseError as err:
            print(f"{err.prog}: error: {_one_line(err)} (see `{err.prog} --help`)", file=sys.stderr)
            return 2
        except _USAGE_ERRORS as err:
            _report(prog[0], err, debug)
            return 2
        except KeyboardInterrupt:
            print(f"{prog[0]}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # a plugin's own code; never a bare traceback
            _report(prog[0], err, debug, f"{type(err).__name__}: ")
            return 1
        try:
            work()
        except KeyboardInterrupt:
            print(f"{prog[0]}: interrupted; nothing was replaced", file=sys.stderr)
            return 130
        except _WORK_ERRORS as err:
            _report(prog[0], err, debug)
            return 1
        except Exception as err:
            _report(prog[0], err, debug, f"unexpected {type(err).__name__}: ")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

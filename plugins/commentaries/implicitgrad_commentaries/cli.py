"""The `commentaries` command line: list, learn, train (reuse) and show commentaries.

```text
commentaries list
commentaries learn blending --dataset digits --method ift --steps 300 --out runs/blend
commentaries train --commentary runs/blend --student cnn --seeds 3
commentaries show runs/blend
```

Every command exits with status 2 and a one-line message on bad arguments or data that do
not match, and writes its metrics as JSON next to its outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import implicitgrad as ig

from .checkpoint import atomic_write, check_compatible, load_commentary, save_commentary, versions
from .data import DATASETS, load_dataset
from .learn import METHODS, Implicit, Unroll, learn
from .models import STUDENTS
from .train import TrainConfig, compare, format_table, summarize

__all__ = ["main", "build_parser", "make_solver"]

SOLVERS = ("neumann", "cg", "identity", "exact")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def make_solver(
    name: str, *, terms: int, alpha: float, max_iter: int, damping: float, tol: float = 1e-4
) -> Any:
    """The implicitgrad solver object for a `--solver` choice."""
    if name == "neumann":
        return ig.Neumann(terms=terms, alpha=alpha)
    if name == "cg":
        return ig.CG(max_iter=max_iter, tol=tol, damping=damping)
    if name == "identity":
        return ig.Identity(scale=alpha)
    return ig.Exact()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `commentaries` command."""
    parser = argparse.ArgumentParser(
        prog="commentaries",
        description="Learn commentaries (Raghu et al., ICLR 2021) with implicitgrad and reuse "
        "them to train new students.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="list the installed commentary plugins")

    lp = sub.add_parser("learn", help="learn a commentary and save it")
    lp.add_argument("name", help="plugin name (see `commentaries list`)")
    lp.add_argument("--dataset", default="digits", choices=DATASETS)
    lp.add_argument("--data-dir", default="data", help="folder with MNIST/CIFAR files")
    lp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="commentary setting, e.g. --set normalize=true (value parsed as JSON)",
    )
    lp.add_argument("--method", choices=METHODS, help="default: the plugin's own")
    lp.add_argument("--solver", choices=SOLVERS, default="neumann", help="IFT solver")
    lp.add_argument("--neumann-terms", type=int, default=1, help="Neumann terms K (default 1)")
    lp.add_argument("--cg-iters", type=_positive_int, default=20)
    lp.add_argument("--cg-damping", type=float, default=0.0)
    lp.add_argument("--cg-tol", type=_positive_float, default=1e-4)
    lp.add_argument("--student", choices=STUDENTS, default="mlp", help="student while learning")
    lp.add_argument("--student-lr", type=_positive_float, default=0.1)
    lp.add_argument("--student-steps", type=_positive_int, default=500, help="IFT: run length")
    lp.add_argument("--inner-steps", type=_positive_int, default=20, help="unroll: steps N")
    lp.add_argument("--steps", type=_positive_int, default=300, help="meta-steps")
    lp.add_argument("--meta-lr", type=_positive_float, help="default: the plugin's own")
    lp.add_argument("--batch-size", type=_positive_int, default=64)
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--out", required=True, help="folder to save the commentary in")

    tp = sub.add_parser("train", help="train fresh students with a saved commentary")
    tp.add_argument("--commentary", required=True, help="folder written by `learn`")
    tp.add_argument("--dataset", help="default: the dataset it was learned on")
    tp.add_argument("--data-dir", default="data")
    tp.add_argument("--student", choices=STUDENTS, default="cnn")
    tp.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds")
    tp.add_argument("--steps", type=_positive_int, default=1500)
    tp.add_argument("--lr", type=_positive_float, default=0.05)
    tp.add_argument("--batch-size", type=_positive_int, default=64)
    tp.add_argument("--out", help="metrics JSON (default: COMMENTARY/train-STUDENT.json)")

    sp = sub.add_parser("show", help="write PNG plots of a saved commentary")
    sp.add_argument("commentary", help="folder written by `learn`")
    sp.add_argument("--data-dir", default="data")
    sp.add_argument("--out", help="folder for the PNGs (default: the commentary folder)")
    return parser


def _progress(total: int, desc: str, quiet: bool) -> Any:
    from tqdm.auto import tqdm

    # disable=None turns the bar off when stderr is not a terminal, so logs stay readable.
    return tqdm(
        total=total,
        desc=desc,
        disable=True if quiet else None,
        leave=False,
        file=sys.stderr,
        mininterval=1.0,
    )


def _cmd_list(args: argparse.Namespace) -> None:
    for name in ig.plugins.available():
        obj = ig.plugins.load(name)
        doc = (obj.__doc__ or "").strip().splitlines()
        method = getattr(obj, "default_method", "?")
        print(f"{name:12s} {doc[0] if doc else name}  [learned by: {method}]")
    for failure in ig.plugins.errors():
        print(f"{failure.name:12s} BROKEN ({failure.distribution}): {failure.error}")


def _settings(items: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise CLIError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return config


def _cmd_learn(args: argparse.Namespace) -> None:
    if args.name not in ig.plugins.available():
        raise CLIError(
            f"unknown commentary {args.name!r}; installed: "
            f"{', '.join(ig.plugins.available()) or 'none'}"
        )
    if args.neumann_terms < 0:
        raise CLIError(f"--neumann-terms must be >= 0, got {args.neumann_terms}")
    data = load_dataset(args.dataset, args.data_dir)
    cls = ig.plugins.load(args.name)
    config = _settings(args.set)
    # Seed before building the commentary, so that its initialization is reproducible too.
    torch.manual_seed(args.seed)
    try:
        commentary = cls(data.spec, **config)
    except TypeError as err:
        raise CLIError(f"--set {config} does not fit {cls.__name__}: {err}") from err
    method_name = args.method or commentary.default_method
    if method_name == "unroll":
        method: Unroll | Implicit = Unroll(args.inner_steps, args.student_lr)
    else:
        solver = make_solver(
            args.solver,
            terms=args.neumann_terms,
            alpha=args.student_lr,
            max_iter=args.cg_iters,
            damping=args.cg_damping,
            tol=args.cg_tol,
        )
        method = Implicit(solver, args.student_lr, args.student_steps)
    bar = _progress(args.steps, f"learn {args.name} ({method_name})", args.quiet)

    def tick(step: int, val_loss: float) -> None:
        bar.update(1)
        bar.set_postfix(val_loss=f"{val_loss:.3f}")

    history = learn(
        commentary,
        data,
        method,
        student=args.student,
        steps=args.steps,
        meta_lr=args.meta_lr,
        batch_size=args.batch_size,
        seed=args.seed,
        callback=tick,
    )
    bar.close()
    settings = {k: v for k, v in vars(args).items() if k not in ("quiet",)}
    extra = {"learn": settings, "method": repr(method), "history": history.to_json()}
    out = save_commentary(commentary, args.out, extra)
    atomic_write(Path(out) / "learn-metrics.json", json.dumps(extra, indent=2))
    print(
        f"learned {args.name} on {args.dataset} with {method_name} in {history.seconds:.1f}s "
        f"({history.skipped} of {args.steps} meta-steps skipped); saved to {out}"
    )
    if history.skipped:
        print(f"first solver failure: {history.first_error}")
    if history.not_converged:
        print(f"solver stopped before its tolerance in {history.not_converged} meta-steps")


def _cmd_train(args: argparse.Namespace) -> None:
    commentary = load_commentary(args.commentary)
    dataset = args.dataset or commentary.spec.name
    data = load_dataset(dataset, args.data_dir)
    check_compatible(commentary, data.spec, where=f"--commentary {args.commentary}")
    conditions: dict[str, Any] = {
        "baseline (no commentary)": None,
        "learned commentary": commentary,
    }
    conditions.update(commentary.controls(data.val.x))
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    bar = _progress(len(conditions) * args.seeds, f"train {args.student}", args.quiet)
    results = compare(
        data,
        args.student,
        conditions,
        seeds=tuple(range(args.seeds)),
        config=config,
        callback=lambda label, seed: bar.update(1),
    )
    bar.close()
    table = format_table(results)
    print(
        f"test accuracy (%), mean ± std over {args.seeds} seeds; student {args.student}, "
        f"{args.steps} steps, dataset {dataset}"
    )
    print(table)
    out = Path(args.out or Path(args.commentary) / f"train-{args.student}.json")
    metrics = {
        "student": args.student,
        "dataset": dataset,
        "config": vars(config) | {"eval_fractions": list(config.eval_fractions)},
        "results": summarize(results),
        "table": table,
        "versions": versions(),
    }
    atomic_write(out, json.dumps(metrics, indent=2))


def _cmd_show(args: argparse.Namespace) -> None:
    try:
        from .plots import plot_commentary
    except ImportError as err:
        raise CLIError(
            f"`commentaries show` needs matplotlib ({err}); install the extra: "
            "pip install 'implicitgrad-commentaries[plots]'"
        ) from err
    commentary = load_commentary(args.commentary)
    data = load_dataset(commentary.spec.name, args.data_dir)
    for path in plot_commentary(commentary, data, args.out or args.commentary):
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `commentaries` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"list": _cmd_list, "learn": _cmd_learn, "train": _cmd_train, "show": _cmd_show}
    try:
        commands[args.command](args)
    except (CLIError, ig.InputError) as err:
        print(f"commentaries {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

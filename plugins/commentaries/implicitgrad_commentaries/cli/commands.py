"""The commands of `commentaries`: each checks everything first and returns its work.

A command's `prepare_*` function validates the arguments, the paths, the plugin, the data
set and the device, and raises `UsageError` (or `InputError`) on anything wrong, before
any learning or training has run. It returns a closure that does the work; a failure
there raises `WorkError`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import implicitgrad as ig

from ..commentaries.base import AbstractCommentary
from ..commentaries.registry import discover
from ..commentaries.students import STUDENTS, make_student
from ..datasets.registry import DATASETS, load_dataset
from ..learning.checkpoint import (
    atomic_write,
    check_compatible,
    load_commentary,
    save_commentary,
    versions,
)
from ..learning.device import resolve_device
from ..learning.distributed import join
from ..learning.learner import METHODS, Implicit, LearnHistory, Schedule, Unroll, learn
from ..learning.reuse import TrainConfig, compare, format_table, summarize
from .checks import UsageError, WorkError, writable_dir, writable_file, writable_folder
from .fewshot import PREPARE_FEWSHOT

__all__ = ["PREPARE", "SOLVERS", "make_method", "make_solver"]

# The core's solver shorthands (`ig.hypergrad(..., solver="cg")`) are the lower-cased
# names of the solver classes it exports; the command line offers every one of them and
# builds it with its own settings.
_SOLVER_CLASSES = {
    name.lower(): getattr(ig, name)
    for name in ig.__all__
    if isinstance(getattr(ig, name), type)
    and issubclass(getattr(ig, name), ig.AbstractSolver)
    and getattr(ig, name) is not ig.AbstractSolver
}
SOLVERS = tuple(_SOLVER_CLASSES)
__all__ += ["DATASETS", "METHODS", "STUDENTS"]

Work = Callable[[], None]


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


def make_solver(args: argparse.Namespace) -> ig.AbstractSolver:
    """The implicitgrad solver for the `--solver` choice and its settings."""
    name = args.solver
    if name == "neumann":
        return ig.Neumann(terms=args.neumann_terms, alpha=args.student_lr)
    if name == "cg":
        return ig.CG(max_iter=args.cg_iters, tol=args.cg_tol, damping=args.cg_damping)
    if name == "identity":
        return ig.Identity(scale=args.student_lr)
    if name in ("gmres", "bicgstab"):
        return _SOLVER_CLASSES[name](max_iter=args.cg_iters, tol=args.cg_tol)
    return _SOLVER_CLASSES[name]()


def make_method(args: argparse.Namespace, commentary: AbstractCommentary) -> Schedule:
    """The schedule `learn` runs, and with it the core adjoint that differentiates it: the one
    place the command line chooses the method."""
    if (args.method or commentary.default_method) == "unroll":
        return Unroll(args.inner_steps, args.student_lr)
    return Implicit(make_solver(args), args.student_lr, args.student_steps)


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
# learn


def _settings(items: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            config[key] = json.loads(value, parse_constant=_no_constant)
        except json.JSONDecodeError:
            config[key] = value
        except ValueError as err:
            raise UsageError(f"--set {item!r}: {err}") from None
    return config


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _commentary_class(name: str) -> type[AbstractCommentary]:
    found = discover()
    if name in found.classes:
        if name in found.problems:
            print(f"commentaries learn: warning: {found.problems[name]}", file=sys.stderr)
        return found.classes[name]
    if name in found.problems:
        raise UsageError(f"the commentary plugin {name!r} cannot be used: {found.problems[name]}")
    raise UsageError(
        f"unknown commentary {name!r}; installed: {', '.join(sorted(found.classes)) or 'none'}"
    )


def _non_finite(commentary: AbstractCommentary) -> list[str]:
    return [k for k, v in commentary.state_dict().items() if not bool(torch.isfinite(v).all())]


def _advice(args: argparse.Namespace, method: Schedule, history: LearnHistory) -> str:
    if history.diverged_at is not None:
        meta_lr = args.meta_lr if args.meta_lr is not None else "the plugin's default"
        return (
            f"Lower --meta-lr (now {meta_lr}) or --student-lr (now {args.student_lr}), or "
            "fewer --steps."
        )
    if method.name == "ift" and args.solver == "cg":
        return (
            "CG needs a positive definite Hessian, which a non-convex student does not have: "
            "add damping (--cg-damping 1.0, say) or choose a solver that does not need it "
            "(--solver gmres, --solver neumann or --solver exact)."
        )
    return "Choose another --solver or --method, or a smaller --student-lr."


def prepare_learn(args: argparse.Namespace) -> Work:
    cls = _commentary_class(args.name)
    device = resolve_device(args.device)
    out = writable_folder(args.out, "--out", overwrite=args.overwrite, marker="commentary.json")
    data = load_dataset(args.dataset, args.data_dir)
    config = _settings(args.set)
    # Seed before building the commentary, so that its initialization is reproducible too.
    torch.manual_seed(args.seed)
    try:
        commentary = cls(data.spec, **config)
    except Exception as err:  # whatever the plugin's constructor raises on bad settings
        shown = " ".join(f"--set {item}" for item in args.set) or "its default settings"
        raise UsageError(
            f"{shown} does not fit {cls.__name__}: {type(err).__name__}: {err}"
        ) from err
    if _non_finite(commentary):
        raise UsageError(
            f"{cls.__name__}({config}) starts with NaN or infinite parameters "
            f"({', '.join(_non_finite(commentary))}); pass finite --set values"
        )
    if not commentary.is_learnable:
        raise UsageError(
            f"{cls.__name__} with {config} is a fixed control and cannot be learned; drop "
            "the --set that makes it one"
        )
    method = make_method(args, commentary)
    make_student(args.student, data.spec)  # a CNN on vector data is refused here

    def work() -> None:
        # Under torchrun: every process learns on its slice of each batch; only the first
        # shows progress and writes. A failing process exits, and the others fail at their
        # next collective (or after the group's timeout).
        procs = join(device)
        quiet = args.quiet or not procs.is_main
        bar = _progress(args.steps, f"learn {args.name} ({method!r:.40})", quiet)

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
            device=procs.device,
            data_parallel=procs.data_parallel,
        )
        bar.close()
        failure = history.failure(args.steps)
        if failure is not None or _non_finite(commentary):
            failure = (failure or "the commentary's parameters are NaN or infinite").rstrip(".")
            kept = "the commentary already there is kept" if out.exists() else "nothing saved"
            raise WorkError(
                f"learning failed: {failure}. {_advice(args, method, history)} ({kept})"
            )
        procs.close()
        if not procs.is_main:
            return
        settings = {k: v for k, v in vars(args).items() if k not in ("quiet", "debug")}
        extra = {
            "learn": settings,
            "method": repr(method),
            "device": str(device),
            "processes": procs.world,
            "history": history.to_json(),
        }
        metrics = json.dumps(extra, indent=2)
        save_commentary(commentary, out, extra, files={"learn-metrics.json": metrics})
        print(
            f"learned {args.name} on {args.dataset} with {method!r} on {device} in "
            f"{history.seconds:.1f}s ({history.skipped} of {args.steps} meta-steps skipped); "
            f"saved to {out}"
        )
        if history.skipped:
            print(f"first solver failure: {history.first_error}")
        if history.not_converged:
            print(f"solver stopped before its tolerance in {history.not_converged} meta-steps")

    return work


# ------------------------------------------------------------------------------------------
# train


def prepare_train(args: argparse.Namespace) -> Work:
    device = resolve_device(args.device)
    commentary = load_commentary(args.commentary, device=device)
    out = writable_file(
        args.out or str(Path(args.commentary) / f"train-{args.student}.json"), "--out"
    )
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    dataset = args.dataset or commentary.spec.name
    data = load_dataset(dataset, args.data_dir)
    check_compatible(commentary, data.spec, where=f"--commentary {args.commentary}")
    make_student(args.student, data.spec)

    def work() -> None:
        conditions: dict[str, Any] = {
            "baseline (no commentary)": None,
            "learned commentary": commentary,
        }
        conditions.update(commentary.controls(data.val.x.to(device)))
        bar = _progress(len(conditions) * args.seeds, f"train {args.student}", args.quiet)
        results = compare(
            data,
            args.student,
            conditions,
            seeds=tuple(range(args.seeds)),
            config=config,
            callback=lambda label, seed: bar.update(1),
            device=device,
        )
        bar.close()
        table = format_table(results)
        print(
            f"test accuracy (%), mean ± std over {args.seeds} seeds; student {args.student}, "
            f"{args.steps} steps, dataset {dataset}, device {device}"
        )
        print(table)
        metrics = {
            "student": args.student,
            "dataset": dataset,
            "device": str(device),
            "config": vars(config) | {"eval_fractions": list(config.eval_fractions)},
            "results": summarize(results),
            "table": table,
            "versions": versions(),
        }
        atomic_write(out, json.dumps(metrics, indent=2))

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

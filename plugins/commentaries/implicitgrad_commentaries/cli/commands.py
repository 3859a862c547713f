"""The commands of `commentaries`: each checks everything first and returns its work.

A command's `prepare_*` function validates the arguments, the paths, the plugin, the data
set and the device, and raises `UsageError` (or `InputError`) on anything wrong, before
any learning or training has run. It returns a closure that does the work; a failure
there raises `WorkError`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
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
from ..learning.state import LearnState
from .checks import UsageError, WorkError, writable_dir, writable_file, writable_folder
from .config import dump_config
from .fewshot import PREPARE_FEWSHOT
from .logs import MetricsLog, read_rows, tensorboard_writer, warn
from .progress import Progress
from .resume import check_state, load_state, restored_rows, run_flags

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


def _sibling(path: Path, suffix: str) -> Path:
    """`path` with `suffix` added to its name (`runs/blend` → `runs/blend.log`)."""
    path = path if path.name else path.resolve()
    return path.with_name(path.name + suffix)


def _log_dir(args: argparse.Namespace, default: Path, out: Path) -> Path:
    log_dir = Path(args.log_dir) if args.log_dir is not None else default
    if log_dir.exists() and not log_dir.is_dir():
        raise UsageError(f"--log-dir {str(log_dir)!r} is an existing file; pass a folder")
    if args.command == "learn" and log_dir.resolve().is_relative_to(out.resolve()):
        raise UsageError(
            f"--log-dir {str(log_dir)!r} is inside --out {str(out)!r}, which is replaced as a "
            "whole when the commentary is saved; choose a folder outside it"
        )
    writable_dir(log_dir, "--log-dir")
    return log_dir


def _saved_config(args: argparse.Namespace, resolved: dict[str, Any]) -> str:
    """The resolved settings of this run as TOML, warning about what TOML cannot hold."""
    from .main import build_parser

    sub = build_parser().subcommands[args.command]  # type: ignore[attr-defined]
    text, left_out = dump_config(args.command, sub, args, resolved)
    for name in left_out:
        warn(
            f"commentaries {args.command}",
            f"--set {name}=null cannot be written to the saved configuration (TOML has no "
            "null); it is left out there",
        )
    return text


def _hypergrad_norm(commentary: AbstractCommentary) -> float:
    # The learner sets every parameter's .grad to its hypergradient before the meta-step
    # and clears it only at the next one, so the callback sees it there.
    grads = [p.grad for p in commentary.phi().values() if p.grad is not None]
    return math.sqrt(sum(float((g.detach() ** 2).sum()) for g in grads))


LEARN_FIELDS = ("step", "val_loss", "hypergrad_norm", "skipped", "seconds")


def prepare_learn(args: argparse.Namespace) -> Work:
    cls = _commentary_class(args.name)
    device = resolve_device(args.device)
    resume_dir = _sibling(Path(args.out), ".resume")
    if resume_dir.exists() and not (args.resume or args.overwrite):
        raise UsageError(
            f"--out {args.out!r}: an interrupted run saved its state in {str(resume_dir)!r}; "
            "pass --resume to continue it, or --overwrite to start again (the state is "
            "removed)"
        )
    state = load_state(resume_dir) if args.resume else None
    # A resumed run may replace what its first start was allowed to replace.
    overwrite = args.overwrite or bool(state is not None and state.settings.get("overwrite"))
    out = writable_folder(args.out, "--out", overwrite=overwrite, marker="commentary.json")
    log_dir = _log_dir(args, _sibling(out, ".log"), out)
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
    meta_lr = commentary.default_meta_lr if args.meta_lr is None else args.meta_lr
    resolved = {"method": method.name, "meta_lr": meta_lr, "set": config}
    flags = run_flags(args, resolved)
    if state is not None:
        check_state(state, resume_dir, flags, args.steps)
    state_settings = {"command": "commentaries learn", "flags": flags, "overwrite": overwrite}
    saved_config = _saved_config(args, resolved)
    writer = tensorboard_writer("commentaries learn") if args.log_dir is not None else None
    done = 0 if state is None else state.step

    def work() -> None:
        # Under torchrun: every process learns on its slice of each batch; only the first
        # shows progress and writes. A failing process exits, and the others fail at their
        # next collective (or after the group's timeout).
        procs = join(device)
        quiet = args.quiet or not procs.is_main
        progress = Progress(
            args.steps,
            "commentaries learn",
            "meta-step",
            quiet=quiet,
            every=args.progress_every,
            done=done,
        )
        log, offset = None, 0.0
        if procs.is_main:
            if state is None and resume_dir.exists():  # --overwrite: start again
                shutil.rmtree(resume_dir)
            tb_dir = log_dir if writer is not None else None
            csv_path = log_dir / "learn-metrics.csv"
            rows = [] if state is None else restored_rows(state, read_rows(csv_path))
            if rows:
                offset = float(rows[-1]["seconds"] or state.history.seconds)
            log = MetricsLog(
                csv_path, LEARN_FIELDS, rows=rows, writer=writer, tb_dir=tb_dir, purge_step=done + 1
            )
        start = time.perf_counter() - offset
        logged = [done]  # meta-steps in the log; a skipped one has no callback

        def save_state(learn_state: LearnState) -> None:
            if procs.is_main:
                learn_state.save(resume_dir)

        def record(step: int, val_loss: float, norm: float) -> None:
            if log is not None:
                row = {"step": step + 1, "val_loss": val_loss, "hypergrad_norm": norm}
                row |= {
                    "skipped": int(math.isnan(norm)),
                    "seconds": f"{time.perf_counter() - start:.3f}",
                }
                scalars = {"learn/val_loss": val_loss, "learn/hypergrad_norm": norm}
                log.write(row, scalars | {"learn/skipped": row["skipped"]}, step + 1)
            logged[0] = step + 1

        def skipped_until(step: int) -> None:
            for missed in range(logged[0], step):
                record(missed, math.nan, math.nan)
                progress.update("meta-step skipped (solver failed)")

        def tick(step: int, val_loss: float) -> None:
            skipped_until(step)
            record(step, val_loss, _hypergrad_norm(commentary))
            progress.update(f"val_loss {val_loss:.3f}")

        try:
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
                checkpoint=save_state,
                checkpoint_every=args.checkpoint_every,
                resume=state,
                settings=state_settings,
            )
            skipped_until(len(history.val_loss))
        finally:
            progress.close()
            if log is not None:
                log.close()
        failure = history.failure(args.steps)
        if failure is not None or _non_finite(commentary):
            failure = (failure or "the commentary's parameters are NaN or infinite").rstrip(".")
            kept = "the commentary already there is kept" if out.exists() else "nothing saved"
            if procs.is_main:  # resuming would fail the same way
                shutil.rmtree(resume_dir, ignore_errors=True)
            raise WorkError(
                f"learning failed: {failure}. {_advice(args, method, history)} ({kept})"
            )
        procs.close()
        if log is None:
            return
        # The saved table takes the values from the history, whatever the callback saw.
        for row, val_loss, norm in zip(log.rows, history.val_loss, history.hypergrad_norm):
            row.update(val_loss=val_loss, hypergrad_norm=norm)
        settings = {k: v for k, v in vars(args).items() if k not in ("quiet", "debug")}
        extra = {
            "learn": settings,
            "method": repr(method),
            "device": str(device),
            "processes": procs.world,
            "history": history.to_json(),
        }
        files = {
            "learn-metrics.json": json.dumps(extra, indent=2),
            "learn-metrics.csv": log.text(),
            "config.toml": saved_config,
        }
        save_commentary(commentary, out, extra, files=files)
        shutil.rmtree(resume_dir, ignore_errors=True)
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

TRAIN_FIELDS = ("condition", "seed", "step", "fraction", "test_accuracy", "seconds")


def _beside(out: Path, suffix: str) -> Path:
    """A file next to the metrics JSON `out`, named after its stem."""
    path = out.with_name(out.stem + suffix)
    if path == out:
        raise UsageError(
            f"--out {str(out)!r}: its {suffix} file would be the metrics file itself; name "
            "the metrics file NAME.json"
        )
    return path


def _matplotlib(prog: str) -> bool:
    """Whether matplotlib imports; one warning line when it does not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        warn(
            prog,
            f"the learning-curve plot needs matplotlib ({err}); install the extra: pip "
            "install 'implicitgrad-commentaries[plots]'. Skipping the plot",
        )
        return False
    return True


def prepare_train(args: argparse.Namespace) -> Work:
    device = resolve_device(args.device)
    commentary = load_commentary(args.commentary, device=device)
    out = writable_file(
        args.out or str(Path(args.commentary) / f"train-{args.student}.json"), "--out"
    )
    saved_config_path, png = _beside(out, ".config.toml"), _beside(out, ".png")
    log_dir = _log_dir(args, out.parent, out)
    csv_path = log_dir / f"{out.stem}.csv"
    if csv_path == out:
        raise UsageError(f"--out {str(out)!r}: the CSV log would be the metrics file itself")
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, curve_points=args.curve_points
    )
    dataset = args.dataset or commentary.spec.name
    data = load_dataset(dataset, args.data_dir)
    check_compatible(commentary, data.spec, where=f"--commentary {args.commentary}")
    make_student(args.student, data.spec)
    seeds = args.seeds
    saved_config = _saved_config(args, {"dataset": dataset, "seeds": list(seeds)})
    writer = tensorboard_writer("commentaries train") if args.log_dir is not None else None
    plots = _matplotlib("commentaries train")

    def work() -> None:
        conditions: dict[str, Any] = {
            "baseline (no commentary)": None,
            "learned commentary": commentary,
        }
        conditions.update(commentary.controls(data.val.x.to(device)))
        progress = Progress(
            len(conditions) * len(seeds),
            "commentaries train",
            "student",
            quiet=args.quiet,
            every=args.progress_every,
        )
        log = MetricsLog(csv_path, TRAIN_FIELDS, writer=writer, tb_dir=log_dir if writer else None)
        start = time.perf_counter()
        last: dict[tuple[str, int], float] = {}

        def tested(label: str, seed: int, step: int, acc: float) -> None:
            row = {"condition": label, "seed": seed, "step": step, "fraction": step / args.steps}
            row |= {"test_accuracy": acc, "seconds": f"{time.perf_counter() - start:.3f}"}
            log.write(row, {f"test_accuracy/{label}/seed {seed}": acc}, step)
            last[label, seed] = acc

        def trained(label: str, seed: int) -> None:
            progress.update(f"{label}, seed {seed}: {100 * last[label, seed]:.1f}%")

        try:
            results = compare(
                data,
                args.student,
                conditions,
                seeds=seeds,
                config=config,
                callback=trained,
                device=device,
                on_eval=tested,
            )
        finally:
            progress.close()
            log.close()
        table = format_table(results)
        shown = ", ".join(map(str, seeds[:8])) + (", ..." if len(seeds) > 8 else "")
        print(
            f"test accuracy (%), mean ± std over {len(seeds)} seeds ({shown}); student "
            f"{args.student}, {args.steps} steps, dataset {dataset}, device {device}"
        )
        print(table)
        metrics = {
            "commentary": str(args.commentary),
            "student": args.student,
            "dataset": dataset,
            "device": str(device),
            "seeds": list(seeds),
            "config": vars(config) | {"eval_fractions": list(config.eval_fractions)},
            "results": summarize(results),
            "table": table,
            "versions": versions(),
        }
        atomic_write(out, json.dumps(metrics, indent=2))
        atomic_write(saved_config_path, saved_config)
        if plots:
            title = (
                f"{commentary.name} commentary ({Path(args.commentary).name}) reused on "
                f"{args.student} students, {dataset}"
            )
            from ..curves import plot_learning_curves

            print(f"wrote {plot_learning_curves(results, png, title=title)}")

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

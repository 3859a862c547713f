"""`commentaries learn`: learn a commentary and save it, resumably."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

import implicitgrad as ig

from ..commentaries.base import AbstractCommentary
from ..commentaries.registry import discover
from ..commentaries.students import make_student
from ..datasets.registry import load_dataset
from ..learning.checkpoint import save_commentary
from ..learning.device import resolve_device
from ..learning.distributed import join
from ..learning.learner import Implicit, LearnHistory, Schedule, Unroll, learn
from ..learning.state import LearnState
from .checks import UsageError, WorkError, writable_folder
from .logs import MetricsLog, read_rows, tensorboard_writer
from .outputs import Work, log_folder, resolved_toml, sibling
from .progress import Progress
from .resume import check_state, load_state, restored_rows, run_flags

__all__ = ["SOLVERS", "make_method", "make_solver", "prepare_learn"]

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


def _hypergrad_norm(commentary: AbstractCommentary) -> float:
    # The learner sets every parameter's .grad to its hypergradient before the meta-step
    # and clears it only at the next one, so the callback sees it there.
    grads = [p.grad for p in commentary.phi().values() if p.grad is not None]
    return math.sqrt(sum(float((g.detach() ** 2).sum()) for g in grads))


LEARN_FIELDS = ("step", "val_loss", "hypergrad_norm", "skipped", "seconds")


def prepare_learn(args: argparse.Namespace) -> Work:
    cls = _commentary_class(args.name)
    device = resolve_device(args.device)
    resume_dir = sibling(Path(args.out), ".resume")
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
    log_dir = log_folder(args, sibling(out, ".log"), out)
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
    saved_config = resolved_toml(args, resolved)
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

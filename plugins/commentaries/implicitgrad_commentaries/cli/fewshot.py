"""The few-shot commands of `commentaries`: fewshot-learn, fewshot-evaluate, fewshot-show.

```text
commentaries fewshot-learn --method maml-commentary --dataset glyphs --shots 1 --out runs/fs
commentaries fewshot-evaluate runs/fs --tasks 600
commentaries fewshot-show runs/fs
```

Like the other commands, each checks every argument, path and setting before any work
starts (exit status 2 with one line), and a failure during the work is one line with exit
status 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import implicitgrad as ig

from ..fewshot import METHODS, evaluate, load_fewshot, make_model, meta_train, save_fewshot
from ..learning.checkpoint import atomic_write, versions
from ..learning.device import resolve_device
from .checks import (
    UsageError,
    WorkError,
    integer,
    number,
    writable_dir,
    writable_file,
    writable_folder,
)
from .progress import Progress, add_progress_flag

__all__ = ["add_parsers", "PREPARE_FEWSHOT", "FEWSHOT_DATASETS"]

FEWSHOT_DATASETS = ("digits", "glyphs")
_SOLVERS = ("cg", "gmres", "neumann", "identity", "exact")
Work = Callable[[], None]

# --quick: a smoke run of every code path in seconds (not a result).
_QUICK = {"meta_steps": 2, "meta_batch": 2, "width": 4, "inner_steps": 2, "tasks": 10}


def add_parsers(
    subcommand: Callable[[str, str], argparse.ArgumentParser],
    device_flag: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add the few-shot subcommands through `main.build_parser`'s `subcommand` helper."""
    lp = subcommand("fewshot-learn", "meta-train a few-shot learner (MAML, iMAML, commentaries)")
    lp.add_argument("--method", required=True, choices=tuple(METHODS), help="condition")
    lp.add_argument("--dataset", default="glyphs", choices=FEWSHOT_DATASETS, help="data set")
    lp.add_argument("--out", required=True, help="folder to save the run in")
    lp.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    lp.add_argument("--ways", type=integer(2), default=5, help="classes per task")
    lp.add_argument("--shots", type=integer(1), default=1, help="support examples per class")
    lp.add_argument("--queries", type=integer(1), default=5, help="query examples per class")
    lp.add_argument(
        "--inner-steps", type=integer(1), help="inner steps; default: the method's (5/10/25)"
    )
    lp.add_argument("--inner-lr", type=number(0.0), help="inner step size; default: the method's")
    lp.add_argument("--meta-batch", type=integer(1), default=4, help="tasks per meta-step")
    lp.add_argument("--meta-steps", type=integer(1), default=200, help="Adam steps on θ0 (and φ)")
    lp.add_argument("--meta-lr", type=number(0.0), default=1e-3, help="Adam step on θ0")
    lp.add_argument("--teacher-lr", type=number(0.0), help="Adam step on φ; default: --meta-lr")
    lp.add_argument("--lam", type=number(0.0), default=1.0, help="iMAML: proximal strength λ")
    lp.add_argument("--solver", choices=_SOLVERS, default="cg", help="iMAML: linear solver")
    lp.add_argument("--cg-iters", type=integer(1), default=5, help="iMAML: solver products")
    lp.add_argument(
        "--cg-damping", type=number(0.0, inclusive=True), default=0.0, help="iMAML: CG damping"
    )
    lp.add_argument("--width", type=integer(1), default=32, help="channels per conv block")
    lp.add_argument("--seed", type=integer(0, 2**31 - 1), default=0, help="random seed")
    lp.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    device_flag(lp)
    add_progress_flag(lp)

    ep = subcommand("fewshot-evaluate", "meta-test accuracy (mean ± 95%% CI) of a saved run")
    ep.add_argument("run", help="folder written by `fewshot-learn`")
    ep.add_argument("--tasks", type=integer(1), default=600, help="test tasks")
    ep.add_argument("--shots", type=integer(1), help="default: as learned")
    ep.add_argument("--queries", type=integer(1), default=15, help="query examples per class")
    ep.add_argument("--seed", type=integer(0, 2**31 - 1), default=10_000, help="test task seed")
    ep.add_argument("--out", help="metrics JSON; default: RUN/evaluate.json")
    ep.add_argument("--quick", action="store_true", help="10 tasks")
    device_flag(ep)

    sp = subcommand("fewshot-show", "plot what a saved run's teacher learned")
    sp.add_argument("run", help="folder written by `fewshot-learn`")
    sp.add_argument("--out", help="folder for the PNGs; default: the run folder")
    sp.add_argument("--tasks", type=integer(1), default=4, help="test tasks to show")


def _data(name: str) -> Any:
    from ..datasets.fewshot import load_fewshot_dataset

    return load_fewshot_dataset(name)


def _solver(args: argparse.Namespace) -> ig.AbstractSolver:
    if args.solver == "cg":
        return ig.CG(max_iter=args.cg_iters, tol=0.0, damping=args.cg_damping)
    if args.solver == "gmres":
        return ig.GMRES(max_iter=args.cg_iters, tol=1e-10)
    if args.solver == "neumann":
        return ig.Neumann(terms=args.cg_iters, alpha=1.0 / (1.0 + args.lam))
    return ig.Identity() if args.solver == "identity" else ig.Exact()


def prepare_learn(args: argparse.Namespace) -> Work:
    device = resolve_device(args.device)
    out = writable_folder(args.out, "--out", overwrite=args.overwrite, marker="fewshot.json")
    if args.quick:
        args.meta_steps, args.meta_batch = _QUICK["meta_steps"], _QUICK["meta_batch"]
        args.width, args.inner_steps = _QUICK["width"], _QUICK["inner_steps"]
    data = _data(args.dataset)
    train = data.sampler("train", args.ways, args.shots, args.queries, args.seed)
    if args.method == "fomaml" and args.teacher_lr is not None:
        raise UsageError("--teacher-lr: fomaml has no teacher")
    model = make_model(
        args.method,
        data.input_shape,
        args.ways,
        dataset=args.dataset,
        width=args.width,
        seed=args.seed,
        inner_steps=args.inner_steps,
        inner_lr=args.inner_lr,
        lam=args.lam,
        solver=_solver(args),
    )
    model.to(device)

    def work() -> None:
        bar = Progress(
            args.meta_steps,
            "commentaries fewshot-learn",
            "meta-step",
            quiet=args.quiet,
            every=args.progress_every,
        )

        def tick(step: int, loss: float) -> None:
            bar.update(f"query_loss {loss:.3f}")

        tasks = (t.to(device) for t in train)
        try:
            history = meta_train(
                model,
                tasks,
                meta_steps=args.meta_steps,
                meta_batch=args.meta_batch,
                meta_lr=args.meta_lr,
                teacher_lr=args.teacher_lr,
                callback=tick,
            )
        finally:
            bar.close()
        if history.skipped == args.meta_steps * args.meta_batch and args.meta_steps:
            raise WorkError(
                f"every task's meta-gradient failed ({history.first_error}); raise --lam or "
                "--cg-damping (nothing saved)"
            )
        settings = {k: v for k, v in vars(args).items() if k not in ("quiet", "debug")}
        extra = {"learn": settings, "device": str(device), "history": history.to_json()}
        save_fewshot(model.to("cpu"), out, extra)
        tail = history.accuracies[-10:]
        acc = f"{100 * sum(tail) / len(tail):.1f}%" if tail else "n/a (nothing to meta-train)"
        print(
            f"meta-trained {args.method} on {args.dataset} {args.ways}-way {args.shots}-shot "
            f"on {device} in {history.seconds:.1f}s (query accuracy of the last meta-steps "
            f"{acc}; {history.skipped} tasks skipped); saved to {out}"
        )

    return work


def _learned(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / "fewshot.json").read_text())
    return meta.get("extra", {}).get("learn", {})


def prepare_evaluate(args: argparse.Namespace) -> Work:
    device = resolve_device(args.device)
    model = load_fewshot(args.run, device=device)
    learned = _learned(Path(args.run))
    out = writable_file(args.out or str(Path(args.run) / "evaluate.json"), "--out")
    shots = args.shots or learned.get("shots", 1)
    ways = model.ways
    data = _data(model.dataset)
    n = 10 if args.quick else args.tasks
    sampler = data.sampler("test", ways, shots, args.queries, args.seed)

    def work() -> None:
        tasks = [t.to(device) for t in sampler.tasks(n)]
        acc = evaluate(model, tasks, seed=args.seed)
        print(
            f"{model.method} on {model.dataset} {ways}-way {shots}-shot: meta-test accuracy "
            f"{acc} % (mean ± 95% CI over {acc.n} tasks, {args.queries} queries per class)"
        )
        metrics = {
            "method": model.method,
            "dataset": model.dataset,
            "ways": ways,
            "shots": shots,
            "queries": args.queries,
            "tasks": acc.n,
            "seed": args.seed,
            "mean": acc.mean,
            "ci95": acc.ci95,
            "device": str(device),
            "versions": versions(),
        }
        atomic_write(out, json.dumps(metrics, indent=2))

    return work


def prepare_show(args: argparse.Namespace) -> Work:
    model = load_fewshot(args.run)
    if model.teacher is None:
        raise UsageError(f"{args.run!r} holds a {model.method} run, which has no teacher to show")
    try:
        from ..fewshot.plots import plot_support_weights
    except ImportError as err:  # pragma: no cover - matplotlib is imported lazily inside
        raise UsageError(str(err)) from err
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise UsageError(
            f"`commentaries fewshot-show` needs matplotlib ({err}); install the extra: "
            "pip install 'implicitgrad-commentaries[plots]'"
        ) from err
    out = Path(args.out or args.run)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is an existing file; pass a folder")
    writable_dir(out, "--out")
    learned = _learned(Path(args.run))
    data = _data(model.dataset)
    sampler = data.sampler("test", model.ways, learned.get("shots", 1), 1, 10_000)

    def work() -> None:
        for progress in (0.0, 0.8):
            path = out / f"support-weights-{int(100 * progress)}.png"
            tasks = sampler.tasks(args.tasks)
            print(f"wrote {plot_support_weights(model, tasks, path, progress=progress)}")
            sampler.reset()

    return work


PREPARE_FEWSHOT: dict[str, Callable[[argparse.Namespace], Work]] = {
    "fewshot-learn": prepare_learn,
    "fewshot-evaluate": prepare_evaluate,
    "fewshot-show": prepare_show,
}

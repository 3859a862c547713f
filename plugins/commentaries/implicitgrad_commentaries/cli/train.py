"""`commentaries train`: train fresh students with a saved commentary and compare."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..commentaries.students import make_student
from ..datasets.registry import load_dataset
from ..learning.checkpoint import atomic_write, check_compatible, load_commentary, versions
from ..learning.device import resolve_device
from ..learning.reuse import TrainConfig, compare, format_table, summarize
from .checks import UsageError, writable_file
from .logs import MetricsLog, tensorboard_writer, warn
from .outputs import Work, log_folder, resolved_toml
from .progress import Progress

__all__ = ["prepare_train"]

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
    log_dir = log_folder(args, out.parent, out)
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
    saved_config = resolved_toml(args, {"dataset": dataset, "seeds": list(seeds)})
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

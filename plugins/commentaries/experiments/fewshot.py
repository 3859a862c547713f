"""Few-shot learning with commentaries: every condition of docs/fewshot.md, on two CPU cores.

For digits and glyphs, 5-way 1-shot and 5-way 5-shot, several seeds, meta-trains the seven
conditions (scratch, MAML, FO-MAML, MAML + commentary, MAML + fixed teacher, iMAML,
iMAML + commentary) and measures meta-test accuracy on the same test tasks for all of them
(mean ± 95% CI over the tasks). Prints a Markdown table, writes it with the raw numbers to
`--out`, and draws what the teacher learned (support images sorted by their weight).

    python plugins/commentaries/experiments/fewshot.py [--quick] [--workers 2] [--out DIR]

`--quick` (the CI test) runs tiny sizes through the same code in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from implicitgrad_commentaries.fewshot import METHODS

CONDITIONS = tuple(METHODS)
WAYS = 5
TEST_SEED = 10_000  # every condition and seed is scored on the same test tasks


@dataclass(frozen=True)
class Sizes:
    seeds: int = 3
    test_tasks: int = 600
    meta_steps: int = 50
    meta_batch: int = 4
    meta_lr: float = 3e-3
    teacher_lr: float = 1e-3
    width: int = 8
    queries: int = 5
    inner_steps: int = 5
    inner_lr: float = 0.4
    imaml_steps: int = 5
    imaml_lr: float = 0.4
    lam: float = 1.0
    # H + λI is often indefinite for these small ReLU nets; damping keeps CG defined.
    cg_damping: float = 1.0
    scratch_steps: int = 15
    scratch_lr: float = 0.02


FULL = Sizes()
QUICK = Sizes(
    seeds=1,
    test_tasks=20,
    meta_steps=2,
    meta_batch=2,
    queries=2,
    inner_steps=2,
    imaml_steps=2,
    scratch_steps=3,
)


def _dataset(name: str):
    from implicitgrad_commentaries import load_fewshot_digits
    from implicitgrad_commentaries.datasets.glyphs import make_glyphs

    return load_fewshot_digits() if name == "digits" else make_glyphs()


_CACHE: dict = {}


def run_one(job: tuple) -> dict:
    """Meta-train one condition for one setting and seed, and evaluate it."""
    import torch
    from implicitgrad_commentaries.fewshot import evaluate, make_model, meta_train, save_fewshot

    import implicitgrad as ig

    torch.set_num_threads(1)
    name, shots, seed, method, sizes, keep = job
    if name not in _CACHE:
        _CACHE[name] = _dataset(name)
    data = _CACHE[name]
    imaml = method.startswith("imaml")
    settings = {
        "inner_steps": sizes.scratch_steps
        if method == "scratch"
        else (sizes.imaml_steps if imaml else sizes.inner_steps),
        "inner_lr": sizes.scratch_lr
        if method == "scratch"
        else (sizes.imaml_lr if imaml else sizes.inner_lr),
        "lam": sizes.lam,
        "solver": ig.CG(max_iter=5, tol=0.0, damping=sizes.cg_damping),
    }
    model = make_model(
        method, data.input_shape, WAYS, dataset=name, width=sizes.width, seed=seed, **settings
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    train = data.sampler("train", WAYS, shots, sizes.queries, seed)
    history = meta_train(
        model,
        train,
        meta_steps=sizes.meta_steps,
        meta_batch=sizes.meta_batch,
        meta_lr=sizes.meta_lr,
        teacher_lr=sizes.teacher_lr,
    )
    trained, cpu_trained = time.perf_counter(), time.process_time()
    test = data.sampler("test", WAYS, shots, sizes.queries, TEST_SEED)
    acc = evaluate(model, test.tasks(sizes.test_tasks), seed=seed)
    done, cpu_done = time.perf_counter(), time.process_time()
    if keep:
        save_fewshot(model, keep, {"history": history.to_json()})
    print(
        f"{name} {shots}-shot seed {seed} {method}: {100 * acc.mean:.1f}% "
        f"(cpu {cpu_done - cpu_start:.0f}s, wall {done - start:.0f}s)",
        flush=True,
    )
    return {
        "dataset": name,
        "shots": shots,
        "seed": seed,
        "method": method,
        "mean": acc.mean,
        "ci95": acc.ci95,
        "n": acc.n,
        "skipped": history.skipped,
        "train_s": trained - start,
        "eval_s": done - trained,
        "train_cpu_s": cpu_trained - cpu_start,
        "eval_cpu_s": cpu_done - cpu_trained,
    }


def table(rows: list[dict], sizes: Sizes) -> str:
    settings = sorted({(r["dataset"], r["shots"]) for r in rows})
    head = "| condition | " + " | ".join(f"{d} 5-way {s}-shot" for d, s in settings) + " |"
    lines = [head, "|---" * (len(settings) + 1) + "|"]
    for method in CONDITIONS:
        cells = []
        for d, s in settings:
            mine = [
                r for r in rows if r["method"] == method and (r["dataset"], r["shots"]) == (d, s)
            ]
            if not mine:
                cells.append("")
                continue
            mean = sum(r["mean"] for r in mine) / len(mine)
            ci = sum(r["ci95"] for r in mine) / len(mine)
            spread = max(r["mean"] for r in mine) - min(r["mean"] for r in mine)
            cells.append(f"{100 * mean:.1f} ± {100 * ci:.1f} (seeds ±{50 * spread:.1f})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_teacher(folder: Path, out: Path) -> Path | None:
    """Support images of four test tasks, sorted by the learned teacher's weight."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    from implicitgrad_commentaries.fewshot import load_fewshot
    from implicitgrad_commentaries.fewshot.plots import plot_support_weights

    model = load_fewshot(folder)
    tasks = _dataset(model.dataset).sampler("test", WAYS, 5, 1, TEST_SEED).tasks(4)
    return plot_support_weights(model, tasks, out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    parser.add_argument("--out", default="runs/fewshot", help="folder for results and models")
    parser.add_argument("--plot", help="where to draw the teacher (default: OUT/teacher.png)")
    parser.add_argument("--datasets", default="digits,glyphs")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    datasets = args.datasets.split(",")
    shots_list = (1,) if args.quick else (1, 5)
    teacher_run = out / "models" / "teacher-glyphs-5shot"
    jobs = []
    for name in datasets:
        for shots in shots_list:
            for seed in range(sizes.seeds):
                for method in CONDITIONS:
                    keep = None
                    if (method, shots, seed) == ("maml-commentary", 5 if not args.quick else 1, 0):
                        keep = out / "models" / f"teacher-{name}-{shots}shot"
                    jobs.append((name, shots, seed, method, sizes, keep))
    # The slowest jobs first, so that the two workers finish together.
    jobs.sort(key=lambda j: (not j[3].startswith("imaml"), j[0] != "glyphs", -j[1]))
    start = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(pool.map(run_one, jobs))
    else:
        rows = [run_one(j) for j in jobs]
    wall = time.perf_counter() - start
    md = table(rows, sizes)
    print(md)
    cpu = sum(r["train_cpu_s"] + r["eval_cpu_s"] for r in rows)
    print(
        f"\n{len(rows)} runs in {wall:.0f} s wall on {args.workers} worker(s); the workers' "
        f"CPU time: {cpu:.0f} s (train {sum(r['train_cpu_s'] for r in rows):.0f} s, eval "
        f"{sum(r['eval_cpu_s'] for r in rows):.0f} s), so {cpu / args.workers:.0f} s on "
        f"{args.workers} idle cores; iMAML tasks skipped (CG breakdown): "
        f"{sum(r['skipped'] for r in rows)}"
    )
    plot = None
    if not args.quick and "glyphs" in datasets:
        plot = plot_teacher(teacher_run, Path(args.plot or out / "teacher.png"))
    result = {
        "sizes": sizes.__dict__,
        "rows": rows,
        "table": md,
        "wall_s": wall,
        "cpu_s": cpu,
        "plot": str(plot),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(md + "\n")
    return result


if __name__ == "__main__":
    main()

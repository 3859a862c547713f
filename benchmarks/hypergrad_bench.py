"""Hypergradient benchmark: implicitgrad against TorchOpt and hand-written autograd.

Run from the repository root:

    python benchmarks/hypergrad_bench.py            # full run, rewrites docs/benchmarks.md
    python benchmarks/hypergrad_bench.py --quick    # smaller grids, 10 outer steps, print only

Problems: (1) ridge regression with one L2 weight per feature (closed form), (2) multinomial
logistic regression on digits with one L2 weight per feature (dense solve), (3) data
reweighting of a 64-256-256-10 MLP on digits with one weight per training example (CG to a
1e-10 residual). Every contender computes the same implicit hypergradient at the same
point; they differ in the linear solver, its budget and the implementation.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _contenders as C  # noqa: E402
import _outer  # noqa: E402
import _report  # noqa: E402
from _measure import Result, measure_all  # noqa: E402
from _problems import PROBLEMS, Problem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1e-3


def largest_eigenvalue(problem: Problem, iterations: int = 30) -> float:
    """$\\lambda_{\\max}(H)$ by power iteration, for the Neumann step $\\alpha = 1/\\lambda$."""
    theta = [t.detach().requires_grad_(True) for t in problem.theta]
    with torch.enable_grad():
        grads = torch.autograd.grad(
            problem.inner_loss(tuple(theta), problem.phi), theta, create_graph=True
        )
        gen = torch.Generator().manual_seed(0)
        v = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in theta]
        lam = 0.0
        for _ in range(iterations):
            norm = torch.sqrt(sum((x**2).sum() for x in v))
            v = [x / norm for x in v]
            hv = torch.autograd.grad(grads, theta, v, retain_graph=True)
            lam = float(sum((a * b).sum() for a, b in zip(v, hv)))
            v = list(hv)
    return lam


def sweep(problem: Problem, grid: list[int], repeats: int, memory: bool) -> list[Result]:
    lam = largest_eigenvalue(problem)
    alpha = 1.0 / (1.05 * lam)
    print(f"  lambda_max ~ {lam:.3g}; Neumann alpha = {alpha:.3g}", flush=True)
    contenders = C.build(
        problem, grid, alpha=alpha, rho=problem.curvature_floor, with_exact=problem.n_inner < 2000
    )
    # Peak memory is measured once per family, at its largest setting.
    largest: dict[str, int] = {}
    for i, c in enumerate(contenders):
        if c.setting >= contenders[largest.get(c.family, i)].setting:
            largest[c.family] = i
    memory_for = set(largest.values()) if memory else set()
    results = measure_all(contenders, problem, repeats, memory_for)
    for r in results:
        print(
            f"  {r.family + f' ({r.setting})':28s} err={r.error:9.2e}  t={r.seconds * 1e3:9.2f} ms"
            f"  cpu={r.cpu_seconds * 1e3:9.2f} ms"
            + (f"  peak={r.peak_mb:8.2f} MB" if r.peak_mb is not None else ""),
            flush=True,
        )
    return results


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} logical cores, torch threads = {torch.get_num_threads()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchopt": C.torchopt_available() or "not installed",
        "load": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller grids and fewer repeats")
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--no-outer", action="store_true", help="skip the outer-loop run")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory profiling")
    parser.add_argument("--outer-steps", type=int, default=None, help="50 (10 with --quick)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Markdown to update (default docs/benchmarks.md; a --quick run writes only here)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # TorchOpt 0.7 calls functorch.vjp, deprecated in torch 2.x; the warning is not ours.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torchopt")
    start = time.perf_counter()
    repeats = 3 if args.quick else 5
    # The MLP problem dominates the run time; three interleaved rounds keep it in budget.
    repeats_for = {"reweighting": 3}
    grids = {
        "ridge": [5, 10, 20, 40, 80],
        "logistic": [5, 10, 20, 30, 40, 80, 160],
        "reweighting": [10, 20, 40, 60, 80],
    }
    if args.quick:
        grids = {k: v[1::2] for k, v in grids.items()}  # e.g. 10, 40 (and 80)
        repeats_for = {}
    results: dict[str, list[Result]] = {}
    problems: dict[str, Problem] = {}
    for key in args.problems:
        t0 = time.perf_counter()
        problem = PROBLEMS[key]()
        problems[key] = problem
        print(
            f"{problem.name}: {problem.n_inner} inner / {problem.phi.numel()} outer parameters, "
            f"reference by {problem.reference_kind} ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        results[key] = sweep(
            problem, grids[key], repeats_for.get(key, repeats), memory=not args.no_memory
        )
    outer = None
    if "reweighting" in problems and not args.no_outer:
        outer = _outer.run(problems["reweighting"], args.outer_steps or (10 if args.quick else 50))
    info = machine()
    info["total"] = f"{time.perf_counter() - start:.0f} s"
    info["mode"] = "quick" if args.quick else "full"
    steps = args.outer_steps or (10 if args.quick else 50)
    markdown = _report.render(problems, results, outer, info, TARGET, steps)
    print(markdown)
    if args.out is None and not args.quick:
        args.out = ROOT / "docs" / "benchmarks.md"
    if args.out is not None and not args.no_write:
        _report.write(args.out, markdown)
        _report.plots(problems, results, ROOT / "docs" / "img", TARGET)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The GPU run: equal work, time to accuracy and a commentary learning run, on CUDA.

Run from the repository root on a machine with a CUDA device:

    python benchmarks/gpu_run.py            # full run, a few minutes
    python benchmarks/gpu_run.py --quick    # small sizes (< 30 s on a CPU; the CI test)

Without CUDA it says so and runs the same measurements on the CPU (use `--quick` there), so
that the script is known to work before a GPU machine is at hand. Three parts:

1. **Equal work**: multinomial logistic regression (random data, 100 classes; the problem
   of `core_overhead.py`) with about 1M and 4M inner parameters in float32, 20 CG
   iterations: `ig.hypergrad` against hand-written autograd CG and TorchOpt's `custom_root`
   with `solve_cg`. Ratio: ig / contender, the median over rounds of the ratio within a
   round.
2. **Time to accuracy**: the same problem at 100k parameters in float64 against a
   reference from CG to a 1e-10 residual; per family (ig CG, ig CG with a Nyström
   preconditioner, hand-written CG, TorchOpt CG) the least time of the settings whose
   relative hypergradient error is at most 1e-3, and the ratios.
3. **Commentary learning**: `commentaries learn blending --device cuda` (cpu without
   CUDA) for a few meta-steps, wall time.

Timing: wall time with `torch.cuda.synchronize()` around each call on CUDA, CPU time of the
thread on a CPU; one warm-up call each, then interleaved rounds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _contenders as C  # noqa: E402
from core_overhead import logistic_problem  # noqa: E402

import implicitgrad as ig  # noqa: E402

TARGET = 1e-3


def device_and_note() -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        return torch.device("cuda"), f"CUDA device: {torch.cuda.get_device_name(0)}"
    return torch.device("cpu"), (
        "CUDA not available: running on the CPU instead (the numbers below are CPU numbers, "
        "not GPU numbers)."
    )


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def measure(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return time.perf_counter() - start
        start = time.thread_time()
        fn()
        return time.thread_time() - start

    return measure


def rounds(calls: dict[str, Callable[[], object]], repeats: int, device) -> dict[str, list[float]]:
    measure = timer(device)
    for fn in calls.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            out[name].append(measure(fn))
    return out


def within_round_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def _call(fn: C.HypergradFn, problem) -> Callable[[], torch.Tensor]:
    return lambda: fn(problem, problem.theta, problem.phi, None)[0]


def equal_work(device, sizes: list[int], repeats: int, iterations: int = 20) -> list[str]:
    lines = [
        f"| parameters | ig CG-{iterations} ms | hand-written ms | TorchOpt ms | "
        "ig / hand-written | ig / TorchOpt |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        problem = logistic_problem(n, device=device, dtype=torch.float32)
        calls = {
            "ig": _call(C.implicitgrad_fn(ig.CG(max_iter=iterations, tol=0.0)), problem),
            "hand": _call(C.handwritten_cg_fn(iterations), problem),
        }
        if C.torchopt_available():
            # TorchOpt's CG spends one product on b - A x0: one iteration less, equal work.
            calls["torchopt"] = _call(C.torchopt_fn("cg", iterations - 1), problem)
        hg = {k: fn() for k, fn in calls.items()}
        diff = float((hg["ig"] - hg["hand"]).norm() / hg["hand"].norm())
        assert diff < 1e-3, f"ig and hand-written CG disagree at {n} parameters: {diff:.2e}"
        t = rounds(calls, repeats, device)
        to = t.get("torchopt")
        lines.append(
            f"| {problem.n_inner:,} | {1e3 * statistics.median(t['ig']):.2f} | "
            f"{1e3 * statistics.median(t['hand']):.2f} | "
            + (f"{1e3 * statistics.median(to):.2f}" if to else "–")
            + f" | {within_round_ratio(t['ig'], t['hand']):.3f} | "
            + (f"{within_round_ratio(t['ig'], to):.3f}" if to else "–")
            + " |"
        )
    return lines


def time_to_accuracy(device, n: int, grid: list[int], repeats: int) -> list[str]:
    problem = logistic_problem(n, device=device, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ig.ConvergenceWarning)
        reference = ig.hypergrad(
            problem.inner_loss,
            problem.outer_loss,
            problem.theta,
            problem.phi,
            ig.CG(max_iter=5000, tol=1e-10),
            stationarity_tol=None,
        )
    families: dict[str, dict[int, C.HypergradFn]] = {
        "ig CG": {k: C.implicitgrad_fn(ig.CG(max_iter=k, tol=0.0)) for k in grid},
        "ig CG + Nystrom(20)": {
            k: C.implicitgrad_fn(
                ig.CG(max_iter=k, tol=0.0, preconditioner=ig.NystromPreconditioner(rank=20))
            )
            for k in grid
        },
        "hand-written CG": {k: C.handwritten_cg_fn(k) for k in grid},
    }
    if C.torchopt_available():
        families["TorchOpt CG"] = {k: C.torchopt_fn("cg", k) for k in grid}
    best: dict[str, tuple[float, int, float] | None] = {}
    for family, settings in families.items():
        ok = {}
        for k, fn in settings.items():
            hg = fn(problem, problem.theta, problem.phi, None)[0]
            err = float((hg - reference).norm() / reference.norm())
            if err <= TARGET:
                ok[k] = (fn, err)
        if not ok:
            best[family] = None
            continue
        t = rounds({str(k): _call(fn, problem) for k, (fn, _) in ok.items()}, repeats, device)
        k_best = min(ok, key=lambda k: statistics.median(t[str(k)]))
        best[family] = (statistics.median(t[str(k_best)]), k_best, ok[k_best][1])
    mine = [b for f, b in best.items() if f.startswith("ig") and b is not None]
    ours = min(mine, key=lambda b: b[0]) if mine else None
    lines = [
        f"Time to a relative hypergradient error of {TARGET:g}, {problem.n_inner:,} "
        "parameters (float64):",
        "",
        "| family | best setting | error | ms | ig best / it |",
        "|---|---:|---:|---:|---:|",
    ]
    for family, b in best.items():
        if b is None:
            lines.append(f"| {family} | not reached on the grid | | | |")
            continue
        ratio = f"{ours[0] / b[0]:.3f}" if ours else "–"
        lines.append(f"| {family} | {b[1]} | {b[2]:.1e} | {1e3 * b[0]:.2f} | {ratio} |")
    return lines


def commentary_run(device, steps: int) -> list[str]:
    exe = shutil.which("commentaries")
    if exe is None:
        return ["commentaries: the plugin's command is not installed; skipped."]
    out = Path(tempfile.mkdtemp(prefix="gpu_run_"))
    cmd = [
        exe, "learn", "blending", "--out", str(out / "c"), "--quiet",
        "--steps", str(steps), "--device", device.type,
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        return [f"commentaries learn failed ({proc.returncode}): {proc.stderr[-500:]}"]
    return [
        f"commentaries learn blending --device {device.type} --steps {steps}: {wall:.1f} s wall"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torchopt")
    device, note = device_and_note()
    print(note, flush=True)
    start = time.perf_counter()
    if args.quick:
        sizes, n_tta, grid, repeats, steps = [10_000], 10_000, [10, 20, 40], 3, 2
    else:
        sizes, n_tta, grid, repeats, steps = (
            [1_000_000, 4_000_000],
            100_000,
            [10, 20, 40, 80, 160],
            7,
            50,
        )
    print("\n## Equal work\n", flush=True)
    print("\n".join(equal_work(device, sizes, repeats)), flush=True)
    print("\n## Time to accuracy\n", flush=True)
    print("\n".join(time_to_accuracy(device, n_tta, grid, repeats)), flush=True)
    print("\n## Commentary learning\n", flush=True)
    print("\n".join(commentary_run(device, steps)), flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s on {device.type}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One `ig.unroll` meta-step against TorchOpt's MetaSGD/MetaAdam and `higher`, SGD and Adam.

The task of `unroll_vs_higher.py` with 50 inner steps: a 64-64-10 MLP student trained on
digits mini-batches of 64, each example's loss weighted by a teacher MLP; one meta-step
unrolls the steps, evaluates the held-out cross-entropy and backpropagates it to the
teacher. SGD runs with lr 0.1 and momentum 0.9, Adam with lr 1e-2. Every contender builds
its own differentiable student from the same initial weights inside the timed call.

Timing: CPU time of the calling thread (one torch thread), after one warm-up call each;
every round calls every contender once, in turn, so that load from other processes spreads
over all of them. Reported: the median over rounds, and the ratio of `ig.unroll` to each
contender as the median over rounds of the ratio within a round. Peak tensor memory (the
live bytes of tensor storages, deterministic) is measured once per contender.

    python benchmarks/unroll_overhead.py            # 15 rounds, about a minute
    python benchmarks/unroll_overhead.py --quick    # 3 rounds, 10 steps
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _memory import MiB, PeakTensorMemory  # noqa: E402
from unroll_vs_higher import N_TRAIN, Task  # noqa: E402

import implicitgrad as ig  # noqa: E402

SGD_LR, MOMENTUM, ADAM_LR = 0.1, 0.9, 1e-2


def _ig(task: Task, kind: str) -> torch.Tensor:
    fn, params = ig.make_functional(task.student, detach=True)
    teacher_fn, teacher_params = ig.make_functional(task.teacher)

    def train_loss(theta, phi, idx, step):
        x = task.X[idx]
        return task.weighted_loss(fn(theta, x), idx, teacher_fn(phi, x))

    opt = ig.SGD(lr=SGD_LR, momentum=MOMENTUM) if kind == "sgd" else ig.Adam(lr=ADAM_LR)
    theta = ig.unroll(train_loss, params, teacher_params, task.batches, opt)
    loss = task.val_loss(fn(theta, task.X[N_TRAIN:]))
    return torch.autograd.grad(loss, list(task.teacher.parameters()))


def _torchopt(task: Task, kind: str) -> torch.Tensor:
    import torchopt

    net = copy.deepcopy(task.student)
    if kind == "sgd":
        opt = torchopt.MetaSGD(net, lr=SGD_LR, momentum=MOMENTUM)
    else:
        # eps_root > 0: TorchOpt differentiates sqrt(v) at v = 0 (dead ReLU units) to NaN.
        opt = torchopt.MetaAdam(net, lr=ADAM_LR, eps_root=1e-12)
    for idx in task.batches:
        x = task.X[idx]
        opt.step(task.weighted_loss(net(x), idx, task.teacher(x)))
    loss = task.val_loss(net(task.X[N_TRAIN:]))
    return torch.autograd.grad(loss, list(task.teacher.parameters()))


def _higher(task: Task, kind: str) -> torch.Tensor:
    import higher

    if kind == "sgd":
        opt = torch.optim.SGD(task.student.parameters(), lr=SGD_LR, momentum=MOMENTUM)
    else:
        opt = torch.optim.Adam(task.student.parameters(), lr=ADAM_LR)
    with higher.innerloop_ctx(task.student, opt, copy_initial_weights=True) as (fmodel, diffopt):
        for idx in task.batches:
            x = task.X[idx]
            diffopt.step(task.weighted_loss(fmodel(x), idx, task.teacher(x)))
        loss = task.val_loss(fmodel(task.X[N_TRAIN:]))
        return torch.autograd.grad(loss, list(task.teacher.parameters()))


def available() -> dict[str, Callable[[Task, str], torch.Tensor]]:
    out: dict[str, Callable[[Task, str], torch.Tensor]] = {"ig.unroll": _ig}
    for name, module, fn in (
        ("TorchOpt Meta*", "torchopt", _torchopt),
        ("higher", "higher", _higher),
    ):
        try:
            __import__(module)
        except Exception:  # noqa: BLE001 - a missing optional contender is skipped
            continue
        out[name] = fn
    return out


def run(steps: int, rounds: int, kinds: tuple[str, ...] = ("sgd", "adam")) -> list[dict]:
    """Rows of (optimizer, contender, median CPU ms, ratio ig/contender, peak MiB)."""
    torch.set_num_threads(1)
    contenders = available()
    rows = []
    for kind in kinds:
        task = Task(seed=0, steps=steps)
        reference = contenders["ig.unroll"](task, kind)
        for name, fn in contenders.items():
            got = fn(task, kind)
            a, b = (
                torch.cat([g.reshape(-1) for g in got]),
                torch.cat([g.reshape(-1) for g in reference]),
            )
            diff = float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
            # higher's Adam adds eps before the bias correction, TorchOpt's needs eps_root:
            # their Adam hypergradients differ (see unroll_vs_higher.py), so only SGD is
            # compared closely.
            tol = 1e-4 if kind == "sgd" else 1.0
            assert diff <= tol, f"{name} ({kind}) disagrees with ig.unroll: {diff:.2e} relative"
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, fn in contenders.items():
                start = time.thread_time()
                fn(task, kind)
                cpu[name].append(time.thread_time() - start)
        for name, fn in contenders.items():
            with PeakTensorMemory() as mem:
                fn(task, kind)
            ratio = statistics.median(a / b for a, b in zip(cpu["ig.unroll"], cpu[name]))
            rows.append(
                {
                    "optimizer": "SGD (momentum 0.9)" if kind == "sgd" else "Adam",
                    "contender": name,
                    "ms": 1e3 * statistics.median(cpu[name]),
                    "per_step_us": 1e6 * statistics.median(cpu[name]) / steps,
                    "ratio": ratio,
                    "peak_mib": mem.peak / MiB,
                }
            )
    return rows


def render(rows: list[dict], steps: int, rounds: int) -> str:
    lines = [
        f"One meta-step of {steps} inner steps, median CPU time over {rounds} interleaved "
        "rounds (one thread); ratio: median over rounds of ig.unroll / contender.",
        "",
        "| optimizer | contender | CPU ms / meta-step | µs / inner step | ig.unroll / it | "
        "peak tensor MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {r['contender']} | {r['ms']:.1f} | {r['per_step_us']:.0f} | "
            f"{r['ratio']:.3f} | {r['peak_mib']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    steps = args.steps or (10 if args.quick else 50)
    rounds = args.rounds or (3 if args.quick else 15)
    print(render(run(steps, rounds), steps, rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One second-order MAML meta-step: implicitgrad against `higher`, TorchOpt and plain autograd.

Same model, same task batch for everyone: the few-shot conv net
(`implicitgrad_commentaries.fewshot.FewShotNet`, 4 blocks of `--width` channels) on
5-way 1-shot tasks of 16×16 images (5 queries per class), a meta-batch of 4 tasks, 5 inner
SGD steps (lr 0.4), second order; the meta-step is the mean query loss's backward pass to
θ0 (the optimizer step on θ0 is left out: it is the same for all).

Contenders:

- `ig MAML (loop)`: `MAML().query_loss` task by task (`ig.minimize` + `ig.UnrollAdjoint`).
- `ig MAML (TaskBatch)`: the meta-batch stacked into one problem (`torch.func.vmap` over the
  network); the same meta-gradient.
- `higher`: `higher.innerloop_ctx` with `torch.optim.SGD`, task by task.
- `torchopt`: `torchopt.MetaSGD` with `extract_state_dict`/`recover_state_dict`, task by
  task (TorchOpt's MAML example).
- `autograd`: a hand-written loop of `torch.autograd.grad(create_graph=True)` (reference).

Rounds are interleaved (every contender once per round, in a rotated order) and each
contender's CPU time is divided by `ig MAML (loop)`'s of the same round; the table shows
the median ratio and the median CPU time per meta-step. Peak memory is the peak of live
tensor storage during one meta-step (deterministic, `_memory.PeakTensorMemory`). Every
contender's meta-gradient is compared with the reference's.

    python benchmarks/fewshot_metastep.py [--rounds 7] [--width 32] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _memory import MiB, PeakTensorMemory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins" / "commentaries"))
from implicitgrad_commentaries.fewshot import MAML, FewShotNet, TaskBatch  # noqa: E402

import implicitgrad as ig  # noqa: E402

WAYS, SHOTS, QUERIES, SIZE, META_BATCH, STEPS, LR = 5, 1, 5, 16, 4, 5, 0.4


def make_tasks(seed: int = 0) -> list:
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    return [
        SimpleNamespace(
            support_x=torch.rand(WAYS * SHOTS, 1, SIZE, SIZE, generator=gen),
            support_y=labels.repeat_interleave(SHOTS),
            query_x=torch.rand(WAYS * QUERIES, 1, SIZE, SIZE, generator=gen),
            query_y=labels.repeat_interleave(QUERIES),
        )
        for _ in range(META_BATCH)
    ]


def contenders(net: FewShotNet, tasks: list) -> dict[str, Callable[[], list[torch.Tensor]]]:
    params = list(net.parameters())
    fn, theta0 = ig.make_functional(net)
    maml = MAML(inner_steps=STEPS, inner_lr=LR)

    def grads() -> list[torch.Tensor]:
        out = [p.grad.detach().clone() for p in params]
        net.zero_grad(set_to_none=True)
        return out

    def ig_loop():
        for task in tasks:
            (maml.query_loss(fn, theta0, task) / META_BATCH).backward()
        return grads()

    batch = TaskBatch.stack(tasks)

    def ig_batch():
        maml.query_loss(fn, theta0, batch).backward()
        return grads()

    def autograd():
        for task in tasks:
            theta = dict(theta0)
            for _ in range(STEPS):
                loss = F.cross_entropy(fn(theta, task.support_x), task.support_y)
                g = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
                theta = {k: v - LR * gk for (k, v), gk in zip(theta.items(), g)}
            (F.cross_entropy(fn(theta, task.query_x), task.query_y) / META_BATCH).backward()
        return grads()

    out = {"ig MAML (loop)": ig_loop, "ig MAML (TaskBatch)": ig_batch, "autograd": autograd}
    try:
        import higher

        inner_opt = torch.optim.SGD(net.parameters(), lr=LR)

        def with_higher():
            for task in tasks:
                with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fm, do):
                    for _ in range(STEPS):
                        do.step(F.cross_entropy(fm(task.support_x), task.support_y))
                    (F.cross_entropy(fm(task.query_x), task.query_y) / META_BATCH).backward()
            return grads()

        out["higher"] = with_higher
    except ImportError:
        print("higher is not installed; skipped")
    try:
        import torchopt

        def with_torchopt():
            state = torchopt.extract_state_dict(net)
            opt = torchopt.MetaSGD(net, lr=LR)
            for task in tasks:
                for _ in range(STEPS):
                    opt.step(F.cross_entropy(net(task.support_x), task.support_y))
                (F.cross_entropy(net(task.query_x), task.query_y) / META_BATCH).backward()
                torchopt.recover_state_dict(net, state)
            return grads()

        out["torchopt"] = with_torchopt
    except ImportError:
        print("torchopt is not installed; skipped")
    return out


def peak_mib(run: Callable[[], list[torch.Tensor]]) -> float:
    with PeakTensorMemory() as mem:
        run()
    return mem.peak / MiB


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="2 rounds, width 8 (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.width = 2, 8
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = FewShotNet((1, SIZE, SIZE), WAYS, width=args.width)
    tasks = make_tasks()
    runs = contenders(net, tasks)
    reference = runs["autograd"]()
    agreement = {}
    for name, run in runs.items():
        g = run()  # also the warm-up
        num = sum(float((a - b).pow(2).sum()) for a, b in zip(g, reference)) ** 0.5
        den = sum(float(b.pow(2).sum()) for b in reference) ** 0.5
        agreement[name] = num / den
    names = list(runs)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        this = {}
        for name in order:
            start = time.process_time()
            runs[name]()
            this[name] = time.process_time() - start
        for name in names:
            cpu[name].append(this[name])
            ratios[name].append(this[name] / this["ig MAML (loop)"])
    memory = {name: peak_mib(run) for name, run in runs.items()}
    lines = [
        f"one second-order MAML meta-step: width {args.width}, {WAYS}-way {SHOTS}-shot "
        f"{SIZE}x{SIZE}, {QUERIES} queries, meta-batch {META_BATCH}, {STEPS} inner SGD steps; "
        f"{args.rounds} interleaved rounds, 1 thread, torch {torch.__version__}",
        "",
        "| contender | CPU ms / meta-step (median) | ratio to ig loop (median [min, max]) "
        "| peak tensor MiB | meta-gradient rel. diff. vs autograd |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        rs = ratios[name]
        lines.append(
            f"| {name} | {1e3 * statistics.median(cpu[name]):.0f} | "
            f"{statistics.median(rs):.2f} [{min(rs):.2f}, {max(rs):.2f}] | "
            f"{memory[name]:.1f} | {agreement[name]:.1e} |"
        )
    print("\n".join(lines))
    return {"cpu": cpu, "ratios": ratios, "memory": memory, "agreement": agreement}


if __name__ == "__main__":
    main()

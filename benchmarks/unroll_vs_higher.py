"""`ig.unroll` against `higher` (and TorchOpt's functional API) on one meta-learning task.

Task: an MLP student (64-64-10) trains for 100 Adam steps (lr 1e-2, mini-batches of 64) on
scikit-learn's digits, each example's loss weighted by $\\sigma(t(x))$ for a teacher MLP
$t$ (64-32-1). One meta-step unrolls the 100 steps, evaluates the student's cross-entropy
on 597 held-out digits and backpropagates it to the teacher's parameters.

Every method runs in a fresh process with one thread. Columns:

- CPU s / meta-step: the best of 5 meta-steps (after a warm-up) of the process's CPU time,
  which a busy machine disturbs less than wall time.
- peak tensor MiB: the peak of live tensor storage during a meta-step (deterministic).
- peak RSS MiB: growth of the process's peak resident set size during the meta-steps.
- max abs(θ_N - torch.optim): how far the student trained by each method ends from the same
  100 steps of `torch.optim.Adam` with the teacher's weights held fixed (float32).
- hypergradient rel. diff.: $\\lVert g - g_\\text{unroll}\\rVert / \\lVert g_\\text{unroll}\\rVert$
  for the teacher's hypergradient $g$.

`higher`'s `DifferentiableAdam` adds $\\epsilon$ to $\\sqrt{v_t}$ before the bias correction
(step size $\\eta\\sqrt{1-\\beta_2^t}/(1-\\beta_1^t)$), where `torch.optim.Adam` adds it
after, so it trains a slightly different student and its hypergradient differs (central
finite differences in float64 agree with each library's own forward pass). TorchOpt's `adam`
differentiates $\\sqrt{v}$ at $v = 0$ (dead ReLU units), which gives NaN unless
`eps_root > 0`.

Run from the repository root: `python benchmarks/unroll_vs_higher.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _memory import MiB, PeakTensorMemory, current_rss, peak_rss, run_child
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import implicitgrad as ig  # noqa: E402

N_TRAIN, BATCH, STEPS, LR = 1200, 64, 100, 1e-2
METHODS = ["higher", "torchopt", "ig.unroll", "ig.unroll(checkpoint=True)"]


class Task:
    """Data, a fresh student and teacher (seeded), and the inner and outer losses."""

    def __init__(self, seed: int = 0, steps: int = STEPS) -> None:
        X, y = load_digits(return_X_y=True)
        self.X, self.y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
        torch.manual_seed(seed)
        self.student = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.teacher = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 1))
        gen = torch.Generator().manual_seed(seed)
        self.batches = [torch.randint(0, N_TRAIN, (BATCH,), generator=gen) for _ in range(steps)]

    def weighted_loss(self, logits: torch.Tensor, idx: torch.Tensor, weight_logits) -> torch.Tensor:
        losses = F.cross_entropy(logits, self.y[idx], reduction="none")
        return (torch.sigmoid(weight_logits.squeeze(-1)) * losses).mean()

    def val_loss(self, logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, self.y[N_TRAIN:])

    def teacher_grad(self) -> torch.Tensor:
        return torch.cat([p.grad.reshape(-1) for p in self.teacher.parameters()])


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def train_torch_optim(task: Task) -> torch.Tensor:
    """Plain training with torch.optim.Adam and fixed teacher weights: the reference θ_N."""
    opt = torch.optim.Adam(task.student.parameters(), lr=LR)
    for idx in task.batches:
        x = task.X[idx]
        opt.zero_grad()
        with torch.no_grad():
            weight_logits = task.teacher(x)
        task.weighted_loss(task.student(x), idx, weight_logits).backward()
        opt.step()
    return flat(task.student.parameters())


def meta_step_higher(task: Task) -> torch.Tensor:
    import higher

    opt = torch.optim.Adam(task.student.parameters(), lr=LR)
    with higher.innerloop_ctx(task.student, opt, copy_initial_weights=True) as (fmodel, diffopt):
        for idx in task.batches:
            x = task.X[idx]
            diffopt.step(task.weighted_loss(fmodel(x), idx, task.teacher(x)))
        task.val_loss(fmodel(task.X[N_TRAIN:])).backward()
        return flat(fmodel.parameters())


def meta_step_torchopt(task: Task) -> torch.Tensor:
    import torchopt

    names = [n for n, _ in task.student.named_parameters()]
    params = tuple(p.detach().requires_grad_() for p in task.student.parameters())
    opt = torchopt.adam(lr=LR, moment_requires_grad=True)
    state = opt.init(params)
    for idx in task.batches:
        x = task.X[idx]
        logits = functional_call(task.student, dict(zip(names, params)), (x,))
        loss = task.weighted_loss(logits, idx, task.teacher(x))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        updates, state = opt.update(grads, state, inplace=False)
        params = torchopt.apply_updates(params, updates, inplace=False)
    logits = functional_call(task.student, dict(zip(names, params)), (task.X[N_TRAIN:],))
    task.val_loss(logits).backward()
    return flat(params)


def meta_step_unroll(task: Task, checkpoint: bool) -> torch.Tensor:
    fn, params = ig.make_functional(task.student, detach=True)
    teacher_fn, teacher_params = ig.make_functional(task.teacher)

    def train_loss(theta, phi, idx, step):
        x = task.X[idx]
        return task.weighted_loss(fn(theta, x), idx, teacher_fn(phi, x))

    theta = ig.unroll(
        train_loss, params, teacher_params, task.batches, ig.Adam(lr=LR), checkpoint=checkpoint
    )
    task.val_loss(fn(theta, task.X[N_TRAIN:])).backward()
    return flat(theta.values())


RUNNERS: dict[str, Callable[[Task], torch.Tensor]] = {
    "higher": meta_step_higher,
    "torchopt": meta_step_torchopt,
    "ig.unroll": lambda task: meta_step_unroll(task, checkpoint=False),
    "ig.unroll(checkpoint=True)": lambda task: meta_step_unroll(task, checkpoint=True),
}


def child(method: str, repeats: int) -> dict:
    torch.set_num_threads(1)
    run = RUNNERS[method]
    try:
        run(Task(steps=5))  # warm-up: imports and lazy initialization, on a short unroll
    except ImportError as err:
        return dict(method=method, error=f"not importable: {err}")
    before = current_rss()
    seconds = []
    for _ in range(repeats):
        task = Task()
        start = time.process_time()
        run(task)
        seconds.append(time.process_time() - start)
    rss = peak_rss() - before
    task = Task()
    with PeakTensorMemory() as memory:
        theta = run(task)
    return dict(
        method=method,
        seconds=min(seconds),
        peak=memory.peak,
        rss=rss,
        grad=task.teacher_grad().tolist(),
        theta=theta.tolist(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "REPEATS"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    print(f"torch {torch.__version__}, 1 thread per process, float32, CPU\n")
    results = [run_child(__file__, method, str(args.repeats)) for method in METHODS]
    reference = next(r for r in results if r["method"] == "ig.unroll")
    theta_ref = train_torch_optim(Task())
    print(
        "| method | CPU s / meta-step | peak tensor MiB | peak RSS MiB "
        "| max abs(θ_N - torch.optim) | hypergradient rel. diff. vs ig.unroll |"
    )
    print("|:---|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['method']} | {r['error']} | | | | |")
            continue
        g, g_ref = torch.tensor(r["grad"]), torch.tensor(reference["grad"])
        theta_err = float((torch.tensor(r["theta"]) - theta_ref).abs().max())
        grad_err = float((g - g_ref).norm() / g_ref.norm())
        print(
            f"| {r['method']} | {r['seconds']:.2f} | {r['peak'] / MiB:.1f} | "
            f"{r['rss'] / MiB:.0f} | {theta_err:.1e} | {grad_err:.1e} |"
        )


if __name__ == "__main__":
    main()

"""Memory of `ig.unroll` against the number of unrolled steps, with and without checkpointing.

An MLP student (64-128-10) trains with Adam on scikit-learn's digits, mini-batches of 128,
with one learned weight per training example; one meta-step unrolls N steps and
backpropagates a validation loss to the weights. Each configuration runs in a fresh process.

Columns:

- peak tensor MiB: the peak of live tensor storage during the meta-step (deterministic).
- kept after forward: tensor storage alive between the unroll and the backward pass, i.e.
  what the unrolled graph holds.
- saved tensors: bytes of the distinct storages autograd saved for the backward pass,
  counted with `torch.autograd.graph.saved_tensors_hooks` (without checkpointing only:
  checkpointed segments save through their own hooks and drop the tensors).
- peak RSS: growth of the process's peak resident set size during the meta-step. It exceeds
  the tensor bytes by the autograd graph's own objects (kept by checkpointing too, about 80
  nodes a step here) and by glibc's heap fragmentation: with `MALLOC_MMAP_THRESHOLD_=16384`
  the checkpointed N = 256 run peaks at about half the RSS.
- CPU s: the process's CPU time for the meta-step, with one thread (a busy machine disturbs
  it less than wall time).

Run from the repository root: `python benchmarks/unroll_memory.py [--steps 16 64 256]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _memory import MiB, PeakTensorMemory, current_rss, peak_rss, run_child
from sklearn.datasets import load_digits
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import implicitgrad as ig  # noqa: E402

N_TRAIN, BATCH = 1200, 128


def problem(steps: int, seed: int = 0):
    """Data, student, per-example weight logits and the index batches of one meta-step."""
    torch.manual_seed(seed)
    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    student = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    fn, params = ig.make_functional(student, detach=True)
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, N_TRAIN, (BATCH,), generator=gen) for _ in range(steps)]
    return X, y, fn, params, batches


def meta_step(
    steps: int, checkpoint: bool, memory: PeakTensorMemory | None = None
) -> tuple[int, int | None]:
    """One meta-step; returns the tensor bytes alive after the unroll and the segment length."""
    X, y, fn, params, batches = problem(steps)
    phi = torch.zeros(N_TRAIN, requires_grad=True)

    def train_loss(theta, phi, idx, step):
        losses = F.cross_entropy(fn(theta, X[idx]), y[idx], reduction="none")
        return (torch.sigmoid(phi[idx]) * losses).mean()

    theta, info = ig.unroll(
        train_loss, params, phi, batches, ig.Adam(lr=1e-3), checkpoint=checkpoint, return_info=True
    )
    kept = memory.live if memory is not None else 0
    F.cross_entropy(fn(theta, X[N_TRAIN:]), y[N_TRAIN:]).backward()
    return kept, info.segment_length


def saved_tensor_bytes(steps: int) -> int:
    """Distinct storages autograd saves during a plain (not checkpointed) unroll."""
    seen: dict[int, torch.UntypedStorage] = {}  # holding them keeps their ids unique

    def pack(x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        seen[id(storage)] = storage
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        meta_step(steps, checkpoint=False)
    return sum(s.nbytes() for s in seen.values())


def child(steps: int, checkpoint: bool) -> dict:
    torch.set_num_threads(1)
    meta_step(2, checkpoint)  # warm-up: data, imports and lazy initialization
    before = current_rss()
    start = time.process_time()
    meta_step(steps, checkpoint)
    seconds = time.process_time() - start
    rss = peak_rss() - before
    with PeakTensorMemory() as memory:
        kept, segment = meta_step(steps, checkpoint, memory)
    saved = None if checkpoint else saved_tensor_bytes(steps)
    return dict(
        steps=steps,
        checkpoint=checkpoint,
        segment=segment,
        peak=memory.peak,
        kept=kept,
        saved=saved,
        rss=rss,
        seconds=seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--child", nargs=2, metavar=("STEPS", "CHECKPOINT"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1] == "1")))
        return
    print(f"torch {torch.__version__}, 1 thread per process, float32, CPU\n")
    print(
        "| steps N | checkpoint | peak tensor MiB | kept after forward MiB | saved tensors MiB "
        "| peak RSS MiB | CPU s |"
    )
    print("|---:|:---|---:|---:|---:|---:|---:|")
    for steps in args.steps:
        for checkpoint in (False, True):
            r = run_child(__file__, str(steps), "1" if checkpoint else "0")
            mode = f"segments of {r['segment']}" if checkpoint else "no"
            saved = "n/a" if r["saved"] is None else f"{r['saved'] / MiB:.1f}"
            print(
                f"| {steps} | {mode} | {r['peak'] / MiB:.1f} | {r['kept'] / MiB:.1f} | {saved} "
                f"| {r['rss'] / MiB:.0f} | {r['seconds']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

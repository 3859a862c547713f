"""Data-parallel hypergradients: the cost of one CG-20 hypergradient at ~100k inner
parameters in 1 and W processes, and the communication time per product.

CPU, on this machine (the script starts the processes itself, gloo on 127.0.0.1):

    python benchmarks/distributed_bench.py                 # 1 and 2 processes
    python benchmarks/distributed_bench.py --quick         # fewer repeats

Several GPUs (NCCL), one process per GPU:

    torchrun --nproc_per_node=8 --master_addr=127.0.0.1 --master_port=29500 \\
        benchmarks/distributed_bench.py --device cuda

The problem is data reweighting of a 64-300-300-10 MLP (112,810 parameters) on 2048
examples (one weight per example, sharded; one shared L2 weight): the global data is fixed
and split over the processes, so the ideal time in W processes is 1/W of one. Each
process uses one CPU thread (on the CPU); every hypergradient is `ig.hypergrad(...,
ig.CG(max_iter=20, tol=0))`, 20 Hessian-vector products, each followed by one `all_reduce`
of n floats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import implicitgrad as ig

N, D, H, C = 2048, 64, 300, 10


def problem(rank: int, world: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=gen)
    y = torch.randint(C, (N,), generator=gen)
    sizes = [(H, D), (H,), (H, H), (H,), (C, H), (C,)]
    theta = [0.05 * torch.randn(*s, generator=gen) for s in sizes]
    weights = torch.zeros(N)
    Xl, yl, wl = (t.chunk(world)[rank].to(device) for t in (X, y, weights))
    theta = [t.to(device) for t in theta]

    def net(t, x):
        h = torch.tanh(x @ t[0].T + t[1])
        h = torch.tanh(h @ t[2].T + t[3])
        return h @ t[4].T + t[5]

    def inner(t, phi):
        ce = F.cross_entropy(net(t, Xl), yl, reduction="none")
        reg = sum((p**2).sum() for p in t)
        return (torch.sigmoid(phi["weights"]) * ce).mean() + 1e-3 * phi["lam"].exp() * reg

    def outer(t, phi):
        return F.cross_entropy(net(t, Xl), yl)

    phi = {"lam": torch.tensor(0.0, device=device), "weights": wl}
    return inner, outer, theta, phi


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(rank: int, world: int, device: torch.device, repeats: int) -> dict:
    inner, outer, theta, phi = problem(rank, world, device)
    n = sum(t.numel() for t in theta)
    dp = ig.DataParallel(sharded=("weights",)) if dist.is_initialized() else None
    # Damped: the MLP is not convex at its random start, and the cost is what is measured.
    solver = ig.CG(max_iter=20, tol=0.0, damping=1.0)

    def hypergrad():
        ig.hypergrad(inner, outer, theta, phi, solver, stationarity_tol=None, data_parallel=dp)

    out = {"world": world, "n": n, "hypergrad_s": timed(hypergrad, device, repeats)}
    buf = torch.randn(n, device=device)
    if dp is not None:
        out["all_reduce_s"] = timed(lambda: dist.all_reduce(buf), device, 5 * repeats)
    # One local Hessian-vector product, for the ratio of communication to computation.
    t = [x.detach().requires_grad_() for x in theta]
    grads = torch.autograd.grad(inner(t, phi), t, create_graph=True)
    v = [torch.randn_like(x) for x in t]
    out["hvp_s"] = timed(
        lambda: torch.autograd.grad(grads, t, grad_outputs=v, retain_graph=True), device, repeats
    )
    return out


def worker() -> None:
    """One process: under torchrun (env) or started by `launch` (argv)."""
    args = parse()
    device = torch.device(args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=120)
        )
    result = measure(rank, world, device, args.repeats)
    result["device"] = str(device)
    if world > 1:
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(result))


def launch(world: int, threads: int, repeats: int) -> dict:
    """Start `world` CPU processes of this script on 127.0.0.1 and return rank 0's result."""
    from socket import socket

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": str(threads),
        }
        cmd = [sys.executable, __file__, "--worker", "--threads", str(threads)]
        cmd += ["--repeats", str(repeats)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a benchmark process failed: {[p.returncode for p in procs]}")
    return json.loads(outs[0].strip().splitlines()[-1])


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.worker or "WORLD_SIZE" in os.environ:
        worker()
        return
    repeats = 3 if args.quick else args.repeats
    one = launch(1, 1, repeats)
    one_two_threads = launch(1, 2, repeats)
    two = launch(2, 1, repeats)
    k = 20 + 2  # CG-20, the outer gradient and the stationarity gap each reduce n floats
    report = {
        "n": one["n"],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "seconds": {
            "1 process, 1 thread": one["hypergrad_s"],
            "1 process, 2 threads": one_two_threads["hypergrad_s"],
            "2 processes, 1 thread each": two["hypergrad_s"],
        },
        "speedup_2_processes_vs_1": one["hypergrad_s"] / two["hypergrad_s"],
        "speedup_2_processes_vs_2_threads": one_two_threads["hypergrad_s"] / two["hypergrad_s"],
        "all_reduce_s": two["all_reduce_s"],
        "hvp_s_1_process": one["hvp_s"],
        "hvp_s_2_processes": two["hvp_s"],
        "all_reduce_per_hvp_2_processes": two["all_reduce_s"] / two["hvp_s"],
        "communication_share_2_processes": k * two["all_reduce_s"] / two["hypergrad_s"],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

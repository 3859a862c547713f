"""One process of the data-parallel tests (tests/test_distributed.py starts two).

`python tests/_dp_worker.py SUITE RANK WORLD PORT OUT` joins a gloo group on 127.0.0.1 with
a timeout, runs SUITE and saves its results to OUT/rank{RANK}.pt. The problems are built
by functions that the test also calls with `world=1` for the single-process reference on
the full data.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch

sys.path.insert(0, os.path.dirname(__file__))

from helpers import SOLVERS  # noqa: E402

import implicitgrad as ig  # noqa: E402

SHARDS = 2  # the data is always cut into two shards; one process holds all of them
N, M, D = 16, 12, 5  # training and validation examples, inner parameters
DTYPE = torch.float64


def full_data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=gen, dtype=DTYPE)
    y = torch.randn(N, generator=gen, dtype=DTYPE)
    Xv = torch.randn(M, D, generator=gen, dtype=DTYPE)
    yv = torch.randn(M, generator=gen, dtype=DTYPE)
    weights = 0.3 * torch.randn(N, generator=gen, dtype=DTYPE)
    return X, y, Xv, yv, weights


def _mine(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's shards: all of them in one process, one of two in two."""
    per = SHARDS // world
    return torch.cat(t.chunk(SHARDS)[rank * per : (rank + 1) * per])


def ridge(rank: int, world: int):
    """A weighted ridge problem: `lam` is shared, the per-example `weights` are sharded."""
    X, y, Xv, yv, weights = full_data()
    Xl, yl, Xvl, yvl = (_mine(t, rank, world) for t in (X, y, Xv, yv))

    def inner(w, phi):
        return (torch.sigmoid(phi["weights"]) * (Xl @ w - yl) ** 2).mean() + phi["lam"].exp() * (
            w**2
        ).sum()

    def outer(w, phi):
        return ((Xvl @ w - yvl) ** 2).mean() + 0.1 * phi["lam"] ** 2

    lam = torch.tensor(-1.0, dtype=DTYPE)
    s = torch.sigmoid(weights)
    H = 2 * (X.T * s) @ X / N + 2 * lam.exp() * torch.eye(D, dtype=DTYPE)
    w_star = torch.linalg.solve(H, 2 * (X.T * s) @ y / N)
    phi = {"lam": lam, "weights": _mine(weights, rank, world)}
    return inner, outer, w_star, phi, float(torch.linalg.eigvalsh(H)[-1])


def fixed_point_map(inner, lr: float):
    def update(w, phi):
        (g,) = torch.autograd.grad(inner(w, phi), w, create_graph=True)
        return w - lr * g

    return update


def unroll_problem(rank: int, world: int):
    """Minibatch training: each process draws its batches from its own shards."""
    X, y, Xv, yv, weights = full_data()
    per = N // SHARDS
    batches = []
    for t in range(6):
        parts = []
        for shard in range(rank * SHARDS // world, (rank + 1) * SHARDS // world):
            gen = torch.Generator().manual_seed(100 * t + shard)
            local = shard - rank * SHARDS // world
            parts.append(torch.randperm(per, generator=gen)[:4] + local * per)
        batches.append(torch.cat(parts))
    Xl, yl, Xvl, yvl = (_mine(t, rank, world) for t in (X, y, Xv, yv))

    def train_loss(w, phi, idx, step):
        r = Xl[idx] @ w - yl[idx]
        return (torch.sigmoid(phi["weights"][idx]) * r**2).mean() + phi["lam"].exp() * (w**2).sum()

    def outer(w, phi):
        return ((Xvl @ w - yvl) ** 2).mean() + 0.1 * phi["lam"] ** 2

    phi = {"lam": torch.tensor(-1.0, dtype=DTYPE), "weights": _mine(weights, rank, world)}
    return train_loss, outer, batches, phi


def _leaf(phi):
    return {k: v.detach().clone().requires_grad_(True) for k, v in phi.items()}


def run_core(rank: int, world: int, dp: ig.DataParallel | None) -> dict:
    """Every core entry point, on this process's shard (or the full data with dp=None)."""
    out: dict = {}
    inner, outer, w_star, phi, lam_max = ridge(rank, world)
    for case in SOLVERS:
        hg, info = ig.hypergrad(
            inner,
            outer,
            w_star,
            phi,
            case.make(D, lam_max),
            stationarity_tol=None,
            return_info=True,
            data_parallel=dp,
        )
        out[f"hypergrad/{case.name}"] = hg
        out[f"iterations/{case.name}"] = info.iterations
        solver = case.make(D, lam_max)
        if not getattr(solver, "requires_symmetric", False):
            lr = 1.0 / lam_max
            hg = ig.fixed_point_hypergrad(
                fixed_point_map(inner, lr),
                outer,
                w_star,
                phi,
                ig.Neumann(terms=40, alpha=1.0) if case.name == "Neumann" else solver,
                stationarity_tol=None,
                data_parallel=dp,
            )
            out[f"fixed_point_hypergrad/{case.name}"] = hg
    # implicit: the outer loss's direct term and the implicit part, completed by reduce_grads.
    p = _leaf(phi)
    theta = ig.implicit(inner, w_star, p, ig.CG(tol=1e-13), data_parallel=dp)
    outer(theta, p).backward()
    if dp is not None:
        dp.reduce_grads(p)
    out["implicit"] = {k: v.grad for k, v in p.items()}

    train_loss, outer_u, batches, phi_u = unroll_problem(rank, world)
    opt = ig.SGD(lr=0.2, momentum=0.9)
    p = _leaf(phi_u)
    w, info = ig.unroll(
        train_loss,
        torch.zeros(D, dtype=DTYPE),
        p,
        batches,
        opt,
        return_info=True,
        data_parallel=dp,
    )
    outer_u(w, p).backward()
    if dp is not None:
        dp.reduce_grads(p)
    out["unroll"] = {k: v.grad for k, v in p.items()}
    out["unroll/theta"] = w.detach()
    out["unroll/losses"] = info.losses
    for name, adjoint in [
        ("minimize/implicit", ig.ImplicitAdjoint(ig.CG(tol=1e-13), stationarity_tol=None)),
        ("minimize/unroll", ig.UnrollAdjoint()),
    ]:
        p = _leaf(phi)

        def loss(w, phi, batch, step, inner=inner):
            return inner(w, phi)

        w = ig.minimize(
            loss,
            torch.zeros(D, dtype=DTYPE),
            p,
            None,
            ig.SGD(lr=0.5 / lam_max),
            steps=30,
            adjoint=adjoint,
            data_parallel=dp,
        )
        outer(w, p).backward()
        if dp is not None:
            dp.reduce_grads(p)
        out[name] = {k: v.grad for k, v in p.items()}
    return out


def run_fail(rank: int, world: int, dp: ig.DataParallel) -> dict:
    """Rank 1 raises inside its loss while rank 0 waits in a collective."""
    inner, outer, w_star, phi, _ = ridge(rank, world)

    def bad_inner(w, p):
        if rank == 1:
            raise RuntimeError("injected failure on rank 1")
        return inner(w, p)

    ig.hypergrad(bad_inner, outer, w_star, phi, ig.CG(), stationarity_tol=None, data_parallel=dp)
    return {}


SUITES = {"core": run_core, "fail": run_fail}


def main() -> None:
    import torch.distributed as dist

    suite, rank, world, port, out = sys.argv[1:6]
    rank, world = int(rank), int(world)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=30),
    )
    # On an error the process exits without a goodbye to the group: its peers see the
    # closed connections at their next collective and fail too.
    results = SUITES[suite](rank, world, ig.DataParallel(sharded=("weights",)))
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""A 50-step outer optimization on the reweighting problem: total hypergradient time.

Every contender runs the same loop: re-solve the inner problem from the previous inner
solution with a few L-BFGS steps, compute the hypergradient, take an Adam step on the
per-example weights. The inner solves are identical procedures; only the hypergradient is
timed. TorchOpt runs with a budget of `BUDGET` iterations, implicitgrad's warm-started CG
with that budget and with half of it; the final validation loss says whether the cheaper
hypergradients lose anything.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import _contenders as C
import torch
from _problems import Problem

import implicitgrad as ig

INNER_STEPS = 10
LEARNING_RATE = 0.1
BUDGET = 10
PRECONDITIONER_RANK = 40
REFRESH = 10


@dataclass
class OuterResult:
    name: str
    setting: str
    hypergrad_seconds: float
    total_seconds: float
    hvps: int
    final_val_loss: float
    initial_val_loss: float


def _contenders(problem: Problem) -> list[tuple[str, str, C.HypergradFn]]:
    k = BUDGET
    out = []
    if C.torchopt_available():
        name = "TorchOpt normal CG (its default solver)"
        out.append((name, f"maxiter={k}", C.torchopt_fn("normal_cg", k)))
        out.append(("TorchOpt CG", f"maxiter={k}", C.torchopt_fn("cg", k)))
    for iters in (k // 2, k):
        warm = ig.CG(max_iter=iters, tol=0.0)
        fn = C.implicitgrad_fn(warm, warm=True)
        out.append(("ig CG, warm start", f"max_iter={iters}", fn))
    for iters in (k // 2, k):
        # One preconditioner object for the whole run: built at the first step, rebuilt every
        # REFRESH steps or when the iterations grow (never, with a fixed budget).
        pc = ig.NystromPreconditioner(rank=PRECONDITIONER_RANK, refresh_every=REFRESH)
        fn = C.implicitgrad_fn(ig.CG(max_iter=iters, tol=0.0, preconditioner=pc), warm=True)
        name = f"ig CG + Nystrom preconditioner ({PRECONDITIONER_RANK}), reused, warm start"
        out.append((name, f"max_iter={iters}, refresh_every={REFRESH}", fn))
    return out


def run(problem: Problem, steps: int) -> list[OuterResult]:
    theta0, phi0 = problem.theta, problem.phi.clone()
    initial = float(problem.outer_loss(theta0, phi0))
    out = []
    for name, setting, fn in _contenders(problem):
        theta = problem.solve_inner(phi0, theta0, 0)
        phi = phi0.clone().requires_grad_(True)
        opt = torch.optim.Adam([phi], lr=LEARNING_RATE)
        state, hyper, hvps = None, 0.0, 0
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ig.ConvergenceWarning)
            for step in range(steps):
                if step > 0:
                    theta = problem.solve_inner(phi.detach(), theta, INNER_STEPS)
                t0 = time.perf_counter()
                hg, state, n = fn(problem, theta, phi.detach(), state)
                hyper += time.perf_counter() - t0
                hvps += n
                phi.grad = hg
                opt.step()
            theta = problem.solve_inner(phi.detach(), theta, INNER_STEPS)
        total = time.perf_counter() - start
        final = float(problem.outer_loss(theta, phi.detach()))
        out.append(OuterResult(name, setting, hyper, total, hvps, final, initial))
        print(
            f"  outer: {name:40s} {setting:24s} hypergrad {hyper:7.2f} s  total {total:7.2f} s"
            f"  products {hvps:6d}  val {initial:.4f} -> {final:.4f}",
            flush=True,
        )
    return out

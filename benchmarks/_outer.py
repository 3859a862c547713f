"""A 50-step outer optimization on the reweighting problem: total hypergradient time.

Every contender runs the same loop: re-solve the inner problem from the previous inner
solution with a few L-BFGS steps, compute the hypergradient, take an Adam step on the
per-example weights. The inner solves are identical procedures; only the hypergradient is
timed, in CPU time of the calling thread (the steadier number on a shared machine). The
contenders run in lockstep, one outer step of each in turn, so that load from other
processes spreads over all of them. TorchOpt runs with a budget of `BUDGET` iterations;
implicitgrad's warm-started CG with several budgets up to it, plain, with a Nyström
preconditioner reused across the steps, and with a preconditioner recycled from the products
of the earlier steps; the final validation loss says whether the cheaper hypergradients lose
anything.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import _contenders as C
import torch
from _problems import Problem

import implicitgrad as ig

INNER_STEPS = 10
LEARNING_RATE = 0.1
BUDGET = 10
#: Budgets of warm-started plain CG (products per outer step, after the warm start's one).
WARM_BUDGETS = (2, 3, 5, 10)
PRECONDITIONER_RANK = 40
#: (refresh_every, max_iter) of the reused Nyström preconditioner: rebuilt every 10 outer
#: steps, or built once per run.
REUSED = ((10, 5), (50, 3))
#: Products kept by the recycled preconditioner, and its budgets.
MEMORY = 20
RECYCLED_BUDGETS = (2, 3)


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
    for iters in WARM_BUDGETS:
        warm = ig.CG(max_iter=iters, tol=0.0)
        fn = C.implicitgrad_fn(warm, warm=True)
        out.append(("ig CG, warm start", f"max_iter={iters}", fn))
    for refresh, iters in REUSED:
        # One preconditioner object for the whole run: built at the first step, rebuilt
        # every `refresh` steps (the iterations never grow with a fixed budget).
        pc = ig.NystromPreconditioner(rank=PRECONDITIONER_RANK, refresh_every=refresh)
        fn = C.implicitgrad_fn(ig.CG(max_iter=iters, tol=0.0, preconditioner=pc), warm=True)
        name = f"ig CG + Nystrom preconditioner ({PRECONDITIONER_RANK}), reused, warm start"
        out.append((name, f"max_iter={iters}, refresh_every={refresh}", fn))
    for iters in RECYCLED_BUDGETS:
        # Built at every step from the last MEMORY products of the earlier steps: no products.
        pc = ig.RecycledPreconditioner(memory=MEMORY)
        fn = C.implicitgrad_fn(ig.CG(max_iter=iters, tol=0.0, preconditioner=pc), warm=True)
        name = f"ig CG + recycled preconditioner ({MEMORY}), warm start"
        out.append((name, f"max_iter={iters}", fn))
    return out


@dataclass
class _Run:
    name: str
    setting: str
    fn: C.HypergradFn
    theta: Any
    phi: torch.Tensor
    opt: torch.optim.Optimizer
    state: Any = None
    hyper: float = 0.0
    total: float = 0.0
    hvps: int = 0


def run(problem: Problem, steps: int) -> list[OuterResult]:
    theta0, phi0 = problem.theta, problem.phi.clone()
    initial = float(problem.outer_loss(theta0, phi0))
    runs = []
    for name, setting, fn in _contenders(problem):
        phi = phi0.clone().requires_grad_(True)
        runs.append(_Run(name, setting, fn, theta0, phi, torch.optim.Adam([phi], lr=LEARNING_RATE)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ig.ConvergenceWarning)
        for step in range(steps + 1):
            for r in runs:
                start = time.thread_time()
                # Also (re)sets the problem's proximal anchor to this run's inner solution.
                r.theta = problem.solve_inner(r.phi.detach(), r.theta, INNER_STEPS if step else 0)
                if step == steps:
                    r.total += time.thread_time() - start
                    continue
                t0 = time.thread_time()
                hg, r.state, n = r.fn(problem, r.theta, r.phi.detach(), r.state)
                r.hyper += time.thread_time() - t0
                r.hvps += n
                r.phi.grad = hg
                r.opt.step()
                r.total += time.thread_time() - start
    out = []
    for r in runs:
        final = float(problem.outer_loss(r.theta, r.phi.detach()))
        out.append(OuterResult(r.name, r.setting, r.hyper, r.total, r.hvps, final, initial))
        print(
            f"  outer: {r.name:40s} {r.setting:28s} hypergrad {r.hyper:7.2f} s CPU  total "
            f"{r.total:7.2f} s  products {r.hvps:6d}  val {initial:.4f} -> {final:.4f}",
            flush=True,
        )
    return out

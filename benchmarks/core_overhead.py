"""Core overhead and batching: `ig.hypergrad` against the same work written by hand.

Run from the repository root:

    python benchmarks/core_overhead.py            # full run, about 3 minutes on two cores
    python benchmarks/core_overhead.py --quick    # smaller sizes, fewer rounds (< 60 s)
    python benchmarks/core_overhead.py --check    # the correctness assertions only, 1 round
    python benchmarks/core_overhead.py --write    # full run, rewrites its block in the docs
    python benchmarks/core_overhead.py --profile  # cProfile of the call of (b)

Four cases, each measured in this one process with one torch thread, float64 throughout:

- (a) **batching**: 64 independent ridge problems ($d = 20$ features, 50 samples each) with
  `CG(tol=1e-10)`. A Python loop of 64 `ig.hypergrad` calls against `torch.func.vmap` over
  `ig.hypergrad`; and, on 64 problems that share their data and differ in φ, the loop
  against `vmap` and against one `ig.hypergrad(..., batched=True)` call.
- (b) **a single small call**: ridge with $d = 5$, `CG(max_iter=5, tol=0)`, `ig.hypergrad`
  against the hand-written autograd CG of `_contenders.py`.
- (c) **equal work at scale**: multinomial logistic regression with about $10^5$ and
  $10^6$ inner parameters (weights and biases, 100 classes), 20 CG iterations with `tol=0`:
  `ig.hypergrad` against hand-written CG and TorchOpt's `custom_root` with `solve_cg`.
- (d) **the transform path**: at the size of (a), `ig.hypergrad` (the graph-reusing default
  path) against `vmap` of it over a batch of one, and `ig.implicit` differentiated by
  `torch.autograd.grad` against the same under `torch.func.grad`; and hand-written CG with
  graph-reusing products against hand-written CG whose products are `torch.func.jvp` of
  `torch.func.grad` (what a core written with torch.func throughout would do).

Timing: CPU time of the calling thread (`time.thread_time`; torch runs on that thread), which
waiting for a core on a shared machine does not inflate. After one warm-up call each, every
round calls every contender of a case once, in turn, so that load from other processes
spreads over all of them; the tables give the median and the best round per call. A ratio
`A / B` is given three ways: of the medians, of the bests, and the median over rounds of the
ratio within a round (which cancels load that changes from round to round). A goal counts
as met when all three meet it.

Every case first checks that its contenders agree (an `AssertionError` otherwise); timing
goals are only reported, never asserted, so a busy machine cannot fail the script.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _contenders as C  # noqa: E402
from _problems import Params, Problem  # noqa: E402
from hypergrad_bench import machine  # noqa: E402

import implicitgrad as ig  # noqa: E402
from implicitgrad.testing import ridge_problem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- core-overhead:start -->", "<!-- core-overhead:end -->"
DTYPE = torch.float64


# ---------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Contender:
    """One way of computing a case's result; `products` counts its Hessian-vector products."""

    label: str
    run: Callable[[], torch.Tensor]
    products: int | str = ""
    times: list[float] = field(default_factory=list)
    median: float = float("nan")
    best: float = float("nan")


@dataclass
class Comparison:
    """`numerator / denominator` of CPU times, and the goal that ratio should meet."""

    numerator: str
    denominator: str
    goal: tuple[str, float] | None = None  # ("<=", 1.15) or (">=", 10.0)
    note: str = ""


@dataclass
class Case:
    key: str
    short: str  # for the ratio table
    title: str
    contenders: list[Contender]
    comparisons: list[Comparison]
    repeats: int
    check: Callable[[dict[str, torch.Tensor]], None]
    details: list[str] = field(default_factory=list)

    def contender(self, label: str) -> Contender:
        return next(c for c in self.contenders if c.label == label)


def measure(case: Case, repeats: int) -> None:
    """Check the contenders against each other, then time them in interleaved rounds."""
    print(f"({case.key}) {case.title}", flush=True)
    t0 = time.perf_counter()
    results = {c.label: _quiet(c.run) for c in case.contenders}  # also the warm-up call
    case.check(results)
    for _ in range(repeats):
        for c in case.contenders:
            start = time.thread_time()
            _quiet(c.run)
            c.times.append(time.thread_time() - start)
    for c in case.contenders:
        c.median, c.best = statistics.median(c.times), min(c.times)
        print(
            f"  {c.label:52s} median {_ms(c.median):>9s} ms   best {_ms(c.best):>9s} ms",
            flush=True,
        )
    print(f"  ({repeats} rounds, {time.perf_counter() - t0:.1f} s)", flush=True)


def _ms(seconds: float) -> str:
    if seconds != seconds:
        return "-"
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def _quiet(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`fn()` with ConvergenceWarning ignored, as in `_contenders.py` (a fixed budget with
    tol=0 is the point). Every contender runs inside this block, so its cost (some 20 µs)
    is the same for all and the warning implicitgrad issues is counted as its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ig.ConvergenceWarning)
        return fn()


def assert_close(results: dict[str, torch.Tensor], *, atol: float = 0.0, rtol: float = 0.0):
    """Every result equals the first one within `atol + rtol * |first|` (max norm)."""
    (ref_label, ref), *others = results.items()
    scale = float(ref.abs().max())
    for label, value in others:
        err = float((value - ref).abs().max())
        assert err <= atol + rtol * scale, (
            f"{label} differs from {ref_label} by {err:.3e} (max abs), allowed "
            f"{atol + rtol * scale:.3e}"
        )


# ---------------------------------------------------------------------------------------------
# (a) batching


@dataclass
class RidgeBatch:
    """B ridge problems stacked along a leading dimension, at their exact inner solutions."""

    X: torch.Tensor
    y: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    w: torch.Tensor
    phi: torch.Tensor

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.X[i], self.y[i], self.X_val[i], self.y_val[i], self.w[i], self.phi[i]

    @property
    def columns(self) -> tuple[torch.Tensor, ...]:
        return self.X, self.y, self.X_val, self.y_val, self.w, self.phi


def ridge_losses(X, y, X_val, y_val):
    """The inner and outer loss of `implicitgrad.testing.RidgeProblem` on the given data."""

    def inner(w: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        r = X @ w - y
        return 0.5 * (r @ r) / y.shape[-1] + 0.5 * (phi.exp() * w**2).sum()

    def outer(w: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        r = X_val @ w - y_val
        return 0.5 * (r @ r) / y_val.shape[-1]

    return inner, outer


def ridge_batch(batch: int, n_samples: int, n_features: int, *, shared: bool) -> RidgeBatch:
    """`batch` problems from `ridge_problem` (seeds 0, 1, ...), or one data set shared by all
    with a different φ per problem (log L2 weights drawn in [-3, 0])."""
    probs = [ridge_problem(n_samples, n_features, seed=0 if shared else i) for i in range(batch)]
    X, y, X_val, y_val = (
        torch.stack([getattr(p, k) for p in probs]) for k in ("X", "y", "X_val", "y_val")
    )
    gen = torch.Generator().manual_seed(1)
    if shared:
        phi = -3.0 * torch.rand(batch, n_features, generator=gen, dtype=DTYPE)
    else:
        phi = torch.stack([p.outer_params for p in probs])
    w = torch.stack([p.inner_solution(f) for p, f in zip(probs, phi)])
    return RidgeBatch(X, y, X_val, y_val, w, phi)


def case_batching(batch: int, repeats: int, tol: float = 1e-10) -> list[Case]:
    solver = ig.CG(tol=tol)

    def one(X, y, X_val, y_val, w, phi) -> torch.Tensor:
        inner, outer = ridge_losses(X, y, X_val, y_val)
        return ig.hypergrad(inner, outer, w, phi, solver=solver)

    own = ridge_batch(batch, 50, 20, shared=False)
    shared = ridge_batch(batch, 50, 20, shared=True)
    # The losses of one problem, on the data every problem of `shared` holds.
    inner0, outer0 = ridge_losses(*(t[0] for t in shared.columns[:4]))

    def loop(data: RidgeBatch) -> Callable[[], torch.Tensor]:
        return lambda: torch.stack([one(*data[i]) for i in range(batch)])

    def vmapped(data: RidgeBatch) -> Callable[[], torch.Tensor]:
        return lambda: torch.func.vmap(one)(*data.columns)

    def batched_call() -> torch.Tensor:
        return ig.hypergrad(inner0, outer0, shared.w, shared.phi, solver=solver, batched=True)

    def loop_products(data: RidgeBatch) -> str:
        its = []
        for i in range(batch):
            X, y, Xv, yv, w, phi = data[i]
            inner, outer = ridge_losses(X, y, Xv, yv)
            _, info = ig.hypergrad(inner, outer, w, phi, solver=solver, return_info=True)
            its.append(info.iterations)
        return f"{sum(its) / len(its):.1f} per problem"

    _, binfo = ig.hypergrad(
        inner0, outer0, shared.w, shared.phi, solver=solver, batched=True, return_info=True
    )

    def check_own(results: dict[str, torch.Tensor]) -> None:
        # Closed form: the loop itself is right, then vmap must equal it to 1e-10.
        exact = torch.stack(
            [ridge_problem(50, 20, seed=i).exact_hypergrad(own.phi[i]) for i in range(batch)]
        )
        assert_close({"closed form": exact, **results}, rtol=1e-6)
        assert_close(results, atol=1e-10)

    def check_shared(results: dict[str, torch.Tensor]) -> None:
        assert_close(results, atol=1e-10)
        worst = float(binfo.batch_residual.max())
        assert bool((binfo.batch_residual <= tol).all()), (
            f"batched=True: a problem's own residual {worst:.2e} misses tol={tol:.0e}"
        )

    goal = (">=", 10.0)
    title = f"{batch} ridge problems (d = 20, 50 samples each), CG(tol={tol:g})"
    return [
        Case(
            "a",
            f"{batch} ridge problems, own data",
            title + ", own data per problem",
            [
                Contender(f"loop of {batch} ig.hypergrad calls", loop(own), loop_products(own)),
                Contender("torch.func.vmap(ig.hypergrad)", vmapped(own), "lockstep"),
            ],
            [
                Comparison(
                    f"loop of {batch} ig.hypergrad calls", "torch.func.vmap(ig.hypergrad)", goal
                )
            ],
            repeats,
            check_own,
        ),
        Case(
            "a'",
            f"{batch} ridge problems, shared data",
            title + ", shared data, φ per problem",
            [
                Contender(
                    f"loop of {batch} ig.hypergrad calls", loop(shared), loop_products(shared)
                ),
                Contender(
                    "torch.func.vmap(ig.hypergrad)",
                    vmapped(shared),
                    f"{binfo.iterations} (lockstep)",
                ),
                Contender(
                    "ig.hypergrad(..., batched=True)",
                    batched_call,
                    f"{binfo.iterations} (lockstep)",
                ),
            ],
            [
                Comparison(
                    f"loop of {batch} ig.hypergrad calls", "torch.func.vmap(ig.hypergrad)", goal
                ),
                Comparison(
                    f"loop of {batch} ig.hypergrad calls", "ig.hypergrad(..., batched=True)", goal
                ),
            ],
            repeats,
            check_shared,
            details=[
                f"batched=True: worst per-problem residual {float(binfo.batch_residual.max()):.1e}"
                f" (tol {tol:g}), per-problem products "
                f"{int(binfo.batch_iterations.min())}-{int(binfo.batch_iterations.max())}"
            ],
        ),
    ]


# ---------------------------------------------------------------------------------------------
# (b) a single small call, (d) the transform path


def ridge_tuple_problem(n_samples: int, n_features: int) -> Problem:
    """`ridge_problem` in the tuple form the contenders of `_contenders.py` take."""
    prob = ridge_problem(n_samples, n_features, seed=0)
    phi = prob.outer_params
    return Problem(
        name=f"ridge (d = {n_features})",
        inner_loss=lambda theta, phi: prob.inner_loss(theta[0], phi),
        outer_loss=lambda theta, phi: prob.outer_loss(theta[0]),
        theta=(prob.inner_solution(phi),),
        phi=phi,
        reference=prob.exact_hypergrad(phi),
        reference_kind="closed form",
        solve_inner=lambda phi, theta0, steps: (prob.inner_solution(phi),),
        curvature_floor=0.1,
    )


def ig_products(problem: Problem, solver: ig.AbstractSolver) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ig.ConvergenceWarning)
        _, info = ig.hypergrad(
            problem.inner_loss,
            problem.outer_loss,
            problem.theta,
            problem.phi,
            solver=solver,
            return_info=True,
            stationarity_tol=None,
        )
    return info.iterations


def case_small_call(repeats: int, iterations: int = 5) -> Case:
    problem = ridge_tuple_problem(50, 5)
    solver = ig.CG(max_iter=iterations, tol=0.0)
    hand = C.handwritten_cg_fn(iterations)

    def ig_call() -> torch.Tensor:
        return ig.hypergrad(
            problem.inner_loss, problem.outer_loss, problem.theta, problem.phi, solver=solver
        )

    def check(results: dict[str, torch.Tensor]) -> None:
        assert_close(results, rtol=1e-10)

    return Case(
        "b",
        f"one call, d = 5, CG-{iterations}",
        f"one call, ridge (d = 5, 50 samples), CG-{iterations} (tol=0)",
        [
            Contender("ig.hypergrad", ig_call, ig_products(problem, solver)),
            Contender(
                "hand-written autograd CG",
                lambda: hand(problem, problem.theta, problem.phi, None)[0],
                iterations,
            ),
        ],
        [Comparison("ig.hypergrad", "hand-written autograd CG", ("<=", 1.15))],
        repeats,
        check,
    )


def torchfunc_cg_fn(iterations: int) -> C.HypergradFn:
    """IFT hypergradient with `iterations` CG steps whose products are
    `torch.func.jvp(torch.func.grad(f))`: forward-over-reverse, no graph kept between
    products, as a core written with torch.func throughout would compute them."""

    def run(problem: Problem, theta: Params, phi: torch.Tensor, state: Any):
        theta = tuple(t.detach() for t in theta)
        phi = phi.detach()
        grad_f = torch.func.grad(problem.inner_loss, argnums=0)

        def hvp(p: list[torch.Tensor]) -> list[torch.Tensor]:
            return list(torch.func.jvp(lambda t: grad_f(t, phi), (theta,), (tuple(p),))[1])

        v, direct = torch.func.grad(problem.outer_loss, argnums=(0, 1))(theta, phi)
        x = [torch.zeros_like(t) for t in v]
        r = [t.clone() for t in v]
        p = [t.clone() for t in v]
        rs = C._dot(r, r)
        for _ in range(iterations):
            hp = hvp(p)
            alpha = rs / C._dot(p, hp)
            torch._foreach_add_(x, p, alpha=alpha)
            torch._foreach_sub_(r, torch._foreach_mul(hp, alpha))
            rs_new = C._dot(r, r)
            p = torch._foreach_add(r, torch._foreach_mul(p, rs_new / rs))
            rs = rs_new
        _, vjp = torch.func.vjp(lambda f: grad_f(theta, f), phi)
        (mixed,) = vjp(tuple(x))
        return direct - mixed, None, iterations

    return run


def case_transforms(repeats: int, iterations: int = 10) -> Case:
    problem = ridge_tuple_problem(50, 20)
    solver = ig.CG(max_iter=iterations, tol=0.0)
    inner, outer, theta, phi = problem.inner_loss, problem.outer_loss, problem.theta, problem.phi
    hand = C.handwritten_cg_fn(iterations)
    native = torchfunc_cg_fn(iterations)

    def direct() -> torch.Tensor:
        return ig.hypergrad(inner, outer, theta, phi, solver=solver)

    def vmapped() -> torch.Tensor:
        fn = lambda t, p: ig.hypergrad(inner, outer, t, p, solver=solver)  # noqa: E731
        return torch.func.vmap(fn)(tuple(t[None] for t in theta), phi[None])[0]

    def implicit_autograd() -> torch.Tensor:
        p = phi.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(outer(ig.implicit(inner, theta, p, solver), p), p)
        return g

    def implicit_func_grad() -> torch.Tensor:
        return torch.func.grad(lambda p: outer(ig.implicit(inner, theta, p, solver), p))(phi)

    def check(results: dict[str, torch.Tensor]) -> None:
        assert_close(results, rtol=1e-10)

    labels = {
        "hg": "ig.hypergrad (graph reuse, default)",
        "vmap": "torch.func.vmap(ig.hypergrad), batch of 1",
        "impl": "ig.implicit + torch.autograd.grad",
        "fgrad": "torch.func.grad over ig.implicit",
        "hand": "hand-written CG, graph-reusing products",
        "native": "hand-written CG, torch.func.jvp(grad) products",
    }
    n = ig_products(problem, solver)
    return Case(
        "d",
        f"transform path, d = 20, CG-{iterations}",
        f"transform path, ridge (d = 20, 50 samples), CG-{iterations} (tol=0)",
        [
            Contender(labels["hg"], direct, n),
            Contender(labels["vmap"], vmapped, n),
            Contender(labels["impl"], implicit_autograd, n),
            Contender(labels["fgrad"], implicit_func_grad, n),
            Contender(labels["hand"], lambda: hand(problem, theta, phi, None)[0], iterations),
            Contender(labels["native"], lambda: native(problem, theta, phi, None)[0], iterations),
        ],
        [
            Comparison(labels["vmap"], labels["hg"]),
            Comparison(labels["impl"], labels["hg"]),
            Comparison(labels["fgrad"], labels["impl"]),
            Comparison(labels["native"], labels["hand"]),
        ],
        repeats,
        check,
    )


# ---------------------------------------------------------------------------------------------
# (c) equal work at scale


def logistic_problem(
    n_params: int,
    n_samples: int = 64,
    n_classes: int = 100,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = DTYPE,
) -> Problem:
    """Multinomial logistic regression with about `n_params` inner parameters (a weight
    matrix and a bias) and one L2 weight per feature as φ, on random data.

    The samples' scales are spread over half a decade, so that 20 CG iterations stop at a
    relative residual of about 1e-5: with clustered eigenvalues CG would reach the rounding
    floor early, where implicitgrad spends one more product to report the true residual;
    with a wider spread the three implementations' rounding differences grow to 1e-6 over
    20 iterations. The point θ is not an inner solution (the
    benchmark times the linear algebra, which does not care; stationarity checks are off),
    but the Hessian is positive definite: softmax cross-entropy is convex and every
    parameter carries an L2 term.
    """
    n_features = n_params // n_classes
    gen = torch.Generator().manual_seed(0)
    scales = torch.logspace(0.0, 0.5, n_samples, dtype=DTYPE)[:, None] / n_features**0.5
    x = torch.randn(n_samples, n_features, generator=gen, dtype=DTYPE) * scales
    x_val = torch.randn(n_samples, n_features, generator=gen, dtype=DTYPE) / n_features**0.5
    y = torch.randint(0, n_classes, (n_samples,), generator=gen)
    y_val = torch.randint(0, n_classes, (n_samples,), generator=gen)
    theta = (
        torch.randn(n_features, n_classes, generator=gen, dtype=DTYPE),
        torch.zeros(n_classes, dtype=DTYPE),
    )
    phi = torch.full((n_features,), -3.0, dtype=DTYPE)
    # Drawn on the CPU in float64 (the same numbers everywhere), then moved.
    x, x_val, y, y_val = (t.to(device) for t in (x, x_val, y, y_val))
    x, x_val, phi = x.to(dtype), x_val.to(dtype), phi.to(device, dtype)
    theta = tuple(t.to(device, dtype) for t in theta)

    def inner(theta: Params, phi: torch.Tensor) -> torch.Tensor:
        w, b = theta
        ce = torch.nn.functional.cross_entropy(x @ w + b, y)
        return ce + 0.5 * (phi.exp() @ (w**2).sum(1)) + 0.5e-4 * (b**2).sum()

    def outer(theta: Params, phi: torch.Tensor) -> torch.Tensor:
        w, b = theta
        return torch.nn.functional.cross_entropy(x_val @ w + b, y_val)

    def no_inner_solve(phi: torch.Tensor, theta0: Params, steps: int) -> Params:
        raise NotImplementedError("timing only")

    return Problem(
        name=f"logistic regression ({n_features * n_classes + n_classes} parameters)",
        inner_loss=inner,
        outer_loss=outer,
        theta=theta,
        phi=phi,
        reference=torch.empty(0),
        reference_kind="none (the contenders are compared with each other)",
        solve_inner=no_inner_solve,
        curvature_floor=float(torch.exp(torch.tensor(-3.0))),
    )


def case_scale(n_params: int, repeats: int, *, native: bool, iterations: int = 20) -> Case:
    """Case (c) at `n_params`; with `native`, also hand-written CG with torch.func products
    (the comparison of (d) at a size where the products dominate)."""
    problem = logistic_problem(n_params)
    solver = ig.CG(max_iter=iterations, tol=0.0)
    hand = C.handwritten_cg_fn(iterations)

    def ig_call() -> torch.Tensor:
        return ig.hypergrad(
            problem.inner_loss,
            problem.outer_loss,
            problem.theta,
            problem.phi,
            solver=solver,
            stationarity_tol=None,
        )

    contenders = [
        Contender("ig.hypergrad", ig_call, ig_products(problem, solver)),
        Contender(
            "hand-written autograd CG",
            lambda: hand(problem, problem.theta, problem.phi, None)[0],
            iterations,
        ),
    ]
    comparisons = [Comparison("ig.hypergrad", "hand-written autograd CG", ("<=", 1.05))]
    if C.torchopt_available() is not None:
        torchopt = C.torchopt_fn("cg", iterations)
        contenders.append(
            Contender(
                "TorchOpt custom_root + solve_cg",
                lambda: torchopt(problem, problem.theta, problem.phi, None)[0],
                iterations + 1,
            )
        )
        comparisons.append(
            Comparison("ig.hypergrad", "TorchOpt custom_root + solve_cg", ("<=", 1.0))
        )
    if native:
        label = "hand-written CG, torch.func.jvp(grad) products"
        run_native = torchfunc_cg_fn(iterations)
        contenders.append(
            Contender(
                label,
                lambda: run_native(problem, problem.theta, problem.phi, None)[0],
                iterations,
            )
        )
        comparisons.append(Comparison(label, "hand-written autograd CG"))

    def check(results: dict[str, torch.Tensor]) -> None:
        # The same 20 CG steps in float64; they differ only in the order of summation.
        assert_close(results, rtol=1e-10)

    return Case(
        "c",
        f"{problem.n_inner:,} parameters, CG-{iterations}",
        f"equal work, {problem.name}, CG-{iterations} (tol=0)",
        contenders,
        comparisons,
        repeats,
        check,
    )


# ---------------------------------------------------------------------------------------------
# Report


def ratios(a: Contender, b: Contender) -> tuple[float, float, float]:
    """`a / b`: of the medians, of the bests, and the median of the per-round ratios (a
    round runs both back to back, so a load burst that slows one round cancels there)."""
    paired = [x / y for x, y in zip(a.times, b.times)]
    return a.median / b.median, a.best / b.best, statistics.median(paired)


def verdict(comparison: Comparison, values: tuple[float, ...]) -> str:
    if comparison.goal is None:
        return "(reported)"
    op, bound = comparison.goal
    ok = [(r >= bound) if op == ">=" else (r <= bound) for r in values]
    return "yes" if all(ok) else "no" if not any(ok) else f"{sum(ok)} of {len(ok)}"


def render(cases: list[Case], info: dict[str, str], mode: str) -> str:
    lines = [
        f"Measured {info['date']} ({mode} run, {info['total']} end to end) on {info['cpu']}; "
        f"Python {info['python']}, torch {info['torch']}, TorchOpt {info['torchopt']}; "
        f"implicitgrad at {info['core']}. Load average at the end of the run: {info['load']}.",
        "",
        "| case | A / B | median A / B (ms) | best A / B (ms) | ratio of medians | ratio of "
        "bests | paired ratio | goal | met |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for case in cases:
        for cmp in case.comparisons:
            a, b = case.contender(cmp.numerator), case.contender(cmp.denominator)
            values = ratios(a, b)
            goal = (
                ""
                if cmp.goal is None
                else f"{cmp.goal[0].replace('<=', '≤').replace('>=', '≥')} {cmp.goal[1]:g}"
            )
            lines.append(
                f"| ({case.key}) {case.short} | {a.label} / {b.label} | "
                f"{_ms(a.median)} / {_ms(b.median)} | {_ms(a.best)} / {_ms(b.best)} | "
                + " | ".join(f"{r:.2f}" for r in values)
                + f" | {goal} | {verdict(cmp, values)} |"
            )
    lines += [
        "",
        "<details><summary>Every contender</summary>",
        "",
        "| case | contender | products | median CPU (ms) | best CPU (ms) | rounds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for case in cases:
        for c in case.contenders:
            lines.append(
                f"| ({case.key}) {case.title} | {c.label} | {c.products} | {_ms(c.median)} | "
                f"{_ms(c.best)} | {case.repeats} |"
            )
    details = [d for case in cases for d in case.details]
    if details:
        lines += ["", *[f"- {d}" for d in details]]
    lines += ["", "</details>"]
    return "\n".join(lines)


def core_state() -> str:
    """The commit the core was measured at, and whether `implicitgrad/` had local changes."""
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "implicitgrad"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {commit}" + (" with uncommitted changes under implicitgrad/" if dirty else "")


def profile_small_call(calls: int) -> None:
    """cProfile of case (b)'s `ig.hypergrad` call: the functions its time goes to, in µs per
    call. cProfile adds about a microsecond to every Python call it records, so Python-heavy
    code looks slower than it is; compare the functions with each other, not with (b)."""
    case = case_small_call(0)
    run = case.contender("ig.hypergrad").run
    _quiet(run)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        _quiet(run)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:30]
    print(f"cProfile of ig.hypergrad, {case.title}: {calls} calls")
    print(f"{'own µs/call':>12s} {'incl. µs/call':>14s} {'calls/call':>11s}  function")
    for (filename, line, func), (_, ncalls, own, incl, _) in rows:
        where = f"{Path(filename).name}:{line}" if line else filename
        print(
            f"{own / calls * 1e6:12.1f} {incl / calls * 1e6:14.1f} {ncalls / calls:11.1f}  "
            f"{func} ({where})"
        )


def write(path: Path, markdown: str) -> None:
    """Replace the text between this script's markers in `path` (append them if missing)."""
    text = path.read_text()
    if START not in text:
        text += f"\n{START}\n{END}\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    path.write_text(pattern.sub(lambda _: f"{START}\n{markdown}\n{END}", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    mode.add_argument(
        "--check", action="store_true", help="correctness assertions only: smallest sizes, 1 round"
    )
    parser.add_argument("--write", action="store_true", help=f"rewrite the block in {DOCS.name}")
    mode.add_argument(
        "--profile", action="store_true", help="cProfile the call of (b) instead of timing"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # TorchOpt 0.7 calls functorch.vjp, deprecated in torch 2.x; the warning is not ours.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torchopt")
    if args.profile:
        profile_small_call(2000)
        return 0
    start = time.perf_counter()
    if args.check:
        name, rounds, sizes = "check", {"a": 1, "b": 1, "c": 1, "d": 1}, [10_000]
    elif args.quick:
        name, rounds, sizes = "quick", {"a": 5, "b": 200, "c": 3, "d": 40}, [10_000, 100_000]
    else:
        name, rounds, sizes = "full", {"a": 20, "b": 3000, "c": 9, "d": 200}, [100_000, 1_000_000]
    cases = [
        *case_batching(64, rounds["a"]),
        case_small_call(rounds["b"]),
        *[case_scale(n, rounds["c"], native=n == sizes[0]) for n in sizes],
        case_transforms(rounds["d"]),
    ]
    for case in cases:
        measure(case, case.repeats)
    info = machine()
    info["core"] = core_state()
    info["total"] = f"{time.perf_counter() - start:.0f} s"
    markdown = render(cases, info, name)
    print()
    print(markdown)
    if args.write:
        if args.check or args.quick:
            parser.error("--write records a full run only")
        write(DOCS, markdown)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

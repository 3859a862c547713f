"""What a preconditioner would have to beat on the CPU: sketch costs and iterations to 1e-3.

Run from the repository root (about 4 minutes on one core):

    python benchmarks/preconditioner_probe.py            # print the tables
    python benchmarks/preconditioner_probe.py --write    # also update docs/benchmarks.md

For the logistic-regression and MLP problems of `hypergrad_bench.py` it measures

1. the CPU time of the Nyström sketch $H\\Omega$ as one batched (`is_grads_batched`) product
   and as a loop of single products, in units of one Hessian-vector product;
2. the iterations preconditioned CG needs for a relative hypergradient error of 1e-3, and
   the CPU time of building each preconditioner, for: `ig.NystromPreconditioner` on the
   exact Hessian; a Nyström sketch of the Hessian of the inner loss on a subsample of the
   training data (a cheaper operator: PCG still converges to the exact answer); a
   Kronecker-factored Gauss-Newton approximation (K-FAC, Martens & Grosse 2015, with the
   exact expectation over the model's predictive distribution and the known L2 curvature as
   damping); and, on logistic regression, the exact inverse of the Hessian on the examples
   with the most output curvature.

The preconditioners other than `NystromPreconditioner` are written here against the public
`ig.AbstractPreconditioner` contract; they are experiments, not part of the library.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _problems import Params, Problem, logistic, reweighting  # noqa: E402

import implicitgrad as ig  # noqa: E402
from implicitgrad._preconditioners.base import Cache  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- preconditioner-probe:start -->", "<!-- preconditioner-probe:end -->"
TARGET = 1e-3


@dataclass
class Operator:
    matvec: Callable[[torch.Tensor], torch.Tensor]
    batched: Callable[[torch.Tensor], torch.Tensor]
    size: int

    def linear_operator(self) -> ig.LinearOperator:
        return ig.LinearOperator(
            self.matvec,
            self.size,
            torch.float64,
            torch.device("cpu"),
            symmetric=True,
            batched_matvec=self.batched,
        )


def hessian_operator(loss: Callable[[Params, torch.Tensor], torch.Tensor], problem: Problem):
    """Hessian-vector products of `loss` at the problem's point, on one reused graph."""
    theta = [t.detach().requires_grad_(True) for t in problem.theta]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss(tuple(theta), problem.phi), theta, create_graph=True)
    sizes = [t.numel() for t in theta]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        parts = [c.view_as(t) for c, t in zip(v.split(sizes), theta)]
        hv = torch.autograd.grad(grads, theta, parts, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv])

    def batched(vs: torch.Tensor) -> torch.Tensor:
        k = vs.shape[0]
        parts = [c.reshape(k, *t.shape) for c, t in zip(vs.split(sizes, dim=1), theta)]
        hv = torch.autograd.grad(grads, theta, parts, retain_graph=True, is_grads_batched=True)
        return torch.cat([h.reshape(k, -1) for h in hv], dim=1)

    return Operator(matvec, batched, sum(sizes))


def cpu_ms(fn: Callable[[], object], repeats: int = 1) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best * 1e3


# ---------------------------------------------------------------------------------------------
# Preconditioners of the probe (the ig.AbstractPreconditioner contract).


@dataclass(frozen=True)
class Fixed(ig.AbstractPreconditioner):
    """A preconditioner built once by `make()` and reused for every solve of the probe."""

    make: Callable[[], Callable[[torch.Tensor], torch.Tensor]] = None  # type: ignore[assignment]
    refresh_every: int = 10**9
    refresh_growth: float | None = None
    _cache: Cache = field(default_factory=Cache, init=False, repr=False, compare=False)

    def build(self, operator: ig.LinearOperator) -> ig.BuiltPreconditioner:
        return ig.BuiltPreconditioner(self.make(), products=0)


def nystrom_apply(u: torch.Tensor, lam: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Frangella, Tropp & Udell's eq. (5.3) with mu = 0, as NystromPreconditioner applies it."""
    scale = lam[-1] / lam - 1.0
    return lambda v: torch.addmv(v, u, scale * (u.T @ v))


def kfac_apply(problem: Problem, damping: float, weights: torch.Tensor | None):
    """K-FAC for a chain of `x @ w + b` layers with tanh between them (both problems).

    Per layer, $A = \\mathbb{E}[\\bar a\\bar a^\\top]$ (inputs with a 1 for the bias) and
    $G = \\mathbb{E}[c_i\\, J_i^\\top (\\operatorname{diag} p_i - p_ip_i^\\top) J_i]$ (the
    exact expectation over the predictive distribution, one backward pass per class);
    $M^{-1} = (A\\otimes G + \\lambda I)^{-1}$ from the eigendecompositions of A and G.
    """
    theta = [t.detach() for t in problem.theta]
    x = problem.data["x_train"]
    n = x.shape[0]
    layers = list(zip(theta[0::2], theta[1::2]))
    pre, inputs = [], []
    a = x
    with torch.enable_grad():
        for i, (w, b) in enumerate(layers):
            inputs.append(a.detach())
            s = a @ w + b
            if i == 0:
                s = s.detach().requires_grad_(True)
            pre.append(s)
            a = torch.tanh(s) if i < len(layers) - 1 else s
        p = torch.softmax(a.detach(), dim=1)
        c = torch.ones(n, dtype=x.dtype) if weights is None else weights
        gs = [torch.zeros(w.shape[1], w.shape[1], dtype=x.dtype) for w, _ in layers]
        eye = torch.eye(p.shape[1], dtype=x.dtype)
        for k in range(p.shape[1]):
            column = p[:, k : k + 1].sqrt() * (eye[k] - p)
            grads = torch.autograd.grad(a, pre, column, retain_graph=True)
            for j, g in enumerate(grads):
                gs[j] += (g * c[:, None]).T @ g / n
    blocks = []
    for inp, g in zip(inputs, gs):
        ab = torch.cat([inp, torch.ones(n, 1, dtype=x.dtype)], dim=1)
        la, qa = torch.linalg.eigh(ab.T @ ab / n)
        lg, qg = torch.linalg.eigh(g)
        inv = 1.0 / (la.clamp_min(0)[:, None] * lg.clamp_min(0)[None, :] + damping)
        blocks.append((qa, qg, inv))

    def apply(v: torch.Tensor) -> torch.Tensor:
        # Row-major [w; b] of one layer is the flat layout of its two leaves.
        out, start = [], 0
        for qa, qg, inv in blocks:
            size = qa.shape[0] * qg.shape[0]
            block = v[start : start + size].view(qa.shape[0], qg.shape[0])
            start += size
            out.append((qa @ ((qa.T @ block @ qg) * inv) @ qg.T).reshape(-1))
        return torch.cat(out)

    return apply


def curvature_share(problem: Problem, m: int) -> float:
    """Logistic regression: the share of the output curvature $\\sum_i (1 - \\sum_c p_{ic}^2)$
    carried by the `m` examples of largest curvature."""
    w, b = problem.theta
    p = torch.softmax(problem.data["x_train"] @ w + b, dim=1)
    c = (1 - (p**2).sum(1)).sort(descending=True).values
    return float(c[:m].sum() / c.sum())


def importance_inverse(problem: Problem, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logistic regression: the exact inverse of the Hessian of the inner loss restricted to
    the `m` examples of largest output curvature $1 - \\sum_c p_c^2$ (dense Cholesky)."""
    x, y = problem.data["x_train"], problem.data["y_train"]
    w, b = problem.theta
    p = torch.softmax(x @ w + b, dim=1)
    idx = (1 - (p**2).sum(1)).argsort(descending=True)[:m]
    shapes = [t.shape for t in problem.theta]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        ww, bb = flat[:640].view(shapes[0]), flat[640:].view(shapes[1])
        ce = torch.nn.functional.cross_entropy(x[idx] @ ww + bb, y[idx], reduction="sum")
        return ce / len(y) + 0.5 * (problem.phi.exp() @ (ww**2).sum(1)) + 0.5e-4 * (bb**2).sum()

    flat = torch.cat([t.reshape(-1) for t in problem.theta])
    chol = torch.linalg.cholesky(torch.func.hessian(loss)(flat))
    return lambda v: torch.cholesky_solve(v[:, None], chol)[:, 0]


# ---------------------------------------------------------------------------------------------
# Measurements.


def iterations_to_target(problem: Problem, pc: ig.AbstractPreconditioner | None, grid) -> str:
    reference = problem.reference
    for k in grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ig.ConvergenceWarning)
            hg = ig.hypergrad(
                problem.inner_loss,
                problem.outer_loss,
                problem.theta,
                problem.phi,
                solver=ig.CG(max_iter=k, tol=0.0, preconditioner=pc),
                stationarity_tol=None,
            )
        if float((hg - reference).norm() / reference.norm()) <= TARGET:
            return str(k)
    return f"> {grid[-1]}"


def sketch_rows(name: str, problem: Problem, ranks: list[int]) -> list[str]:
    op = hessian_operator(problem.inner_loss, problem)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(op.size, generator=gen, dtype=torch.float64)
    single = cpu_ms(lambda: op.matvec(v), repeats=5)
    rows = []
    for r in ranks:
        omega = torch.randn(r, op.size, generator=gen, dtype=torch.float64)
        batched = cpu_ms(lambda: op.batched(omega))
        looped = cpu_ms(lambda: [op.matvec(omega[i]) for i in range(r)])
        rows.append(
            f"| {name} | {r} | {single:.2f} | {batched:.0f} ({batched / single:.0f}) | "
            f"{looped:.0f} ({looped / single:.0f}) |"
        )
        print(rows[-1], flush=True)
    return rows


def preconditioner_rows(name: str, problem: Problem, grid: list[int], configs) -> list[str]:
    rows = [f"| {name} | none (plain CG) | | {iterations_to_target(problem, None, grid)} |"]
    print(rows[-1], flush=True)
    for label, make in configs:
        start = time.thread_time()
        apply = make()
        build = (time.thread_time() - start) * 1e3
        pc = Fixed(make=lambda apply=apply: apply)
        rows.append(
            f"| {name} | {label} | {build:.0f} | {iterations_to_target(problem, pc, grid)} |"
        )
        print(rows[-1], flush=True)
    return rows


def nystrom_on(problem: Problem, loss, rank: int):
    def make():
        u, lam = ig.Nystrom(rank=rank, rho=0.0).factor(
            hessian_operator(loss, problem).linear_operator()
        )
        return nystrom_apply(u, lam)

    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    log, mlp = logistic(), reweighting()
    n_log = len(log.data["y_train"])
    sketch = [
        "| problem | sketch columns | one product (CPU ms) | batched: CPU ms (products) | "
        "loop: CPU ms (products) |",
        "|---|---:|---:|---:|---:|",
    ]
    sketch += sketch_rows("logistic", log, [20, 100, 200])
    sketch += sketch_rows("MLP", mlp, [10, 40])
    table = [
        "| problem | preconditioner | build (CPU ms) | PCG iterations to 1e-3 |",
        "|---|---|---:|---:|",
    ]
    log_configs = [
        (f"Nyström rank {r}, exact Hessian", nystrom_on(log, log.inner_loss, r))
        for r in (20, 100, 200)
    ]
    log_configs += [
        (
            f"Nyström rank {r}, first {m} of {n_log} examples",
            nystrom_on(log, log.inner_loss_on(m), r),
        )
        for r, m in ((100, 100), (200, 200))
    ]
    log_configs += [
        ("K-FAC (damping = L2 weight)", lambda: kfac_apply(log, log.curvature_floor, None)),
        *[
            (
                f"exact inverse on the {m} most uncertain examples "
                f"({curvature_share(log, m):.0%} of the output curvature)",
                lambda m=m: importance_inverse(log, m),
            )
            for m in (100, 200)
        ],
    ]
    table += preconditioner_rows("logistic", log, list(range(2, 60, 2)), log_configs)
    weights = 2 * torch.sigmoid(mlp.phi)
    mlp_configs = [
        ("Nyström rank 40, exact Hessian", nystrom_on(mlp, mlp.inner_loss, 40)),
        ("Nyström rank 100, first 50 of 500 examples", nystrom_on(mlp, mlp.inner_loss_on(50), 100)),
        (
            "K-FAC (damping = L2 + proximal weight)",
            lambda: kfac_apply(mlp, mlp.curvature_floor, weights),
        ),
    ]
    table += preconditioner_rows("MLP", mlp, list(range(4, 72, 4)), mlp_configs)
    markdown = "\n".join([*sketch, "", *table])
    print(markdown)
    if args.write:
        path = ROOT / "docs" / "benchmarks.md"
        text = path.read_text()
        block = f"{START}\n{markdown}\n{END}"
        text, count = re.subn(
            re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S
        )
        if count != 1:
            raise SystemExit(
                f"preconditioner_probe.py: error: no {START} ... {END} block in {path}"
            )
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The contenders: implicitgrad's solvers, TorchOpt's `custom_root`, and hand-written autograd.

Each contender is a function `hypergradient(problem, theta, phi, state) -> (hg, state, hvps)`
computing the hypergradient at `(theta, phi)` of `problem`'s losses. `state` carries what a
contender may reuse from its previous call (a warm start); `hvps` counts the Hessian-vector
products (or their equivalents) it spent.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from _problems import Params, Problem

import implicitgrad as ig

HypergradFn = Callable[[Problem, Params, torch.Tensor, Any], tuple[torch.Tensor, Any, int]]


@dataclass
class Contender:
    """One method at one setting: `family` groups a sweep over `setting` (iterations/rank)."""

    family: str
    setting: int
    run: HypergradFn
    library: str = "implicitgrad"
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.family} ({self.setting})"


# ---------------------------------------------------------------------------------------------
# implicitgrad


def implicitgrad_fn(solver: ig.AbstractSolver, warm: bool = False) -> HypergradFn:
    def run(problem: Problem, theta: Params, phi: torch.Tensor, state: Any):
        with warnings.catch_warnings():
            # A fixed iteration budget (tol=0) is the point of the sweep, not a mistake.
            warnings.simplefilter("ignore", ig.ConvergenceWarning)
            hg, info = ig.hypergrad(
                problem.inner_loss,
                problem.outer_loss,
                theta,
                phi,
                solver=solver,
                return_info=True,
                stationarity_tol=None,
                warm_start=state if warm else None,
            )
        return hg, info, info.iterations

    return run


# ---------------------------------------------------------------------------------------------
# Hand-written torch.autograd: the practical lower bound for the same work.


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def handwritten_cg_fn(iterations: int) -> HypergradFn:
    """IFT hypergradient with `iterations` CG steps, written directly against autograd.

    One gradient of $f$ with `create_graph=True` whose graph every Hessian-vector product
    reuses, CG on the list of leaves without any flattening, one mixed product at the end.
    """

    def run(problem: Problem, theta: Params, phi: torch.Tensor, state: Any):
        theta = [t.detach().requires_grad_(True) for t in theta]
        phi = phi.detach().requires_grad_(True)
        with torch.enable_grad():
            f = problem.inner_loss(tuple(theta), phi)
            grads = torch.autograd.grad(f, theta, create_graph=True)
            g = problem.outer_loss(tuple(theta), phi)
            *v, direct = torch.autograd.grad(g, [*theta, phi], allow_unused=True)
            x = [torch.zeros_like(t) for t in v]
            r = [t.clone() for t in v]
            p = [t.clone() for t in v]
            rs = _dot(r, r)
            for _ in range(iterations):
                hp = torch.autograd.grad(grads, theta, p, retain_graph=True)
                alpha = rs / _dot(p, hp)
                torch._foreach_add_(x, p, alpha=alpha)
                torch._foreach_sub_(r, torch._foreach_mul(hp, alpha))
                rs_new = _dot(r, r)
                p = torch._foreach_add(r, torch._foreach_mul(p, rs_new / rs))
                rs = rs_new
            (mixed,) = torch.autograd.grad(grads, phi, x)
        hg = -mixed if direct is None else direct - mixed
        return hg.detach(), None, iterations

    return run


# ---------------------------------------------------------------------------------------------
# TorchOpt


def torchopt_available() -> str | None:
    """TorchOpt's version, or `None` when it cannot be imported."""
    try:
        import torchopt
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return str(torchopt.__version__)


def torchopt_fn(kind: str, iterations: int, alpha: float = 1.0) -> HypergradFn:
    """`torchopt.diff.implicit.custom_root` with one of TorchOpt's linear solvers.

    The optimality condition is `torch.func.grad` of the inner loss, the form TorchOpt's
    documentation uses. `rtol=atol=0` makes every solver run exactly `iterations` steps.
    """
    import torchopt
    from torchopt import linear_solve

    if kind == "cg":
        solve = linear_solve.solve_cg(maxiter=iterations, rtol=0.0, atol=0.0)
        # TorchOpt's CG spends one product on the initial residual b - A x0.
        hvps = iterations + 1
    elif kind == "normal_cg":
        solve = linear_solve.solve_normal_cg(maxiter=iterations, rtol=0.0, atol=0.0)
        # A^T b, then A^T A p per iteration (a product and its transpose), plus A x0.
        hvps = 2 * iterations + 3
    elif kind == "ns":
        solve = linear_solve.solve_inv(ns=True, maxiter=iterations, alpha=alpha)
        hvps = iterations
    else:
        raise ValueError(f"unknown TorchOpt solver {kind!r}")

    def run(problem: Problem, theta: Params, phi: torch.Tensor, state: Any):
        optimality = torch.func.grad(problem.inner_loss, argnums=0)

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
        def solution(params: Params, meta: torch.Tensor) -> Params:
            return tuple(t.detach() for t in params)

        meta = phi.detach().requires_grad_(True)
        with torch.enable_grad():
            out = solution(tuple(t.detach() for t in theta), meta)
            (hg,) = torch.autograd.grad(problem.outer_loss(out, meta), meta)
        return hg.detach(), None, hvps

    return run


#: Sketch sizes of the Nyström-preconditioned CG contenders; the larger ones only for
#: problems below `SMALL` parameters (on the MLP a rank-100 build alone costs 100 products).
PRECONDITIONER_RANKS = (20, 100, 200)
SMALL = 2000


def build(
    problem: Problem, grid: list[int], alpha: float, rho: float, with_exact: bool
) -> list[Contender]:
    """Every contender at every setting of `grid`, with the same Neumann step `alpha`."""
    out: list[Contender] = []
    for k in grid:
        out.append(Contender("ig CG", k, implicitgrad_fn(ig.CG(max_iter=k, tol=0.0))))
        out.append(Contender("ig Neumann", k, implicitgrad_fn(ig.Neumann(terms=k, alpha=alpha))))
        out.append(Contender("ig Nystrom", k, implicitgrad_fn(ig.Nystrom(rank=k, rho=rho))))
        for rank in PRECONDITIONER_RANKS if problem.n_inner < SMALL else PRECONDITIONER_RANKS[:1]:
            # A fresh preconditioner per call: its construction is counted in every call.
            pcg = ig.CG(max_iter=k, tol=0.0, preconditioner=ig.NystromPreconditioner(rank=rank))
            out.append(
                Contender(f"ig CG + Nystrom preconditioner ({rank})", k, implicitgrad_fn(pcg))
            )
        pcg = ig.CG(max_iter=k, tol=0.0, preconditioner=ig.DiagonalPreconditioner(probes=10))
        out.append(Contender("ig CG + diagonal preconditioner (10)", k, implicitgrad_fn(pcg)))
        out.append(Contender("hand-written CG", k, handwritten_cg_fn(k), library="torch"))
    if torchopt_available() is not None:
        for k in grid:
            out.append(Contender("TorchOpt CG", k, torchopt_fn("cg", k), library="torchopt"))
            out.append(Contender("TorchOpt normal CG", k, torchopt_fn("normal_cg", k), "torchopt"))
            out.append(Contender("TorchOpt NS", k, torchopt_fn("ns", k, alpha), "torchopt"))
    out.append(Contender("ig Identity", 0, implicitgrad_fn(ig.Identity(scale=alpha))))
    if with_exact:
        out.append(Contender("ig Exact", problem.n_inner, implicitgrad_fn(ig.Exact())))
    return out

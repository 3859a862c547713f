"""Commentary hypergradients against central finite differences, in float64.

- Algorithm 1 (backpropagation through a few unrolled SGD steps) for the weighting
  commentary: the unrolled map φ ↦ L_V(θ_N(φ)) is smooth and computed exactly, so the
  two agree to finite-difference accuracy.
- Algorithm 2 with `ig.Exact()` on a strongly convex student (softmax regression with an
  L2 penalty, solved by Newton's method to machine precision), for both commentaries: the
  implicit function theorem is exact there.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from commentary_helpers import make_tiny
from implicitgrad_commentaries import AbstractCommentary, BlendingCommentary, WeightingCommentary
from implicitgrad_commentaries.learn import losses, unrolled_hypergrad
from implicitgrad_commentaries.models import make_student

import implicitgrad as ig
from implicitgrad.testing import finite_difference_hypergrad

F64 = torch.float64


def _data():
    return make_tiny(n=12, shape=(4,), classes=3, seed=1, dtype=F64, name="vec")


def _student(spec):
    fn, theta = ig.make_functional(make_student("linear", spec, seed=0).double(), detach=True)
    return fn, {k: v.detach() for k, v in theta.items()}


def _finite_differences(
    commentary: AbstractCommentary, value: Callable[[], float], eps: float
) -> dict[str, torch.Tensor]:
    """Central differences of `value()` in every entry of the commentary's parameters."""
    out = {}
    for name, p in commentary.phi().items():
        grad = torch.zeros_like(p)
        for j in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[j] += eps
            plus = value()
            with torch.no_grad():
                p.view(-1)[j] -= 2 * eps
            minus = value()
            with torch.no_grad():
                p.view(-1)[j] += eps
            grad.view(-1)[j] = (plus - minus) / (2 * eps)
        out[name] = grad
    return out


@pytest.mark.skipif(not hasattr(ig, "unroll"), reason="needs implicitgrad.unroll")
def test_weighting_unrolled_hypergrad_matches_finite_differences() -> None:
    data = _data()
    torch.manual_seed(0)
    commentary = WeightingCommentary(data.spec, teacher="mlp", hidden=3).double()
    with torch.no_grad():  # move the output layer off its tiny initial scale
        commentary.head.weight.normal_()
    fn, theta0 = _student(data.spec)
    batches = [(data.train.x, data.train.y, s) for s in range(4)]
    optimizer = ig.SGD(lr=0.5, momentum=0.5)

    def value() -> float:
        return unrolled_hypergrad(commentary, fn, theta0, batches, optimizer, data.val)[0]

    _, hg = unrolled_hypergrad(commentary, fn, theta0, batches, optimizer, data.val)
    fd = _finite_differences(commentary, value, eps=1e-6)
    for name in hg:
        # float64 central differences with eps=1e-6: truncation ~1e-12, rounding ~1e-10.
        torch.testing.assert_close(hg[name], fd[name], rtol=1e-6, atol=1e-9)
    assert any(float(v.abs().max()) > 1e-4 for v in hg.values()), "trivial hypergradient"


def _newton(inner: Callable, theta: dict[str, torch.Tensor], phi: dict) -> dict:
    """Minimize the strongly convex inner loss in θ to machine precision."""
    names = list(theta)
    shapes = [theta[k].shape for k in names]
    sizes = [theta[k].numel() for k in names]

    def unflat(v: torch.Tensor) -> dict:
        return {k: t.reshape(s) for k, t, s in zip(names, v.split(sizes), shapes)}

    def f(v: torch.Tensor) -> torch.Tensor:
        return inner(unflat(v), phi)

    v = torch.cat([theta[k].reshape(-1) for k in names]).detach()
    with torch.enable_grad():
        for _ in range(50):
            g = torch.autograd.functional.jacobian(f, v)
            if float(g.norm()) < 1e-13:
                break
            v = v - torch.linalg.solve(torch.autograd.functional.hessian(f, v), g)
    assert float(g.norm()) < 1e-11
    return unflat(v.detach())


@pytest.mark.parametrize("kind", ["weighting", "blending"])
def test_ift_with_exact_solver_matches_finite_differences(kind: str) -> None:
    data = _data()
    torch.manual_seed(0)
    if kind == "weighting":
        commentary = WeightingCommentary(data.spec, teacher="mlp", hidden=3).double()
        with torch.no_grad():
            commentary.head.weight.normal_()
    else:
        commentary = BlendingCommentary(data.spec).double()
        with torch.no_grad():
            commentary.matrix.add_(torch.randn(3, 3, dtype=F64))
    fn, theta0 = _student(data.spec)
    batch, val_batch = (data.train.x, data.train.y), (data.val.x, data.val.y)
    inner, outer = losses(commentary, fn, batch, val_batch, 0.5, seed=7, l2=0.1)
    phi = {k: v.detach() for k, v in commentary.phi().items()}
    theta_star = _newton(inner, theta0, phi)
    hg, info = ig.hypergrad(
        inner, outer, theta_star, phi, solver=ig.Exact(), return_info=True, stationarity_tol=1e-9
    )
    assert info.residual < 1e-10
    fd = finite_difference_hypergrad(lambda p: _newton(inner, theta_star, p), outer, phi, eps=1e-5)
    for name in hg:
        # Newton to |∇θ| < 1e-13 and eps=1e-5: FD error ~1e-10 + 1e-13/1e-5 = 1e-8.
        torch.testing.assert_close(hg[name], fd[name], rtol=1e-5, atol=1e-7)
    assert any(float(v.abs().max()) > 1e-4 for v in hg.values()), "trivial hypergradient"


def test_paper_estimator_is_a_one_term_neumann_series() -> None:
    """The paper's one-term Neumann estimate is biased; with many terms (and α below
    2/λmax) the same series reaches the exact hypergradient."""
    data = _data()
    commentary = BlendingCommentary(data.spec).double()
    fn, theta0 = _student(data.spec)
    batch, val_batch = (data.train.x, data.train.y), (data.val.x, data.val.y)
    inner, outer = losses(commentary, fn, batch, val_batch, 0.0, seed=3, l2=0.5)
    phi = {k: v.detach() for k, v in commentary.phi().items()}
    theta_star = _newton(inner, theta0, phi)
    exact = ig.hypergrad(inner, outer, theta_star, phi, solver=ig.Exact())["matrix"]
    kw = {"stationarity_tol": None}
    one = ig.hypergrad(inner, outer, theta_star, phi, ig.Neumann(terms=1, alpha=0.5), **kw)
    many = ig.hypergrad(inner, outer, theta_star, phi, ig.Neumann(terms=400, alpha=0.5), **kw)
    err_one = float((one["matrix"] - exact).norm() / exact.norm())
    err_many = float((many["matrix"] - exact).norm() / exact.norm())
    assert err_many < 1e-6 < err_one

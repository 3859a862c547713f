"""Hypergradients against central finite differences on real scikit-learn data (float64)."""

from __future__ import annotations

import torch
from helpers import rel_err
from sklearn.datasets import load_breast_cancer, load_digits

import implicitgrad as ig
from implicitgrad.testing import finite_difference_hypergrad, ridge_problem

F64 = torch.float64


def test_ridge_closed_form_and_finite_differences():
    prob = ridge_problem(60, 6, seed=3)
    for solver in [ig.Exact(), ig.CG(max_iter=50, tol=1e-12)]:
        hg = ig.hypergrad(
            prob.inner_loss, prob.outer_loss, prob.inner_params, prob.outer_params, solver
        )
        assert rel_err(hg, prob.exact_hypergrad()) < 1e-8
    fd = finite_difference_hypergrad(
        prob.inner_solution, prob.outer_loss, prob.outer_params, eps=1e-5
    )
    assert rel_err(hg, fd) < 1e-4


class LogReg:
    """Multinomial logistic regression, θ = (W, b), with per-feature log-L2 weights φ on W.

    A small fixed L2 on the bias removes the softmax shift invariance, so the Hessian is
    positive definite and θ*(φ) is unique.
    """

    def __init__(self, data, target, classes: int, n_train: int, n_val: int, seed: int):
        X = torch.as_tensor(data, dtype=F64)
        X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)
        y = torch.as_tensor(target)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        tr, va = perm[:n_train], perm[n_train : n_train + n_val]
        self.X, self.y, self.Xv, self.yv = X[tr], y[tr], X[va], y[va]
        self.d, self.k = X.shape[1], classes

    def inner_loss(self, theta, phi):
        W, b = theta
        ce = torch.nn.functional.cross_entropy(self.X @ W + b, self.y)
        return ce + 0.5 * (phi.exp()[:, None] * W**2).sum() + 1e-3 * (b**2).sum()

    def outer_loss(self, theta, phi):
        W, b = theta
        return torch.nn.functional.cross_entropy(self.Xv @ W + b, self.yv)

    def solve(self, phi, start=None):
        """Newton's method to ‖∇f‖ < 1e-11: finite differences with step ε need θ* far more
        accurate than ε² to resolve the derivative."""
        n_w = self.d * self.k
        unpack = lambda v: (v[:n_w].reshape(self.d, self.k), v[n_w:])  # noqa: E731
        flat = (
            torch.zeros(n_w + self.k, dtype=F64)
            if start is None
            else torch.cat([start[0].reshape(-1), start[1]])
        )
        f = lambda v: self.inner_loss(unpack(v), phi)  # noqa: E731
        for _ in range(50):
            g = torch.func.grad(f)(flat)
            if g.norm() < 1e-11:
                return unpack(flat)
            flat = flat - torch.linalg.solve(torch.func.hessian(f)(flat), g)
        raise AssertionError("Newton did not converge")


def test_logistic_regression_breast_cancer_finite_differences():
    data = load_breast_cancer()
    prob = LogReg(data.data, data.target, classes=2, n_train=300, n_val=269, seed=0)
    gen = torch.Generator().manual_seed(0)
    phi = torch.full((prob.d,), -3.0, dtype=F64) + 0.1 * torch.randn(
        prob.d, generator=gen, dtype=F64
    )
    theta = prob.solve(phi)
    hg, info = ig.hypergrad(
        prob.inner_loss,
        prob.outer_loss,
        theta,
        phi,
        ig.CG(max_iter=500, tol=1e-12),
        return_info=True,
    )
    assert info.converged and info.stationarity < 1e-9
    assert (
        rel_err(hg, ig.hypergrad(prob.inner_loss, prob.outer_loss, theta, phi, ig.Exact())) < 1e-8
    )
    fd = finite_difference_hypergrad(prob.solve, prob.outer_loss, phi, eps=1e-4)
    assert rel_err(hg, fd) < 1e-4


def test_logistic_regression_digits_directional_finite_differences():
    """Digits (64 features × 10 classes): full differences would take 128 inner solves, so
    the hypergradient is checked along random unit directions d: ⟨hg, d⟩ against
    [g(θ*(φ+εd), φ+εd) - g(θ*(φ-εd), φ-εd)] / 2ε."""
    data = load_digits()
    prob = LogReg(data.data, data.target, classes=10, n_train=500, n_val=400, seed=1)
    gen = torch.Generator().manual_seed(1)
    phi = torch.full((64,), -2.0, dtype=F64) + 0.2 * torch.randn(64, generator=gen, dtype=F64)
    theta = prob.solve(phi)
    hg = ig.hypergrad(prob.inner_loss, prob.outer_loss, theta, phi, ig.CG(max_iter=2000, tol=1e-12))
    eps = 1e-4
    for _ in range(4):
        d = torch.randn(64, generator=gen, dtype=F64)
        d = d / d.norm()
        plus = prob.outer_loss(prob.solve(phi + eps * d, theta), phi + eps * d)
        minus = prob.outer_loss(prob.solve(phi - eps * d, theta), phi - eps * d)
        fd = float(plus - minus) / (2 * eps)
        # Relative to the hypergradient's norm, so a near-orthogonal d cannot pass trivially
        # nor fail on rounding.
        assert abs(float(hg @ d) - fd) < 1e-4 * float(hg.norm())

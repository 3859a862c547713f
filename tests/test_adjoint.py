"""How to differentiate as objects: minimize and fixed_point with either adjoint, compiled
losses, and divergence of the inner training."""

from __future__ import annotations

import pytest
import torch

import implicitgrad as ig
from implicitgrad.testing import ridge_problem

F64 = torch.float64


def _ridge():
    prob = ridge_problem(60, 5, seed=3)
    return prob, (lambda w, phi, batch, step: prob.inner_loss(w, phi))


@pytest.mark.parametrize(
    "adjoint",
    [ig.ImplicitAdjoint(ig.CG(tol=1e-12)), ig.ImplicitAdjoint("exact"), ig.UnrollAdjoint()],
    ids=["implicit-cg", "implicit-exact", "unroll"],
)
def test_minimize_matches_the_closed_form(adjoint):
    prob, loss = _ridge()
    phi = prob.outer_params.clone().requires_grad_(True)
    # Gradient descent to convergence: both adjoints then give the IFT hypergradient.
    lr = 1.0 / float(torch.linalg.eigvalsh(prob._system(prob.outer_params)).max())
    theta = ig.minimize(
        loss, torch.zeros(5, dtype=F64), phi, None, ig.SGD(lr=lr), steps=3000, adjoint=adjoint
    )
    prob.outer_loss(theta, phi).backward()
    exact = prob.exact_hypergrad(prob.outer_params)
    # Gradient descent to |∇f| ~ 1e-13 leaves θ within rounding of θ*.
    assert torch.allclose(phi.grad, exact, rtol=1e-7, atol=1e-10)


def test_minimize_uses_the_last_batch_for_the_implicit_condition():
    torch.manual_seed(0)
    x = torch.randn(2, 30, 3, dtype=F64)
    y = torch.randn(2, 30, dtype=F64)

    def loss(w, lam, batch, step):
        xb, yb = batch
        return ((xb @ w - yb) ** 2).mean() + lam * (w**2).sum()

    lam = torch.tensor(0.3, dtype=F64, requires_grad=True)
    batches = [(x[i % 2], y[i % 2]) for i in range(400)]
    w = ig.minimize(
        loss,
        torch.zeros(3, dtype=F64),
        lam,
        batches,
        ig.SGD(lr=0.1),
        adjoint=ig.ImplicitAdjoint("exact", stationarity_tol=None),
    )
    w.sum().backward()
    last = batches[-1]
    ref = ig.hypergrad(
        lambda t, p: loss(t, p, last, 0),
        lambda t, p: t.sum(),
        w.detach(),
        lam.detach(),
        "exact",
        stationarity_tol=None,
    )
    assert torch.allclose(lam.grad, ref, rtol=1e-12)


def test_fixed_point_both_adjoints_match_the_closed_form():
    torch.manual_seed(1)
    a = torch.randn(6, 6, dtype=F64)
    a = 0.6 * a / torch.linalg.eigvals(a).abs().max()  # a non-symmetric contraction
    b = torch.randn(6, 2, dtype=F64)
    exact = b.T @ torch.linalg.solve((torch.eye(6, dtype=F64) - a).T, torch.ones(6, dtype=F64))
    for adjoint in [None, ig.ImplicitAdjoint("bicgstab"), ig.UnrollAdjoint()]:
        phi = torch.ones(2, dtype=F64, requires_grad=True)
        theta, info = ig.fixed_point(
            lambda t, p: a @ t + b @ p,
            torch.zeros(6, dtype=F64),
            phi,
            max_steps=400,
            tol=1e-14,
            adjoint=adjoint,
            return_info=True,
        )
        theta.sum().backward()
        assert info.converged
        # The series converges like 0.6^k: 400 steps are at rounding level.
        assert torch.allclose(phi.grad, exact, rtol=1e-9)


def test_fixed_point_default_refuses_nothing_and_cg_refuses_the_map():
    a = torch.tensor([[0.0, 0.5], [-0.5, 0.3]], dtype=F64)
    phi = torch.ones(2, dtype=F64, requires_grad=True)
    theta = ig.fixed_point(
        lambda t, p: a @ t + p,
        torch.zeros(2, dtype=F64),
        phi,
        max_steps=300,
        tol=1e-14,
        adjoint=ig.ImplicitAdjoint("cg"),
    )
    with pytest.raises(ig.InputError, match=r"`CG` assumes a symmetric operator"):
        theta.sum().backward()


def test_fixed_point_divergence_and_non_convergence():
    phi = torch.ones(2, dtype=F64, requires_grad=True)
    with pytest.raises(ig.DivergenceError, match=r"NaN or Inf at step \d+"):
        ig.fixed_point(lambda t, p: 1e200 * t + p, torch.ones(2, dtype=F64), phi, max_steps=50)
    with pytest.warns(ig.ConvergenceWarning, match=r"not converged after max_steps=3"):
        ig.fixed_point(lambda t, p: 0.9 * t + p, torch.zeros(2, dtype=F64), phi, max_steps=3)


def test_diverged_training_is_a_divergence_error_and_a_solver_error():
    _, loss = _ridge()
    phi = torch.tensor(0.0, dtype=F64, requires_grad=True)
    with pytest.raises(ig.DivergenceError, match=r"unrolled training diverged"):
        ig.minimize(
            lambda w, p, b, s: (w**2).sum() * 1e3 + p * w.sum(),
            torch.ones(3, dtype=F64),
            phi,
            None,
            ig.SGD(lr=10.0),
            steps=200,
        )
    assert issubclass(ig.DivergenceError, ig.SolverError)


def test_adjoint_arguments_are_checked():
    with pytest.raises(ig.InputError, match=r"`minimize\(adjoint=...\)` must be"):
        ig.minimize(
            lambda w, p, b, s: (w**2).sum(),
            torch.ones(1),
            None,
            None,
            ig.SGD(0.1),
            steps=1,
            adjoint="implicit",
        )
    with pytest.raises(ig.InputError, match=r"UnrollAdjoint\(truncate=...\)"):
        ig.UnrollAdjoint(truncate=0)
    with pytest.raises(ig.InputError, match=r"ImplicitAdjoint\(solver=...\)"):
        ig.ImplicitAdjoint(solver=3)


def test_compiled_inner_loss_is_differentiated_with_torch_func():
    """torch.compile'd losses cannot be differentiated twice by autograd; the products are
    then formed with torch.func and give the same hypergradient."""
    prob = ridge_problem(40, 4, seed=5)
    theta = prob.inner_solution(prob.outer_params)
    compiled = torch.compile(prob.inner_loss)
    args = (prob.outer_loss, theta, prob.outer_params)
    ref = ig.hypergrad(prob.inner_loss, *args, ig.CG(tol=1e-12))
    # A compiled function is unwrapped to its Python original (graph-reusing products); one
    # hidden in the caller's own function takes the torch.func fallback.
    hidden = lambda t, p: compiled(t, p)  # noqa: E731
    for loss in [compiled, hidden]:
        for solver in [ig.CG(tol=1e-12), ig.GMRES(tol=1e-12)]:
            hg = ig.hypergrad(loss, *args, solver)
            assert torch.allclose(hg, ref, rtol=1e-10)
    phi = prob.outer_params.clone().requires_grad_(True)
    prob.outer_loss(ig.implicit(compiled, theta, phi, ig.CG(tol=1e-12)), phi).backward()
    assert torch.allclose(phi.grad, ref, rtol=1e-10)


def test_fixed_point_with_a_gradient_step_update_and_symmetric_cg():
    """An update map that differentiates inside (θ - η∇f) works in every forward step, and
    declared symmetric it is solved with CG."""
    prob = ridge_problem(40, 4, seed=7)
    eta = 0.5 / float(torch.linalg.eigvalsh(prob._system(prob.outer_params)).max())

    def step(w, phi):
        (g,) = torch.autograd.grad(prob.inner_loss(w, phi), w, create_graph=True)
        return w - eta * g

    exact = prob.exact_hypergrad(prob.outer_params)
    for adjoint, symmetric in [(ig.ImplicitAdjoint("cg"), True), (None, False)]:
        phi = prob.outer_params.clone().requires_grad_(True)
        theta = ig.fixed_point(
            step,
            torch.zeros(4, dtype=F64),
            phi,
            max_steps=5000,
            tol=1e-15,
            adjoint=adjoint,
            symmetric=symmetric,
        )
        prob.outer_loss(theta, phi).backward()
        # Converged to rounding: the hypergradient is the closed form to the solver's tol.
        assert torch.allclose(phi.grad, exact, rtol=1e-5)


def test_minimize_errors_name_minimize():
    with pytest.raises(ig.DivergenceError, match=r"^`minimize`"):
        ig.minimize(
            lambda w, p, b, s: (w**2).sum() * 1e3 + p * w.sum(),
            torch.ones(3, dtype=F64),
            torch.tensor(0.0, dtype=F64, requires_grad=True),
            None,
            ig.SGD(lr=10.0),
            steps=200,
        )

"""Every bad input raises the documented error; numerical trouble is reported, not hidden."""

from __future__ import annotations

import pytest
import torch

import implicitgrad as ig
from implicitgrad.testing import random_quadratic

F64 = torch.float64


def quad(t, p):
    return 0.5 * 3.0 * (t**2).sum() - (t * p).sum()


def outer(t, p):
    return (t**2).sum()


THETA = torch.ones(3, dtype=F64) / 3
PHI = torch.ones(3, dtype=F64)


def test_non_scalar_losses():
    with pytest.raises(ig.InputError, match=r"`hypergrad`: inner_loss must return a scalar"):
        ig.hypergrad(lambda t, p: t * p, outer, THETA, PHI)
    with pytest.raises(ig.InputError, match=r"outer_loss must return a scalar.*\.mean\(\)"):
        ig.hypergrad(quad, lambda t, p: t, THETA, PHI)
    with pytest.raises(ig.InputError, match=r"must return a scalar torch.Tensor, got float"):
        ig.hypergrad(quad, lambda t, p: 1.0, THETA, PHI)


def test_structure_that_the_loss_does_not_expect():
    with pytest.raises(ig.InputError, match=r"calling inner_loss.*raised KeyError.*structure"):
        ig.hypergrad(lambda t, p: quad(t["w"], p), outer, {"v": THETA}, PHI)
    with pytest.raises(ig.InputError, match=r"calling outer_loss.*raised IndexError"):
        ig.hypergrad(quad, lambda t, p: (t[0] * t[1] * p).sum(), THETA.sum(), PHI)


def test_leaves_that_the_losses_do_not_use():
    with pytest.raises(ig.InputError, match=r"inner_loss does not depend on inner_params leaf"):
        ig.hypergrad(
            lambda t, p: quad(t[0], p), lambda t, p: (t[0] ** 2).sum(), (THETA, THETA.clone()), PHI
        )
    with pytest.raises(ig.InputError, match=r"outer_params leaf \['b'\] is used by neither"):
        ig.hypergrad(lambda t, p: quad(t, p["a"]), outer, THETA, {"a": PHI, "b": PHI})
    with pytest.raises(ig.InputError, match=r"inner_loss does not depend on outer_params"):
        ig.hypergrad(lambda t, p: (t**2).sum(), lambda t, p: (t**2).sum() + p.sum(), THETA, PHI)
    with pytest.raises(ig.InputError, match=r"outer_loss does not depend on inner_params"):
        ig.hypergrad(quad, lambda t, p: (p**2).sum(), THETA, PHI)


def test_non_floating_non_tensor_and_empty_inputs():
    with pytest.raises(ig.InputError, match=r"`hypergrad\(inner_params=...\)`.*dtype torch.int64"):
        ig.hypergrad(quad, outer, torch.ones(3, dtype=torch.long), PHI)
    with pytest.raises(ig.InputError, match=r"`hypergrad\(outer_params=...\)`.*type float"):
        ig.hypergrad(quad, outer, THETA, [1.0])
    with pytest.raises(ig.InputError, match=r"`hypergrad\(inner_params=...\)` received an empty"):
        ig.hypergrad(quad, outer, {}, PHI)
    with pytest.raises(ig.InputError, match=r"mixes dtypes/devices"):
        ig.hypergrad(
            lambda t, p: quad(t[0], p) + (t[1] ** 2).sum(), outer, (THETA, torch.ones(2)), PHI
        )


def test_implicit_needs_outer_params_that_require_grad():
    with pytest.raises(
        ig.InputError,
        match=r"`implicit\(outer_params=...\)` holds no tensor "
        r"with requires_grad=True",
    ):
        ig.implicit(quad, THETA, PHI)


def test_unknown_solver_and_invalid_settings():
    with pytest.raises(ig.InputError, match=r"`hypergrad\(solver=...\)` received 'lu'"):
        ig.hypergrad(quad, outer, THETA, PHI, solver="lu")
    for make, pattern in [
        (lambda: ig.CG(max_iter=0), r"`CG\(max_iter=...\)`"),
        (lambda: ig.CG(tol=-1.0), r"`CG\(tol=...\)`"),
        (lambda: ig.CG(damping=-1e-3), r"`CG\(damping=...\)`"),
        (lambda: ig.Neumann(terms=-1), r"`Neumann\(terms=...\)`"),
        (lambda: ig.Neumann(alpha=0.0), r"`Neumann\(alpha=...\)`"),
        (lambda: ig.Identity(scale=0.0), r"`Identity\(scale=...\)`"),
        (lambda: ig.Exact(max_size=0), r"`Exact\(max_size=...\)`"),
    ]:
        with pytest.raises(ig.InputError, match=pattern):
            make()


def test_string_shorthands_give_default_solvers():
    for name, cls in [
        ("cg", ig.CG),
        ("exact", ig.Exact),
        ("identity", ig.Identity),
        ("neumann", ig.Neumann),
    ]:
        _, info = ig.hypergrad(quad, outer, THETA, PHI, solver=name, return_info=True)
        assert info.solver == cls()


def indefinite(t, p):
    # Hessian diag(1, -1, 1): θ = 0 is a saddle point, stationary but not a minimum.
    return 0.5 * (t[0] ** 2 - t[1] ** 2 + t[2] ** 2) - (t * p).sum()


def test_cg_breakdown_on_indefinite_hessian():
    t = torch.tensor([1.0, -1.0, 1.0], dtype=F64)
    with pytest.raises(ig.SolverError, match=r"CG broke down.*p\^T H p = .*damping"):
        ig.hypergrad(indefinite, lambda t, p: t.sum(), t, PHI, ig.CG())
    # The dense solve handles the (nonsingular) indefinite system.
    hg = ig.hypergrad(indefinite, lambda t, p: t.sum(), t, PHI, ig.Exact())
    assert torch.allclose(hg, torch.tensor([1.0, -1.0, 1.0], dtype=F64))


def test_singular_hessian_is_reported():
    singular = lambda t, p: 0.5 * (t[0] ** 2) + 0.0 * (t[1] ** 2) - (t * p).sum()  # noqa: E731
    t = torch.tensor([1.0, 0.0], dtype=F64)
    with pytest.raises(ig.SolverError, match=r"Exact: the 2 x 2 system is singular"):
        ig.hypergrad(singular, lambda t, p: t.sum(), t, torch.ones(2, dtype=F64), ig.Exact())
    with pytest.raises(ig.SolverError, match=r"CG broke down"):
        ig.hypergrad(singular, lambda t, p: t.sum(), t, torch.ones(2, dtype=F64), ig.CG())


def test_nan_in_the_losses_is_named():
    # A NaN loss makes its gradient NaN: the error names the gradient and the leaf.
    nan_inner = lambda t, p: 0.5 * (t**2).sum() * torch.tensor(float("nan")) - (t * p).sum()  # noqa: E731
    for solver in [ig.CG(), ig.Neumann(terms=3, alpha=0.1), ig.Exact()]:
        with pytest.raises(
            ig.InputError,
            match=r"NaN in the gradient of inner_loss w\.r\.t\. inner_params\. inner_loss is not",
        ):
            ig.hypergrad(nan_inner, outer, THETA, PHI, solver, stationarity_tol=None)
    with pytest.raises(
        ig.InputError, match=r"(NaN|Inf) in the gradient of outer_loss w\.r\.t\. inner_params"
    ):
        ig.hypergrad(quad, lambda t, p: (t * float("inf")).sum(), THETA, PHI, ig.Identity())


def test_nan_in_a_product_only_is_a_solver_error():
    # The gradient is finite but the curvature is not: only the products see the NaN.
    for solver in [ig.CG(), ig.GMRES(), ig.Neumann(terms=3, alpha=0.1)]:
        with pytest.raises(ig.SolverError, match=r"non-finite \(NaN/Inf\)"):
            ig.hypergrad(
                lambda t, p: quad(t, p) + _nan_curvature(t),
                outer,
                THETA,
                PHI,
                solver,
                stationarity_tol=None,
            )


class _NanCurvature(torch.autograd.Function):
    """x ↦ 0 with a zero gradient whose own derivative is NaN."""

    @staticmethod
    def forward(x):
        return x.new_zeros(())

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _NanGrad.apply(x, g)


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(x, g):
        return torch.zeros_like(x) * g

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, gg):
        return torch.full_like(gg, float("nan")), None


def _nan_curvature(t):
    return _NanCurvature.apply(t)


def test_diverging_neumann_series():
    # H = 3I: the series needs alpha < 2/3.
    with pytest.raises(ig.SolverError, match=r"Neumann series diverges.*alpha=1.000e\+00"):
        ig.hypergrad(quad, outer, THETA, PHI, ig.Neumann(terms=10, alpha=1.0))


def test_cg_not_converged_warns_with_numbers():
    prob = random_quadratic(30, 2, condition=1e4, seed=0)
    with pytest.warns(
        ig.ConvergenceWarning,
        match=r"relative residual .* after 3 Hessian-vector products \(max_iter=3\)",
    ):
        _, info = ig.hypergrad(
            prob.inner_loss,
            prob.outer_loss,
            prob.inner_params,
            prob.outer_params,
            ig.CG(max_iter=3, tol=1e-12),
            return_info=True,
        )
    assert info.converged is False and info.iterations == 3 and info.residual > 1e-12


def test_stationarity_warning_and_opt_out():
    far = THETA + 1.0
    with pytest.warns(ig.StationarityWarning, match=r"\|∇θ inner_loss\| = 5\.196e\+00"):
        ig.hypergrad(quad, outer, far, PHI)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ig.hypergrad(quad, outer, far, PHI, stationarity_tol=None)


def test_fixed_point_update_errors():
    def bad_shape(t, p):
        return t[:2]

    with pytest.raises(
        ig.InputError,
        match=r"update\(inner_params, outer_params\) must return "
        r"a tree with the same structure",
    ):
        ig.fixed_point_hypergrad(bad_shape, outer, THETA, PHI)

    def detached(t, p):
        with torch.no_grad():
            return t - 0.1 * (3 * t - p)

    with pytest.raises(ig.InputError, match=r"no gradient path.*create_graph=True"):
        ig.fixed_point_hypergrad(detached, outer, THETA, PHI)


def test_bad_warm_start():
    with pytest.raises(ig.InputError, match=r"`hypergrad\(warm_start=...\)`.*shape \(3,\)"):
        ig.hypergrad(quad, outer, THETA, PHI, warm_start=torch.zeros(5, dtype=F64))


def test_exact_refuses_huge_problems():
    with pytest.raises(ig.InputError, match=r"`Exact\(\)` would materialize a 3 x 3 matrix"):
        ig.hypergrad(quad, outer, THETA, PHI, ig.Exact(max_size=2))


def test_errors_share_a_base_class():
    assert issubclass(ig.InputError, ig.ImplicitGradError)
    assert issubclass(ig.InputError, ValueError)
    assert issubclass(ig.SolverError, ig.ImplicitGradError)
    assert issubclass(ig.SolverError, RuntimeError)

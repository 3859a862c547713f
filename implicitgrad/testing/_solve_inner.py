"""Inner problems solved to tight tolerances with scipy's trust-region Newton methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._errors import InputError, SolverError
from .._tree import Tree, flatten, ravel, unflatten, unravel

__all__ = ["solve_inner"]

_METHODS = ("trust-exact", "trust-ncg", "L-BFGS-B")


def solve_inner(
    inner_loss: Callable[[Any, Any], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree,
    *,
    tol: float = 1e-12,
    max_iter: int = 200,
    method: str = "trust-exact",
) -> Tree:
    """Minimize $\\theta \\mapsto f(\\theta, \\phi)$ to a gradient norm below `tol`, in float64.

    A reference solver for tests: it calls `scipy.optimize.minimize` in float64 with the
    exact gradient and Hessian of $f$ from autograd, and checks the result itself. With
    the default trust-region Newton method (`"trust-exact"`, Moré & Sorensen 1983; Nocedal
    & Wright, *Numerical Optimization*, Algorithm 4.3) a smooth, locally strongly convex
    problem converges quadratically, so `tol=1e-12` costs a handful of iterations more than
    `tol=1e-6`. That accuracy is what
    [`finite_difference_hypergrad`][implicitgrad.testing.finite_difference_hypergrad]
    needs: its error includes the inner error divided by its step $\\varepsilon$.

    !!! tip
        `"trust-exact"` forms the dense Hessian ($\\dim\\theta$ Hessian-vector products per
        iteration); for more than a few thousand parameters use `"trust-ncg"` (Steihaug CG),
        which only takes Hessian-vector products.

    **Arguments:**

    - `inner_loss`: `inner_loss(θ, φ) -> scalar`, twice differentiable in θ.
    - `inner_params`: the starting point θ₀ (a tensor or a tree of tensors).
    - `outer_params`: φ, held fixed.
    - `tol`: the gradient norm to reach (default `1e-12`), measured in float64.
    - `max_iter`: the iteration budget of the scipy method (default `200`).
    - `method`: `"trust-exact"` (default), `"trust-ncg"` or `"L-BFGS-B"`.

    **Returns:**

    $\\theta^*(\\phi)$ with the structure, dtype and device of `inner_params`, detached.

    **Raises:**

    [`SolverError`][implicitgrad.SolverError] when $\\lVert\\nabla_\\theta f\\rVert$ is still
    at least `tol` at the end, with the norm reached.

    **Example:**

    ```python
    import torch
    from implicitgrad.testing import solve_inner

    def inner_loss(w, lam):  # a smooth, non-quadratic problem
        return torch.logsumexp(w, 0) + 0.5 * lam * (w**2).sum() - w[0]

    lam = torch.tensor(0.1, dtype=torch.float64)
    w = solve_inner(inner_loss, torch.zeros(3, dtype=torch.float64), lam)
    g = torch.func.grad(inner_loss)(w, lam)
    assert g.norm() < 1e-12
    ```
    """
    call = "solve_inner"
    if method not in _METHODS:
        raise InputError(f"`{call}(method=...)` must be one of {_METHODS}, got {method!r}.")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise InputError(f"`{call}(tol=...)` must be a positive number, got {tol!r}.")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise InputError(f"`{call}(max_iter=...)` must be a positive integer, got {max_iter!r}.")
    leaves, spec = flatten(inner_params, call=call, name="inner_params")
    like = [leaf.detach().to(torch.float64) for leaf in leaves]
    phi_leaves, phi_spec = flatten(outer_params, call=call, name="outer_params")
    phi = unflatten(phi_spec, [p.detach().to(torch.float64) for p in phi_leaves])
    device = like[0].device

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        return inner_loss(unflatten(spec, unravel(x, like)), phi)

    def as_tensor(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float64, device=device)

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        t = as_tensor(x).requires_grad_(True)
        value = loss_of(t)
        (grad,) = torch.autograd.grad(value, t)
        return float(value.detach()), grad.cpu().numpy()

    def hessp(x: np.ndarray, p: np.ndarray) -> np.ndarray:
        _, hvp = torch.autograd.functional.hvp(loss_of, as_tensor(x), as_tensor(p))
        return hvp.cpu().numpy()

    def hess(x: np.ndarray) -> np.ndarray:
        return torch.autograd.functional.hessian(loss_of, as_tensor(x)).cpu().numpy()

    x0 = ravel(like).cpu().numpy()
    # Callers such as finite_difference_hypergrad run under torch.no_grad(); the gradient
    # and Hessian of f still come from autograd.
    with torch.enable_grad():
        x, norm, result = _minimize(fun, hess, hessp, x0, tol=tol, max_iter=max_iter, method=method)
    if not norm < tol:
        raise SolverError(
            f"`{call}(method={method!r})` stopped after {result.nit} iterations with "
            f"|grad f| = {norm:.3g}, not below tol={tol:g} (scipy: {result.message}). Raise "
            "`max_iter`, start closer, try method='trust-exact', or loosen `tol` if the "
            "loss cannot be evaluated that accurately in float64."
        )
    solution = unravel(as_tensor(x), like)
    return unflatten(spec, [s.to(leaf.dtype) for s, leaf in zip(solution, leaves)])


def _minimize(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    hess: Callable[[np.ndarray], np.ndarray],
    hessp: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x0: np.ndarray,
    *,
    tol: float,
    max_iter: int,
    method: str,
) -> tuple[np.ndarray, float, Any]:
    """scipy's method from `x0`, then Newton polish: the point, its gradient norm, scipy's
    result."""
    # scipy is imported here, not with the package: it takes seconds to import, and
    # `import implicitgrad` (which imports `implicitgrad.testing`) should not pay for it.
    import scipy.optimize

    options: dict[str, Any] = {"maxiter": max_iter}
    kwargs: dict[str, Any] = {}
    if method == "L-BFGS-B":
        # L-BFGS-B stops on the largest gradient entry and the relative decrease of f; both
        # are switched to their tightest so that only the caller's norm check decides.
        options.update(gtol=tol / np.sqrt(x0.size), ftol=0.0, maxcor=30)
    elif method == "trust-exact":
        options["gtol"] = tol
        kwargs["hess"] = hess
    else:
        options["gtol"] = tol
        kwargs["hessp"] = hessp
    result = scipy.optimize.minimize(fun, x0, jac=True, method=method, options=options, **kwargs)
    newton_step = _dense_step(hess) if method == "trust-exact" else _krylov_step(hessp)
    x, norm = _polish(fun, newton_step, result.x, tol)
    return x, norm, result


def _polish(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    newton_step: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    tol: float,
    steps: int = 8,
) -> tuple[np.ndarray, float]:
    """Plain Newton steps on $\\nabla f = 0$ from where scipy stopped.

    Departs from the textbook trust-region loop: near the minimum the change in $f$ falls
    below float64 rounding of $f$ itself, the trust-region ratio becomes noise and scipy
    stops ("A bad approximation caused failure to predict improvement") with
    $\\lVert\\nabla f\\rVert$ around 1e-11. Newton's step needs only the gradient and
    the Hessian, which stay accurate there, and converges quadratically. A step is kept
    only while it lowers the gradient norm.
    """
    _, grad = fun(x)
    norm = float(np.linalg.norm(grad))
    for _ in range(steps):
        if norm < tol:
            break
        step = newton_step(x, -grad)
        _, trial_grad = fun(x + step)
        trial = float(np.linalg.norm(trial_grad))
        if not trial < norm:
            break
        x, grad, norm = x + step, trial_grad, trial
    return x, norm


def _dense_step(hess: Callable[[np.ndarray], np.ndarray]):
    import scipy.linalg

    def step(x: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        return scipy.linalg.solve(hess(x), rhs, assume_a="sym")

    return step


def _krylov_step(hessp: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    import scipy.sparse.linalg

    # MINRES: the Hessian may be indefinite away from the minimum.
    def step(x: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        op = scipy.sparse.linalg.LinearOperator(
            (x.size, x.size), matvec=lambda v: hessp(x, v), dtype=np.float64
        )
        return scipy.sparse.linalg.minres(op, rhs, rtol=1e-14, maxiter=10 * x.size)[0]

    return step

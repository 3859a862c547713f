"""The three benchmark problems, each with its inner solver and a trusted hypergradient.

Every problem presents its inner parameters as a tuple of tensors and its outer parameters
as one tensor, so that every contender (implicitgrad, TorchOpt, hand-written autograd)
receives exactly the same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import implicitgrad as ig
from implicitgrad.testing import ridge_problem

Params = tuple[torch.Tensor, ...]
DTYPE = torch.float64


@dataclass
class Problem:
    """A bilevel problem at (approximately) its inner solution.

    - `inner_loss(θ, φ)`, `outer_loss(θ, φ)`: scalar losses; θ is a tuple of tensors.
    - `theta`, `phi`: the point; `theta` solves the inner problem for `phi`.
    - `reference`: the trusted hypergradient at that point, and how it was obtained.
    - `solve_inner(φ, θ0, steps)`: re-solve the inner problem from `θ0` (for outer loops).
    - `curvature_floor`: the regularization strength, a lower scale of the Hessian's
      eigenvalues (used as Nyström's `rho`).
    - `inner_loss_on(m)`: the inner loss on the first `m` training examples only (same
      regularization), a cheaper operator to build a preconditioner on.
    - `data`: the training inputs and labels (`x_train`, `y_train`), for structured
      approximations of the Hessian in `preconditioner_probe.py`.
    """

    name: str
    inner_loss: Callable[[Params, torch.Tensor], torch.Tensor]
    outer_loss: Callable[[Params, torch.Tensor], torch.Tensor]
    theta: Params
    phi: torch.Tensor
    reference: torch.Tensor
    reference_kind: str
    solve_inner: Callable[[torch.Tensor, Params, int], Params]
    curvature_floor: float
    inner_loss_on: Callable[[int], Callable[[Params, torch.Tensor], torch.Tensor]] | None = None
    data: dict[str, torch.Tensor] | None = None

    @property
    def n_inner(self) -> int:
        return sum(t.numel() for t in self.theta)


def lbfgs(
    loss: Callable[[Params], torch.Tensor], theta0: Params, steps: int, tol: float = 1e-10
) -> Params:
    """Full-batch L-BFGS with strong-Wolfe line search, run for at most `steps` iterations."""
    params = [t.detach().clone().requires_grad_(True) for t in theta0]
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=steps,
        history_size=20,
        tolerance_grad=tol,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss(tuple(params))
        value.backward()
        return value

    opt.step(closure)
    return tuple(p.detach() for p in params)


def grad_norm(loss: Callable[[Params], torch.Tensor], theta: Params) -> float:
    params = [t.detach().requires_grad_(True) for t in theta]
    grads = torch.autograd.grad(loss(tuple(params)), params)
    return float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])))


def _digits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=DTYPE)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return x[perm], y[perm]


def _standardize(x_train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-3)
    return [(x - mean) / std for x in (x_train, *others)]


# ---------------------------------------------------------------------------------------------
# (1) Ridge regression with one L2 weight per feature.


def ridge(n_samples: int = 250, n_features: int = 200, log_l2: float = -6.9) -> Problem:
    prob = ridge_problem(n_samples, n_features, seed=0)
    phi = torch.full((n_features,), log_l2, dtype=DTYPE)

    def inner(theta: Params, phi: torch.Tensor) -> torch.Tensor:
        return prob.inner_loss(theta[0], phi)

    def outer(theta: Params, phi: torch.Tensor) -> torch.Tensor:
        return prob.outer_loss(theta[0])

    def solve_inner(phi: torch.Tensor, theta0: Params, steps: int) -> Params:
        return (prob.inner_solution(phi),)

    return Problem(
        name=f"ridge ({n_features} features)",
        inner_loss=inner,
        outer_loss=outer,
        theta=(prob.inner_solution(phi),),
        phi=phi,
        reference=prob.exact_hypergrad(phi),
        reference_kind="closed form",
        solve_inner=solve_inner,
        curvature_floor=float(torch.exp(torch.tensor(log_l2))),
    )


# ---------------------------------------------------------------------------------------------
# (2) Multinomial logistic regression on digits with per-feature L2.


def logistic(n_train: int = 1000, log_l2: float = -6.0) -> Problem:
    x, y = _digits(seed=0)
    x_train, x_val = _standardize(x[:n_train], x[n_train:])
    y_train, y_val = y[:n_train], y[n_train:]
    n_features, n_classes = x.shape[1], 10

    def inner_on(m: int) -> Callable[[Params, torch.Tensor], torch.Tensor]:
        xs, ys = x_train[:m], y_train[:m]

        def loss(theta: Params, phi: torch.Tensor) -> torch.Tensor:
            w, b = theta
            ce = torch.nn.functional.cross_entropy(xs @ w + b, ys)
            # The bias gets a small fixed L2 weight so that the Hessian is nonsingular.
            return ce + 0.5 * (phi.exp() @ (w**2).sum(1)) + 0.5e-4 * (b**2).sum()

        return loss

    inner = inner_on(n_train)

    def outer(theta: Params, phi: torch.Tensor) -> torch.Tensor:
        w, b = theta
        return torch.nn.functional.cross_entropy(x_val @ w + b, y_val)

    def solve_inner(phi: torch.Tensor, theta0: Params, steps: int) -> Params:
        return lbfgs(lambda t: inner(t, phi), theta0, steps, tol=1e-12) if steps else theta0

    phi = torch.full((n_features,), log_l2, dtype=DTYPE)
    zeros = (torch.zeros(n_features, n_classes, dtype=DTYPE), torch.zeros(n_classes, dtype=DTYPE))
    theta = solve_inner(phi, zeros, 2000)
    return Problem(
        name="logistic regression (digits)",
        inner_loss=inner,
        outer_loss=outer,
        theta=theta,
        phi=phi,
        reference=dense_reference(inner, outer, theta, phi),
        reference_kind="dense solve",
        solve_inner=solve_inner,
        curvature_floor=float(torch.exp(torch.tensor(log_l2))),
        inner_loss_on=inner_on,
        data={"x_train": x_train, "y_train": y_train},
    )


def dense_reference(
    inner: Callable[[Params, torch.Tensor], torch.Tensor],
    outer: Callable[[Params, torch.Tensor], torch.Tensor],
    theta: Params,
    phi: torch.Tensor,
) -> torch.Tensor:
    """$-(\\partial^2 f/\\partial\\phi\\partial\\theta) H^{-1} \\nabla_\\theta g$ from a dense
    Hessian built by `torch.func`, independently of implicitgrad's code path."""
    shapes = [t.shape for t in theta]
    sizes = [t.numel() for t in theta]

    def split(flat: torch.Tensor) -> Params:
        return tuple(p.reshape(s) for p, s in zip(flat.split(sizes), shapes))

    flat = torch.cat([t.reshape(-1) for t in theta])
    grad_theta = torch.func.grad(lambda f, p: inner(split(f), p), argnums=0)
    hessian = torch.func.jacfwd(grad_theta, argnums=0)(flat, phi)
    mixed = torch.func.jacfwd(grad_theta, argnums=1)(flat, phi)
    v = torch.func.grad(lambda f: outer(split(f), phi))(flat)
    direct = torch.func.grad(lambda p: outer(theta, p))(phi)
    return direct - mixed.T @ torch.linalg.solve(hessian, v)


# ---------------------------------------------------------------------------------------------
# (3) Data reweighting of an MLP on digits: one weight per training example.


def mlp_forward(theta: Params, x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2, w3, b3 = theta
    h = torch.tanh(x @ w1 + b1)
    h = torch.tanh(h @ w2 + b2)
    return h @ w3 + b3


def reweighting(
    n_train: int = 500,
    n_val: int = 500,
    noise: float = 0.3,
    weight_decay: float = 1e-2,
    proximal: float = 1e-2,
    inner_steps: int = 600,
) -> Problem:
    x, y = _digits(seed=1)
    x_train, x_val = _standardize(x[:n_train], x[n_train : n_train + n_val])
    y_train, y_val = y[:n_train].clone(), y[n_train : n_train + n_val]
    gen = torch.Generator().manual_seed(2)
    flip = torch.rand(n_train, generator=gen) < noise
    y_train[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    anchor: list[Params] = []

    def training_loss(theta: Params, phi: torch.Tensor, m: int = n_train) -> torch.Tensor:
        xs, ys, ps = (
            (x_train, y_train, phi) if m == n_train else (x_train[:m], y_train[:m], phi[:m])
        )
        ce = torch.nn.functional.cross_entropy(mlp_forward(theta, xs), ys, reduction="none")
        l2 = sum((t**2).sum() for t in theta)
        return (2 * torch.sigmoid(ps) * ce).mean() + 0.5 * weight_decay * l2

    def inner_on(m: int) -> Callable[[Params, torch.Tensor], torch.Tensor]:
        def loss(theta: Params, phi: torch.Tensor) -> torch.Tensor:
            # A proximal term anchored at the current inner solution (as in iMAML) changes
            # neither the solution nor the gradient there, and adds `proximal` to every
            # Hessian eigenvalue: a network trained for finitely many steps keeps slightly
            # negative curvature (about -2e-3 here), on which no CG-type method is defined.
            prox = sum(((t - a) ** 2).sum() for t, a in zip(theta, anchor[-1]))
            return training_loss(theta, phi, m) + 0.5 * proximal * prox

        return loss

    inner = inner_on(n_train)

    def outer(theta: Params, phi: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(mlp_forward(theta, x_val), y_val)

    def solve_inner(phi: torch.Tensor, theta0: Params, steps: int) -> Params:
        theta = theta0
        if steps > 0:
            theta = lbfgs(lambda t: training_loss(t, phi), theta0, steps, tol=1e-9)
        anchor.append(theta)
        del anchor[:-1]
        return theta

    gen = torch.Generator().manual_seed(3)
    sizes = [(64, 256), (256,), (256, 256), (256,), (256, 10), (10,)]
    init = tuple(
        torch.randn(s, generator=gen, dtype=DTYPE) * (s[0] ** -0.5 if len(s) == 2 else 0.0)
        for s in sizes
    )
    phi = torch.zeros(n_train, dtype=DTYPE)
    theta = solve_inner(phi, init, inner_steps)
    return Problem(
        name="MLP data reweighting (digits)",
        inner_loss=inner,
        outer_loss=outer,
        theta=theta,
        phi=phi,
        reference=cg_reference(inner, outer, theta, phi),
        reference_kind="CG, 1e-10 residual",
        solve_inner=solve_inner,
        curvature_floor=weight_decay + proximal,
        inner_loss_on=inner_on,
        data={"x_train": x_train, "y_train": y_train},
    )


def cg_reference(
    inner: Callable[[Params, torch.Tensor], torch.Tensor],
    outer: Callable[[Params, torch.Tensor], torch.Tensor],
    theta: Params,
    phi: torch.Tensor,
) -> torch.Tensor:
    """The hypergradient with CG run to a relative residual of 1e-10 in float64."""
    return ig.hypergrad(
        inner,
        outer,
        theta,
        phi,
        solver=ig.CG(max_iter=20_000, tol=1e-10),
        stationarity_tol=None,
    )


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "ridge": ridge,
    "logistic": logistic,
    "reweighting": reweighting,
}

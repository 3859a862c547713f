"""Learn one L2 weight per feature of a logistic regression by implicit differentiation.

Inner problem: multinomial logistic regression on scikit-learn's digits with penalty
½ Σ_j exp(φ_j) ‖W_j‖². Outer problem: validation cross-entropy. Each outer step solves the
inner problem (warm-started L-BFGS), then `ig.implicit` turns the solution into a
differentiable function of φ and Adam updates φ.

Run: python examples/l2_hyperparameters.py [--steps 30]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import implicitgrad as ig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="outer (hyperparameter) steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    dtype = torch.float64

    data = load_digits()
    X = torch.as_tensor(data.data, dtype=dtype)
    X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)
    y = torch.as_tensor(data.target)
    perm = torch.randperm(len(y))
    # A small training set makes regularization matter.
    tr, va, te = perm[:200], perm[200:700], perm[700:]
    d, k = X.shape[1], 10

    def inner_loss(theta, phi):
        W, b = theta["W"], theta["b"]
        ce = F.cross_entropy(X[tr] @ W + b, y[tr])
        return ce + 0.5 * (phi.exp()[:, None] * W**2).sum() + 1e-4 * (b**2).sum()

    def loss_on(theta, idx):
        return F.cross_entropy(X[idx] @ theta["W"] + theta["b"], y[idx])

    def accuracy(theta, idx):
        return float(((X[idx] @ theta["W"] + theta["b"]).argmax(1) == y[idx]).double().mean())

    theta = {"W": torch.zeros(d, k, dtype=dtype), "b": torch.zeros(k, dtype=dtype)}

    def solve_inner(phi):
        params = [theta["W"].clone().requires_grad_(), theta["b"].clone().requires_grad_()]
        opt = torch.optim.LBFGS(
            params,
            max_iter=200,
            tolerance_grad=1e-9,
            tolerance_change=0.0,
            line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            loss = inner_loss({"W": params[0], "b": params[1]}, phi)
            loss.backward()
            return loss

        for _ in range(10):
            opt.step(closure)
            g = torch.autograd.grad(inner_loss({"W": params[0], "b": params[1]}, phi), params)
            if max(float(x.abs().max()) for x in g) < 1e-7:
                break
        return {"W": params[0].detach(), "b": params[1].detach()}

    phi = torch.full((d,), -3.0, dtype=dtype, requires_grad=True)
    outer_opt = torch.optim.Adam([phi], lr=0.2)
    start = time.perf_counter()
    theta = solve_inner(phi.detach())
    print(
        f"before: validation loss {float(loss_on(theta, va)):.4f}, "
        f"test accuracy {accuracy(theta, te):.4f}"
    )
    for step in range(args.steps):
        theta = solve_inner(phi.detach())
        theta_star = ig.implicit(inner_loss, theta, phi, ig.CG(max_iter=500, tol=1e-6))
        val = loss_on(theta_star, va)
        outer_opt.zero_grad()
        val.backward()
        outer_opt.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}: validation loss {float(val.detach()):.4f}")
    theta = solve_inner(phi.detach())
    print(
        f"after:  validation loss {float(loss_on(theta, va)):.4f}, "
        f"test accuracy {accuracy(theta, te):.4f} "
        f"({time.perf_counter() - start:.1f} s, L2 weights from "
        f"{float(phi.detach().exp().min()):.3g} to {float(phi.detach().exp().max()):.3g})"
    )


if __name__ == "__main__":
    main()

"""How far is the paper's one-term Neumann hypergradient from the exact IFT one?

Trains a student (an MLP, or softmax regression) on digits with the blending commentary
(Algorithm 2 schedule) and, at several points of training, computes the blending
hypergradient on one training and one validation batch with several solvers (inner loss
with weight decay `L2`). Reports the cosine similarity and relative norm of each against the
dense `ig.Exact()` solve of the same linear system, and the time each took.

    python plugins/commentaries/experiments/solver_agreement.py [mlp|linear]
"""

from __future__ import annotations

import sys
import time
import warnings

import torch
from implicitgrad_commentaries import BlendingCommentary
from implicitgrad_commentaries.data import load_digits_dataset
from implicitgrad_commentaries.learn import losses
from implicitgrad_commentaries.models import make_student

import implicitgrad as ig

LR = 0.1
# Digits has pixels that are zero in every image, so the MLP's Hessian is singular without
# a regularizer; with this weight decay the exact solve is well defined.
L2 = 1e-3
SOLVERS = {
    "Identity(α) [K=0]": ig.Identity(scale=LR),
    "Neumann(K=1, α) [paper]": ig.Neumann(terms=1, alpha=LR),
    "Neumann(K=10, α)": ig.Neumann(terms=10, alpha=LR),
    "Neumann(K=100, α)": ig.Neumann(terms=100, alpha=LR),
    "CG(20 iters)": ig.CG(max_iter=20, tol=1e-10),
}


def main(arch: str) -> None:
    torch.manual_seed(0)
    data = load_digits_dataset()
    commentary = BlendingCommentary(data.spec)
    with torch.no_grad():  # a non-trivial matrix, as after some learning
        commentary.matrix.add_(torch.randn_like(commentary.matrix))
    phi = {k: v.detach() for k, v in commentary.phi().items()}
    fn, theta = ig.make_functional(make_student(arch, data.spec, seed=0, hidden=32), detach=True)
    opt = torch.optim.SGD(theta.values(), lr=LR, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in SOLVERS}
    checkpoints = (25, 100, 300, 600)
    for step in range(1, max(checkpoints) + 1):
        idx = torch.randint(len(data.train), (64,), generator=gen)
        vidx = torch.randint(len(data.val), (64,), generator=gen)
        batch = (data.train.x[idx], data.train.y[idx])
        val = (data.val.x[vidx], data.val.y[vidx])
        inner, outer = losses(commentary, fn, batch, val, step / 600, seed=step, l2=L2)
        opt.zero_grad()
        inner(theta, phi).backward()
        opt.step()
        if step not in checkpoints:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ig.ConvergenceWarning)
            t0 = time.perf_counter()
            exact = ig.hypergrad(inner, outer, theta, phi, ig.Exact(), stationarity_tol=None)
            t_exact = time.perf_counter() - t0
        ref = exact["matrix"].flatten()
        print(f"step {step}: exact solve {t_exact:.2f}s, |hg| = {float(ref.norm()):.3e}")
        for name, solver in SOLVERS.items():
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ig.ConvergenceWarning)
                    hg = ig.hypergrad(inner, outer, theta, phi, solver, stationarity_tol=None)
            except ig.SolverError as err:
                print(f"  {name:26s} failed: {str(err)[:90]}")
                rows[name].append((float("nan"), float("nan"), float("nan")))
                continue
            elapsed = time.perf_counter() - t0
            est = hg["matrix"].flatten()
            cos = float(torch.nn.functional.cosine_similarity(est, ref, dim=0))
            rel = float(est.norm() / ref.norm())
            rows[name].append((cos, rel, elapsed))
            print(f"  {name:26s} cos {cos:+.3f}  |est|/|exact| {rel:.3e}  {1e3 * elapsed:.1f} ms")
    print("\n| solver | " + " | ".join(f"cos @ step {s}" for s in checkpoints) + " |")
    print("|---" * (len(checkpoints) + 1) + "|")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{c:+.2f}" for c, _, _ in values) + " |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1] if len(sys.argv) > 1 else "mlp")

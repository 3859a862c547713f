"""What a torch.compile'd inner loss costs in `hypergrad`, for docs/concepts.md.

Run from the repository root: `python docs/scripts/compile_overhead.py` (each size runs in
a fresh process, so that torch.compile's caches do not carry over). The timings are CPU time
of the calling thread (torch runs on one thread), which other processes on a shared machine
disturb less than wall-clock time; they depend on the machine, the ratios are the point.

An eager inner loss takes the default path: its gradient graph is built once and every
Hessian-vector product reuses it. A compiled loss has an AOTAutograd backward, which autograd
cannot differentiate again, so `hypergrad` differentiates the Python function behind the
`torch.compile` wrapper; compiled code hidden inside a caller's function would instead make
it form the products with torch.func. The script measures, on
f(w, φ) = mean((tanh(X w) - y)²) + Σ e^φ w² with n = 10 d samples, at its minimizer:

- `eager`: the default, graph-reusing path;
- `eager, torch.func products`: the same loss with the products forced onto the torch.func
  path (by a private hook: what compiled code inside a closure gets);
- `compiled`: `torch.compile(inner_loss)`, the first `hypergrad` call on it and the calls
  after it;

and whether the compiled function still runs compiled code after `hypergrad` has used it.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time

import torch

import implicitgrad as ig
from implicitgrad import _problem

F64 = torch.float64


@contextlib.contextmanager
def torch_func_products():
    """Make the graph-reusing operator fail as it does for a compiled loss (private API)."""
    original = _problem.Condition.operator

    def operator(self):
        op = original(self)

        def matvec(v):
            raise _problem.NoDoubleBackward("forced by compile_overhead.py")

        return ig.LinearOperator(matvec, op.size, op.dtype, op.device, symmetric=op.symmetric)

    _problem.Condition.operator = operator
    try:
        yield
    finally:
        _problem.Condition.operator = original


def is_compiled(fn, *args) -> bool:
    """Whether `fn` runs code compiled by AOTAutograd (judged by its output's grad_fn)."""
    args = [a.detach().requires_grad_(True) for a in args]
    return "Compiled" in type(fn(*args).grad_fn).__name__


def measure(d: int, repeats: int = 21) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = 10 * d
    X, y = torch.randn(n, d, dtype=F64), torch.randn(n, dtype=F64)
    X_val, y_val = torch.randn(n, d, dtype=F64), torch.randn(n, dtype=F64)

    def inner_loss(w, log_l2):
        return ((torch.tanh(X @ w) - y) ** 2).mean() + (log_l2.exp() * w**2).sum()

    def outer_loss(w, log_l2):
        return ((X_val @ w - y_val) ** 2).mean()

    log_l2 = torch.full((d,), -1.0, dtype=F64)
    w = torch.zeros(d, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w], max_iter=500, tolerance_grad=1e-12, tolerance_change=0, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = inner_loss(w, log_l2)
        loss.backward()
        return loss

    opt.step(closure)
    w = w.detach()
    solver = ig.CG(max_iter=500, tol=1e-10)

    def timed(fn):
        start = time.thread_time()
        hg, info = ig.hypergrad(fn, outer_loss, w, log_l2, solver, return_info=True)
        return hg, info, time.thread_time() - start

    ref, info, _ = timed(inner_loss)
    with torch_func_products():
        hg_func, _, _ = timed(inner_loss)
    compiled = torch.compile(inner_loss)
    start = time.thread_time()
    before = is_compiled(compiled, w, log_l2)  # its first call compiles it
    compilation = time.thread_time() - start
    hg_comp, _, first = timed(compiled)
    after = is_compiled(compiled, w, log_l2)
    # Interleaved, so that a change in the machine's load affects all three alike.
    times: dict[str, list[float]] = {"eager": [], "func": [], "later": []}
    for _ in range(repeats):
        times["eager"].append(timed(inner_loss)[2])
        with torch_func_products():
            times["func"].append(timed(inner_loss)[2])
        times["later"].append(timed(compiled)[2])
    eager, func, later = (statistics.median(times[k]) for k in ("eager", "func", "later"))

    def rel(hg):
        return float((hg - ref).norm() / ref.norm())

    print(f"d={d}: {info.iterations} Hessian-vector products per call")
    print(f"  eager (graph reuse)         {eager * 1e3:8.2f} ms per call")
    print(
        f"  eager, torch.func products  {func * 1e3:8.2f} ms per call "
        f"({func / eager:.2f}x; rel. difference {rel(hg_func):.0e})"
    )
    print(f"  torch.compile's compilation {compilation * 1e3:8.0f} ms (its first call)")
    print(
        f"  compiled, first hypergrad   {first * 1e3:8.2f} ms ({first / eager:.2f}x; "
        f"rel. difference {rel(hg_comp):.0e})"
    )
    print(f"  compiled, later calls       {later * 1e3:8.2f} ms per call ({later / eager:.2f}x)")
    print(f"  the compiled function runs compiled code: before {before}, after {after}")


def main() -> None:
    if len(sys.argv) > 1:
        measure(int(sys.argv[1]))
        return
    print(f"torch {torch.__version__}, thread CPU time, one thread, median of 21 calls")
    for d in (20, 200):
        subprocess.run([sys.executable, __file__, str(d)], check=True)


if __name__ == "__main__":
    main()

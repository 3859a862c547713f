"""A limited-memory preconditioner from the products of earlier solves (no products of its
own)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._errors import InputError
from .._solvers.base import LinearOperator
from .base import AbstractPreconditioner, BuiltPreconditioner, Cache, check_refresh

__all__ = ["RecycledPreconditioner", "nystrom_from_pairs"]


@dataclass
class _Store:
    """The recorded products: rows `0..count-1` of the first half of `rows` are the vectors,
    the same rows of the second half their products (a ring of `memory` pairs)."""

    rows: torch.Tensor | None = None
    count: int = 0
    next: int = 0


def nystrom_from_pairs(
    gram_ss: torch.Tensor, gram_sy: torch.Tensor, gram_yy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Nyström approximation $\\hat A = Y^\\top(SY^\\top)^+Y = U\\Lambda U^\\top$ from the
    Gram matrices $SS^\\top$, $SY^\\top$, $YY^\\top$ of $k$ vectors (the rows of $S$) and
    their products (the rows of $Y = SA$): returns `coef` with $U = Y^\\top$`coef` and
    $\\Lambda$ (descending), with $O(k^3)$ work.

    The vectors are scaled to unit length and orthonormalized through their Gram matrix,
    dropping directions that are numerically dependent on the others (and zero vectors);
    eigenvalues of the symmetrized core $\\Omega^\\top A\\Omega$ below
    $\\sqrt\\epsilon\\,\\lambda_{\\max}$ (rounding, or negative curvature) are dropped, which
    realizes the pseudo-inverse. $\\hat A$ is positive semi-definite even when the pairs come
    from slightly different operators.
    """
    cut = torch.finfo(gram_ss.dtype).eps ** 0.5
    empty = gram_ss.new_zeros((gram_ss.shape[0], 0)), gram_ss.new_zeros((0,))

    def kept(values: torch.Tensor) -> torch.Tensor | None:
        # Every direction can be dropped (zero vectors, only negative curvature): then
        # there is nothing to precondition with.
        if values.numel() == 0 or float(values[-1]) <= 0.0:
            return None
        keep = values > float(values[-1]) * cut
        return keep

    norms = gram_ss.diagonal().sqrt()
    live = norms > 0
    d = torch.where(live, 1.0 / torch.where(live, norms, 1.0), 0.0)
    values, vectors = torch.linalg.eigh(d[:, None] * gram_ss * d[None, :])
    if (keep := kept(values)) is None:
        return empty
    whiten = d[:, None] * (vectors[:, keep] / values[keep].sqrt())  # Ω = Sᵀ·whiten
    core = whiten.T @ gram_sy @ whiten  # ΩᵀAΩ
    values, vectors = torch.linalg.eigh(0.5 * (core + core.T))
    if (keep := kept(values)) is None:
        return empty
    mix = whiten @ (vectors[:, keep] / values[keep].sqrt())  # Â = BBᵀ with B = Yᵀ·mix
    squares, right = torch.linalg.eigh(mix.T @ gram_yy @ mix)  # BᵀB
    if (keep := kept(squares)) is None:
        return empty
    coef = mix @ (right[:, keep] / squares[keep].sqrt())
    return coef.flip(1), squares[keep].flip(0)


# Before two products are kept, or when every kept pair is dropped.
_NOTHING_YET = BuiltPreconditioner(torch.clone, products=0, details={"rank": 0}, is_identity=True)


@dataclass(frozen=True)
class RecycledPreconditioner(AbstractPreconditioner):
    """Preconditioner built from the products CG already made in earlier solves.

    Every product $y = Av$ that CG computes is kept, the last `memory` of them, and the next
    solve is preconditioned with the Nyström approximation of the operator on their span,
    $\\hat A = Y(S^\\top Y)^{+}Y^\\top = U\\Lambda U^\\top$, applied as in
    [`NystromPreconditioner`][implicitgrad.NystromPreconditioner] (Frangella, Tropp &
    Udell, 2023, eq. 5.3 with $\\mu = 0$). It spends no products of its own: the
    limited-memory preconditioners of Morales & Nocedal (*Automatic preconditioning by
    limited memory quasi-Newton updating*, SIAM J. Optim. 10(4), 2000) and Gratton,
    Sartenaer & Tshimanga (*On a class of limited memory preconditioners for large scale
    linear systems with multiple right-hand sides*, SIAM J. Optim. 21(3), 2011) recycle the
    Krylov information of one solve for the next in the same way. It is meant for a
    sequence of related systems: the hypergradients of an outer optimization, solved with
    the same solver object and `warm_start=info`. The first solve runs unpreconditioned.

    The pairs of earlier outer steps come from slightly different operators; $\\hat A$ is
    still positive semi-definite (negative and rounding-level curvature of the core is
    dropped), so $M$ is symmetric positive definite and CG stays exact: a stale sketch only
    costs iterations. A build is one pass of $O(nk^2)$ over the kept products (their Gram
    matrices) and a copy of them; an application costs two passes over $k$ vectors. It holds
    $3k$ vectors of size $n$ (the kept pairs, and the copy the current build applies).

    **Arguments:**

    - `memory`: $k \\ge 2$, how many of the latest products to keep (default 20).
    - `refresh_every`, `refresh_growth`: reuse of a build across solves, see
      [`AbstractPreconditioner`][implicitgrad.AbstractPreconditioner]; the default builds
      for every solve from the latest products (the build is cheap).

    **Example:**

    ```python
    import torch, implicitgrad as ig
    torch.manual_seed(0)
    Q = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64)).Q
    eig = torch.cat([torch.logspace(2, 4, 8), torch.linspace(1, 2, 52)]).double()
    A = Q @ torch.diag(eig) @ Q.T
    solver = ig.CG(tol=1e-10, preconditioner=ig.RecycledPreconditioner(memory=40))
    op = ig.LinearOperator(lambda v: A @ v, 60, torch.float64, torch.device("cpu"),
                           symmetric=True)
    first = solver.solve(op, torch.randn(60, dtype=torch.float64))   # records its products
    second = solver.solve(op, torch.randn(60, dtype=torch.float64))  # preconditioned by them
    assert second.preconditioner_products == 0
    assert second.iterations < first.iterations
    ```
    """

    memory: int = 20
    refresh_every: int = 1
    refresh_growth: float | None = None
    _cache: Cache = field(default_factory=Cache, init=False, repr=False, compare=False)
    _store: _Store = field(default_factory=_Store, init=False, repr=False, compare=False)

    records_products = True

    def __post_init__(self) -> None:
        name = "RecycledPreconditioner"
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 2:
            raise InputError(
                f"`{name}(memory=...)` must be an int >= 2 (products kept), got {self.memory!r}."
            )
        check_refresh(name, self.refresh_every, self.refresh_growth)

    def record(self, v: torch.Tensor, av: torch.Tensor) -> None:
        store, k = self._store, self.memory
        rows = store.rows
        if (
            rows is None
            or rows.shape[1] != v.numel()
            or rows.dtype != v.dtype
            or rows.device != v.device
        ):
            store.rows = rows = torch.empty(2 * k, v.numel(), dtype=v.dtype, device=v.device)
            store.count = store.next = 0
        rows[store.next].copy_(v.detach())
        rows[k + store.next].copy_(av.detach())
        store.next = (store.next + 1) % k
        store.count = min(store.count + 1, k)

    @property
    def recorded(self) -> int:
        """How many products are held for the next build (at most `memory`)."""
        return self._store.count

    def build(self, operator: LinearOperator) -> BuiltPreconditioner:
        store, k = self._store, self.memory
        rows = store.rows
        if (
            rows is None
            or store.count < 2
            or rows.shape[1] != operator.size
            or rows.dtype != operator.dtype
            or rows.device != operator.device
        ):
            return _NOTHING_YET
        n = store.count
        if n == k:
            gram = rows @ rows.T  # one pass over the full ring
            grams = gram[:k, :k], gram[:k, k:], gram[k:, k:]
        else:
            s, y = rows[:n], rows[k : k + n]
            grams = s @ s.T, s @ y.T, y @ y.T
        coef, lam = nystrom_from_pairs(*grams)
        if lam.numel() == 0:
            return _NOTHING_YET
        # The ring keeps filling during the solve: M must not change, so keep a copy of Y.
        # U = Yᵀ coef is applied through Y (two passes over k rows, no n × k matrix formed).
        y = rows[k : k + n].clone()
        scale = lam[-1] / lam - 1.0

        def apply(v: torch.Tensor) -> torch.Tensor:
            return torch.addmv(v, y.T, coef @ (scale * (coef.T @ (y @ v))))

        details = {"rank": int(lam.numel()), "eigenvalues": lam.detach()}
        return BuiltPreconditioner(apply, products=0, details=details)

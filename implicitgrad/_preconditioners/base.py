"""The preconditioner contract: built from an operator, applied as $M^{-1}v$, reused across
outer steps on a schedule."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._errors import InputError
from .._solvers.base import LinearOperator

__all__ = ["AbstractPreconditioner", "BuiltPreconditioner", "Cache", "check_refresh"]


@dataclass(frozen=True)
class BuiltPreconditioner:
    """A preconditioner built for one operator: call it on a flat vector for $M^{-1}v$.

    **Fields:**

    - `apply`: `v ↦ M⁻¹ v`, symmetric positive definite, for a flat vector of the
      operator's size. It returns a new tensor and does not change `v`.
    - `products`: matrix-vector products with the operator spent to build it.
    - `details`: what the build found, for diagnostics (for example the rank and the
      captured eigenvalues of a Nyström preconditioner, the clamped entries of a diagonal
      one).
    - `is_identity`: `apply` is the identity (nothing to precondition with yet); CG then
      runs its plain iteration.
    """

    apply: Callable[[torch.Tensor], torch.Tensor]
    products: int
    details: dict[str, Any] = field(default_factory=dict)
    is_identity: bool = False

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.apply(v)


@dataclass
class Cache:
    """The last build of a preconditioner and what the solves after it needed (mutable,
    private to the preconditioner object that owns it)."""

    built: BuiltPreconditioner | None = None
    key: tuple | None = None
    age: int = 0
    baseline: int | None = None
    last: int | None = None
    builds: int = 0


def check_refresh(name: str, refresh_every: Any, refresh_growth: Any) -> None:
    """Validate the reuse fields every preconditioner shares."""
    if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
        raise InputError(
            f"`{name}(refresh_every=...)` must be a positive int (1 builds the preconditioner "
            f"for every solve), got {refresh_every!r}."
        )
    if refresh_growth is not None and not (
        isinstance(refresh_growth, (int, float)) and refresh_growth >= 1.0
    ):
        raise InputError(
            f"`{name}(refresh_growth=...)` must be None or a float >= 1 (rebuild when a solve "
            f"needs that many times the iterations of the first solve after the last build), "
            f"got {refresh_growth!r}."
        )


class AbstractPreconditioner(abc.ABC):
    """Base class of the preconditioners of [`CG`][implicitgrad.CG].

    **Contract.** A preconditioner is a small frozen dataclass whose fields are its
    settings, validated in `__post_init__`. It implements one method,

    `build(operator) -> BuiltPreconditioner`,

    which spends some products with the symmetric positive-definite
    [`LinearOperator`][implicitgrad.LinearOperator] `operator` (the system CG solves, damping
    included) and returns a [`BuiltPreconditioner`][implicitgrad.BuiltPreconditioner]: the
    map $v \\mapsto M^{-1}v$ for a symmetric positive-definite $M \\approx A$, with the
    number of products it spent. It must not keep a reference to the operator's graph in
    the map it returns (the map may outlive the call, see below). Any SPD $M$ keeps CG
    exact; a better $M$ only makes it converge in fewer iterations.

    **Reuse across outer steps.** Every preconditioner has two more fields,
    `refresh_every` (default 1: build for every solve) and `refresh_growth` (default 1.5).
    With `refresh_every=k > 1` the object keeps its last build and CG reuses it for the
    next solves on an operator of the same size, dtype and device: the Hessian of an outer
    optimization changes slowly, and a preconditioner built a few outer steps ago is still
    SPD, so the solve stays exact and only its iteration count can grow. It is rebuilt
    after `k` solves, or as soon as a solve needs more than `refresh_growth` times the
    iterations of the first solve after the last build. Pass the same solver object to
    every outer step (combine it with `warm_start=info`). The products of a build are
    counted in the solve that made it: in
    [`HypergradInfo.iterations`][implicitgrad.HypergradInfo] and, separately, in
    `HypergradInfo.preconditioner_products`.

    **Recording products.** A preconditioner that sets the class attribute
    `records_products = True` is handed every product $Av$ CG computes, through
    `record(v, av)`, to build its next preconditioner from (as
    [`RecycledPreconditioner`][implicitgrad.RecycledPreconditioner] does, with no products
    of its own).

    !!! warning
        The reused build is held by the preconditioner object, so one object should serve
        one sequence of related systems. Two unrelated problems of the same size sharing a
        preconditioner with `refresh_every > 1` still get exact answers, but slowly.
    """

    refresh_every: int
    refresh_growth: float | None
    _cache: Cache

    #: Whether CG hands this preconditioner every product it makes (`record`), as
    #: [`RecycledPreconditioner`][implicitgrad.RecycledPreconditioner] needs.
    records_products: bool = False

    def record(self, v: torch.Tensor, av: torch.Tensor) -> None:
        """Called by CG with each product $Av$ it computes when `records_products` is set
        (the tensors may be reused by CG afterwards: copy what you keep)."""

    @abc.abstractmethod
    def build(self, operator: LinearOperator) -> BuiltPreconditioner:
        """Build $M^{-1}$ for `operator` (no reuse: that is `prepare`'s)."""

    def prepare(self, operator: LinearOperator) -> tuple[BuiltPreconditioner, int]:
        """The build to use for this solve and the products spent on it now (0 if reused)."""
        cache = self._cache
        key = (operator.size, operator.dtype, operator.device)
        stale = (
            cache.built is None
            or cache.key != key
            or cache.age >= self.refresh_every
            or (
                self.refresh_growth is not None
                and cache.baseline is not None
                and cache.last is not None
                and cache.last > self.refresh_growth * max(cache.baseline, 1)
            )
        )
        if not stale:
            cache.age += 1
            assert cache.built is not None
            return cache.built, 0
        built = self.build(operator)
        if self.refresh_every > 1:
            cache.built, cache.key = built, key
        cache.age, cache.baseline, cache.last = 1, None, None
        cache.builds += 1
        return built, built.products

    def observe(self, iterations: int) -> None:
        """Record the iterations a solve with the current build needed (CG calls it)."""
        cache = self._cache
        if cache.baseline is None:
            cache.baseline = iterations
        cache.last = iterations

    @property
    def builds(self) -> int:
        """How many times this object has built its preconditioner so far."""
        return self._cache.builds

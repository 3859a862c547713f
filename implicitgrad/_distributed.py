"""Data-parallel hypergradients: every process holds a shard of the data.

The global losses are the means over processes of the local ones,
$f = \\frac1W\\sum_r f_r$ and $g = \\frac1W\\sum_r g_r$ ($W$ processes, equal shards). Every
quantity the solvers see is linear in the local terms, so one `all_reduce` of the local
terms gives the global one: the gradients, every Hessian- or Jacobian-vector product
($Hv = \\frac1W\\sum_r H_r v$, one `all_reduce` of $n$ floats per product), the outer
gradient $v$ and the mixed product. Every process then runs the same solver iterations on
identical numbers, so every host-side decision (a tolerance test, a breakdown) is the same
on all of them and the collectives stay in step.

Why not `DistributedDataParallel`: its reducer averages gradients in hooks on the
parameters' accumulation and does not support the double backward that
Hessian-vector products need (`create_graph=True` through the wrapped module), so the
reduction is placed on the products themselves instead. Only `torch.distributed`
collectives are used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._errors import InputError
from ._solvers.base import LinearOperator

__all__ = ["DataParallel", "Reducer", "bind"]


@dataclass(frozen=True)
class DataParallel:
    """Run a hypergradient data-parallel over the processes of a `torch.distributed` group.

    Each process holds a shard of the inner (training) and outer (validation) data and
    passes losses over its shard; the global losses are the means over processes of the
    local ones (so the shards should be of equal size, or the local losses weighted by
    $W n_r / N$). Gradients, every Hessian- or Jacobian-vector product, the outer gradient
    and the mixed product are averaged with `torch.distributed.all_reduce`; the solver sees
    the global operator and every process computes the same iterations and the same
    hypergradient. One product costs one `all_reduce` of $n$ floats ($n$ inner
    parameters).

    Outer parameters are **shared** (the same tensor on every process, such as a teacher
    network: their gradient is averaged) unless named in `sharded`: a sharded leaf lives
    with its process's shard (per-example weights of the local examples) and receives only
    its local term, scaled by $1/W$, exactly its slice of the global gradient.

    **Arguments:**

    - `group`: the process group (default `None`: the default group set up by
      `torch.distributed.init_process_group`, e.g. under `torchrun`).
    - `sharded`: which outer-parameter leaves are sharded: `True` for all of them, or a
      tuple of the top-level keys (dict keys or sequence positions) of `outer_params` whose
      leaves are; default `()`: all shared.

    Pass it as `data_parallel=` to [`hypergrad`][implicitgrad.hypergrad],
    [`fixed_point_hypergrad`][implicitgrad.fixed_point_hypergrad],
    [`implicit`][implicitgrad.implicit], [`minimize`][implicitgrad.minimize],
    [`fixed_point`][implicitgrad.fixed_point] and [`unroll`][implicitgrad.unroll].

    !!! warning
        `hypergrad` and `fixed_point_hypergrad` return the global hypergradient. The
        autograd paths (`implicit`, `minimize`, `unroll`, `fixed_point`) leave in each
        process's `.grad` its own contribution, as a local `backward()` does: call
        [`reduce_grads`][implicitgrad.DataParallel.reduce_grads] on the outer parameters
        after `backward()` to turn the contributions into the global gradient.

    **Example** (run under `torchrun --nproc_per_node=2`):

    ```python
    import torch, torch.distributed as dist, implicitgrad as ig
    dp = ig.DataParallel()
    if dist.is_initialized():
        X, y = torch.randn(8, 3), torch.randn(8)       # this process's shard
        inner = lambda w, lam: ((X @ w - y) ** 2).mean() + lam * (w ** 2).sum()
        outer = lambda w, lam: ((X @ w - y) ** 2).mean()
        hg = ig.hypergrad(inner, outer, torch.zeros(3), torch.tensor(0.1),
                          stationarity_tol=None, data_parallel=dp)
    ```
    """

    group: Any = None
    sharded: bool | tuple[str | int, ...] = ()

    def __post_init__(self) -> None:
        sharded = self.sharded
        if isinstance(sharded, list):
            sharded = tuple(sharded)
            object.__setattr__(self, "sharded", sharded)
        if not isinstance(sharded, (bool, tuple)) or (
            isinstance(sharded, tuple) and not all(isinstance(k, (str, int)) for k in sharded)
        ):
            raise InputError(
                "`DataParallel(sharded=...)` must be True, False or a tuple of the top-level "
                f"keys of outer_params whose leaves are sharded, got {self.sharded!r}."
            )

    @property
    def world_size(self) -> int:
        """The number of processes $W$ in the group."""
        return _dist(call="DataParallel.world_size").get_world_size(self.group)

    def reduce_grads(self, outer_params: Any) -> None:
        """Turn each process's contribution in the outer parameters' `.grad` into the
        global gradient, in place: shared leaves are averaged (one `all_reduce` for all of
        them), sharded leaves scaled by $1/W$. Leaves without `.grad` are skipped.

        Call it on every process after `backward()` through
        [`implicit`][implicitgrad.implicit], [`minimize`][implicitgrad.minimize],
        [`unroll`][implicitgrad.unroll] or [`fixed_point`][implicitgrad.fixed_point], as
        `DistributedDataParallel` would have done after a first-order backward.
        """
        reducer = bind(self, outer_params, call="DataParallel.reduce_grads")
        leaves = pytree.tree_leaves(outer_params)
        has = [isinstance(p, torch.Tensor) and p.grad is not None for p in leaves]
        # Every process must reach the collective with the same leaves: a leaf that has no
        # gradient on one process contributes zeros there.
        flags = torch.tensor([float(h) for h in has], dtype=torch.float64)
        reducer.dist.all_reduce(flags, group=self.group, op=reducer.dist.ReduceOp.MAX)
        grads = []
        for p, h, f in zip(leaves, has, flags.tolist()):
            if f and not h:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad if f else None)
        present = [i for i, g in enumerate(grads) if g is not None]
        out = reducer.outer([grads[i] for i in present], [reducer.mask[i] for i in present])
        for i, g in zip(present, out):
            leaves[i].grad = g


def _dist(*, call: str) -> Any:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise InputError(
            f"`{call}(data_parallel=...)` needs torch.distributed, but no process group is "
            "initialized. Call torch.distributed.init_process_group(...) in every process "
            "first (torchrun sets the environment it needs), or pass data_parallel=None."
        )
    return dist


def _mask(sharded: bool | tuple, tree: Any, *, call: str) -> tuple[bool, ...]:
    if sharded is True or sharded is False:
        return tuple(bool(sharded) for _ in pytree.tree_leaves(tree))
    if not sharded:
        return tuple(False for _ in pytree.tree_leaves(tree))
    if isinstance(tree, dict):
        keys = list(tree)
        marks: Any = {k: pytree.tree_map(lambda _, k=k: k in sharded, v) for k, v in tree.items()}
    elif isinstance(tree, (tuple, list)):
        keys = list(range(len(tree)))
        marks = type(tree)(
            pytree.tree_map(lambda _, i=i: i in sharded, v) for i, v in enumerate(tree)
        )
    else:
        keys = []
    missing = [k for k in sharded if k not in keys]
    if missing:
        raise InputError(
            f"`{call}(data_parallel=DataParallel(sharded={sharded!r}))`: outer_params has no "
            f"top-level key {missing[0]!r} (its keys are {keys}). Name the dict keys or "
            "sequence positions of the sharded leaves, or pass sharded=True if all are."
        )
    return tuple(bool(m) for m in pytree.tree_leaves(marks))


class Reducer:
    """A `DataParallel` bound to one call: the group, its size and the sharded-leaf mask."""

    def __init__(self, spec: DataParallel, mask: tuple[bool, ...], *, call: str) -> None:
        self.dist = _dist(call=call)
        self.group = spec.group
        self.world = self.dist.get_world_size(spec.group)
        self.mask = mask

    def mean_(self, flat: torch.Tensor) -> torch.Tensor:
        """The mean over processes of a fresh tensor, in place (one `all_reduce`)."""
        if not flat.is_contiguous():
            flat = flat.contiguous()
        # Gloo has no AVG: SUM, then the same division on every process, keeps the result
        # bitwise identical everywhere.
        self.dist.all_reduce(flat, group=self.group)
        return flat.div_(self.world)

    def mean_autograd(self, flat: torch.Tensor) -> torch.Tensor:
        """The mean over processes, differentiable (the backward is an `all_reduce` too)."""
        from torch.distributed.nn.functional import all_reduce

        with warnings.catch_warnings():
            # Deprecated in favour of the private `_functional_collectives`, which is not
            # yet a stable, autograd-aware public API on every backend.
            warnings.simplefilter("ignore", FutureWarning)
            return all_reduce(flat, group=self.group) / self.world

    def operator(self, op: LinearOperator) -> LinearOperator:
        """The global operator $\\frac1W\\sum_r A_r$ from this process's $A_r$."""
        local, local_batched = op.matvec, op.batched_matvec

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return self.mean_(local(v))

        batched = None
        if local_batched is not None:

            def batched(vs: torch.Tensor) -> torch.Tensor:
                return self.mean_(local_batched(vs))

        return LinearOperator(
            matvec=matvec,
            size=op.size,
            dtype=op.dtype,
            device=op.device,
            symmetric=op.symmetric,
            positive_definite=op.positive_definite,
            batched_matvec=batched,
            batch_size=op.batch_size,
        )

    def outer(
        self, grads: Sequence[torch.Tensor], mask: Sequence[bool] | None = None
    ) -> list[torch.Tensor]:
        """Global outer gradients from local terms: shared leaves averaged in one
        `all_reduce`, sharded leaves scaled by $1/W$."""
        mask = self.mask if mask is None else mask
        shared = [g for g, s in zip(grads, mask) if not s]
        out = [g / self.world if s else g for g, s in zip(grads, mask)]
        if shared:
            flat = self.mean_(torch.cat([g.reshape(-1) for g in shared]))
            chunks = iter(flat.split([g.numel() for g in shared]))
            out = [g if s else next(chunks).view_as(g) for g, s in zip(out, mask)]
        return out


def bind(spec: DataParallel | None, outer_params: Any, *, call: str) -> Reducer | None:
    """Check `data_parallel=` of a public call and bind it to `outer_params`."""
    if spec is None:
        return None
    if not isinstance(spec, DataParallel):
        raise InputError(
            f"`{call}(data_parallel=...)` must be ig.DataParallel(...) or None, got "
            f"{type(spec).__name__}."
        )
    mask = () if outer_params is None else _mask(spec.sharded, outer_params, call=call)
    return Reducer(spec, mask, call=call)

"""Composition with torch.func: detecting transforms, and the vmap rule of the entry points.

The entry points run their solves inside `torch.autograd.Function`s, whose forward passes see
plain tensors below any torch.func transform, so the graph-reusing products work there too.
Under `torch.func.vmap` their vmap rule turns the mapped dimension into an explicit batch of
independent problems (`Batch`), solved in one call with one residual per problem.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import InputError

__all__ = ["Batch", "under_transform", "vmap_rule"]


def under_transform() -> bool:
    """Whether the caller runs inside a torch.func transform (vmap, grad, vjp, jacrev...)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


@dataclass(frozen=True)
class Batch:
    """$B$ independent problems whose leaves share a leading dimension of size `size`."""

    size: int

    @staticmethod
    def of(leaves: Sequence[torch.Tensor], *, call: str) -> Batch:
        sizes = {t.shape[0] if t.dim() else None for t in leaves}
        if len(sizes) != 1 or None in sizes:
            raise InputError(
                f"`{call}(batched=True)` needs every leaf of inner_params and outer_params to "
                "carry the same leading batch dimension, got leading sizes "
                f"{[tuple(t.shape[:1]) for t in leaves]}."
            )
        return Batch(sizes.pop())


def vmap_rule(
    info: Any,
    in_dims: Sequence[int | None],
    leaves: Sequence[torch.Tensor],
    c: Any,
    apply: Callable[[Any, list[torch.Tensor]], Sequence[torch.Tensor]],
) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
    """Run `apply(c_batched, leaves_batched)` with the mapped dimension moved into `c.batch`.

    Unmapped leaves are shared by every problem and expanded; under nested vmaps the new
    dimension and an existing batch are merged into one.
    """
    outer = info.batch_size
    inner = None if c.batch is None else c.batch.size
    xs = []
    for x, d in zip(leaves, in_dims):
        x = x.expand(outer, *x.shape) if d is None else x.movedim(d, 0)
        if inner is not None:
            x = x.reshape(outer * inner, *x.shape[2:])
        xs.append(x)
    total = outer if inner is None else outer * inner
    out = apply(dataclasses.replace(c, batch=Batch(total)), xs)
    if inner is not None:
        out = [o.reshape(outer, inner, *o.shape[1:]) for o in out]
    return tuple(out), tuple(0 for _ in out)

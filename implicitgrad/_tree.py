"""Parameter trees: tensors, or nested tuples/lists/dicts of tensors.

Every public entry point accepts its parameters as such a tree. Internally the code works on
the flat list of leaves and, for the linear solvers, on one flat vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._errors import InputError

__all__ = [
    "Tree",
    "TreeDef",
    "check_uniform",
    "flatten",
    "unflatten",
    "describe",
    "ravel",
    "unravel",
]

Tree = Any
TreeDef = pytree.TreeSpec


def describe(tree: Tree) -> str:
    """A short, human-readable description of a tree's structure, for error messages."""
    if isinstance(tree, torch.Tensor):
        return f"Tensor(shape={tuple(tree.shape)}, dtype={tree.dtype})"
    if isinstance(tree, dict):
        inner = ", ".join(f"{k!r}: {describe(v)}" for k, v in list(tree.items())[:6])
        more = ", ..." if len(tree) > 6 else ""
        return "{" + inner + more + "}"
    if isinstance(tree, (tuple, list)):
        inner = ", ".join(describe(v) for v in list(tree)[:6])
        more = ", ..." if len(tree) > 6 else ""
        return (
            ("(" if isinstance(tree, tuple) else "[")
            + inner
            + more
            + (")" if isinstance(tree, tuple) else "]")
        )
    return f"{type(tree).__name__}"


def flatten(
    tree: Tree, *, call: str, name: str, require_grad: bool = False
) -> tuple[list[torch.Tensor], TreeDef]:
    """Flatten a parameter tree into its tensor leaves, validating every leaf.

    Raises [`InputError`][implicitgrad.InputError] naming `call` and the argument `name` when
    the tree is empty, holds a non-tensor leaf, or holds a non-floating tensor.
    """
    leaves, spec = pytree.tree_flatten(tree)
    if not leaves:
        raise InputError(
            f"`{call}({name}=...)` received an empty tree ({describe(tree)}). Pass a tensor, or "
            "a tuple/list/dict holding at least one floating-point tensor."
        )
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            path = _leaf_path(spec, i)
            raise InputError(
                f"`{call}({name}=...)` has a leaf {path} of type {type(leaf).__name__}; every "
                "leaf must be a torch.Tensor. Wrap numbers with torch.tensor(..., dtype=...)."
            )
        if leaf.is_complex():
            path = _leaf_path(spec, i)
            raise InputError(
                f"`{call}({name}=...)` has a leaf {path} of complex dtype {leaf.dtype}. The "
                "solvers are written for real systems (a complex Hessian needs conjugate "
                "transposes and Wirtinger derivatives they do not take). Pass the real and "
                "imaginary parts as a real tensor: torch.view_as_real(leaf)."
            )
        if not leaf.is_floating_point():
            path = _leaf_path(spec, i)
            raise InputError(
                f"`{call}({name}=...)` has a leaf {path} of dtype {leaf.dtype}; hypergradients "
                "need floating-point tensors. Convert it with .to(torch.float32) (or float64)."
            )
    if require_grad and not any(leaf.requires_grad for leaf in leaves):
        raise InputError(
            f"`{call}({name}=...)` holds no tensor with requires_grad=True, so the result "
            "would carry no gradient path. Call .requires_grad_() on the leaves you want "
            "gradients for (nn.Parameters already require grad)."
        )
    return list(leaves), spec


def unflatten(spec: TreeDef, leaves: Sequence[torch.Tensor]) -> Tree:
    """Rebuild a tree from its leaves (inverse of [`flatten`][implicitgrad._tree.flatten])."""
    return pytree.tree_unflatten(list(leaves), spec)


def unflattener(spec: TreeDef) -> Callable[[Sequence[torch.Tensor]], Tree]:
    """A function equal to `unflatten(spec, ·)`, faster for the common shapes of a parameter
    tree (one tensor; a flat dict, list or tuple of tensors), for loops that rebuild the same
    structure at every step."""
    if spec.is_leaf():
        return lambda leaves: leaves[0]
    children = [spec.child(i) for i in range(spec.num_children)]
    if all(child.is_leaf() for child in children):
        if spec.type is dict:
            keys = list(spec.context)
            return lambda leaves: dict(zip(keys, leaves))
        if spec.type is list:
            return list
        if spec.type is tuple:
            return tuple
    return lambda leaves: pytree.tree_unflatten(list(leaves), spec)


def _leaf_path(spec: TreeDef, index: int) -> str:
    """The key path of leaf `index`, such as `['w'][0]`, for error messages."""
    try:
        dummy = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
        paths, _ = pytree.tree_flatten_with_path(dummy)
        return "".join(str(k) for k in paths[index][0]) or "<root>"
    except Exception:  # pragma: no cover - only cosmetics of an error message
        return f"#{index}"


def leaf_path(spec: TreeDef, index: int) -> str:
    """Public-in-package alias used by the entry points' error messages."""
    return _leaf_path(spec, index)


def check_uniform(leaves: Sequence[torch.Tensor], spec: TreeDef, *, call: str, name: str) -> None:
    """Raise `InputError` unless all leaves share one dtype and device (they are solved for
    as one flat vector)."""
    first = leaves[0]
    for i, t in enumerate(leaves):
        if t.dtype != first.dtype or t.device != first.device:
            raise InputError(
                f"`{call}({name}=...)` mixes dtypes/devices: leaf {_leaf_path(spec, i)} is "
                f"{t.dtype} on {t.device} but the first leaf is {first.dtype} on "
                f"{first.device}. Move all of {name} to one dtype and device."
            )


def ravel(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


def unravel(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped like `like` (inverse of `ravel`)."""
    # On the hot path of every Hessian-vector product: one `split` instead of a slice per leaf.
    if len(like) == 1:
        return [vector.view_as(like[0])]
    chunks = vector.split([t.numel() for t in like])
    return [c.view_as(t) for c, t in zip(chunks, like)]

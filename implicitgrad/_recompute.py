"""Gradient checkpointing for unrolled training: drop a segment's graph, recompute it later.

`torch.utils.checkpoint` is not used: the unrolled steps call `torch.autograd.grad` inside
the checkpointed function, and its non-reentrant variant answers each of those calls by
recomputing the segment during the forward pass (cost quadratic in the segment length),
while the reentrant variant misses gradients to tensors that the loss closes over. Here the
saved tensors stay in memory until the segment's forward pass ends, and one recomputation
in the backward pass refills all of them in the order they were saved, as in torch's
non-reentrant checkpoint (Chen et al., 2016).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.utils.checkpoint import get_device_states, set_device_states

from ._errors import ImplicitGradError

__all__ = ["Checkpoint"]


class _Holder:
    """One saved tensor; `tensor` is `None` while it is dropped."""

    __slots__ = ("tensor", "shape", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor: torch.Tensor | None = tensor
        self.shape = tensor.shape


class Checkpoint:
    """One checkpointed segment: its inputs, and what its recomputation must see again.

    `replay(theta, state)` reruns the segment from (copies of) its inputs. Between
    construction and the forward pass nothing may change the inputs; the random number
    generators, the `buffers` and the train/eval `modules` are taken as they are now and
    restored around each recomputation.
    """

    def __init__(
        self,
        replay: Callable[[list[torch.Tensor], Any], None],
        theta: Sequence[torch.Tensor],
        state: Any,
        buffers: Sequence[torch.Tensor],
        modules: Sequence[nn.Module],
        *,
        call: str,
    ) -> None:
        self.replay = replay
        self.call = call
        # Autograd saves only what the inputs that require grad need, so the recomputation
        # must see the same requires_grad flags to save the same tensors in the same order.
        self.theta = [_detached_like(x) for x in theta]
        self.state = pytree.tree_map(
            lambda x: _detached_like(x) if isinstance(x, torch.Tensor) else x, state
        )
        self.buffers = list(buffers)
        self.buffer_values = [b.detach().clone() for b in self.buffers]
        self.modules = list(modules)
        self.modes = [m.training for m in self.modules]
        self.devices, self.device_states = get_device_states(*theta)
        self.cpu_rng = torch.get_rng_state()
        self.holders: list[weakref.ref[_Holder]] = []
        self.forward_done = False

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Run the segment's forward pass inside this; its saved tensors are dropped after."""
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                yield
        finally:
            self.forward_done = True
            for ref in self.holders:
                holder = ref()
                if holder is not None:
                    holder.tensor = None

    def _pack(self, x: torch.Tensor) -> _Holder:
        holder = _Holder(x)
        self.holders.append(weakref.ref(holder))
        return holder

    def _unpack(self, holder: _Holder) -> torch.Tensor:
        if holder.tensor is None:
            self._recompute()
        x = holder.tensor
        assert x is not None
        if self.forward_done:
            holder.tensor = None  # needed once per backward pass; recomputed if asked again
        return x

    def _recompute(self) -> None:
        count = 0
        local: list[_Holder] = []

        def pack(x: torch.Tensor) -> _Holder:
            nonlocal count
            if count < len(self.holders):
                holder = self.holders[count]()
                if holder is not None:
                    if x.shape != holder.shape:
                        raise self._nondeterministic(
                            f"a saved tensor of shape {tuple(x.shape)} where it saved "
                            f"{tuple(holder.shape)}"
                        )
                    holder.tensor = x.detach()
            count += 1
            local.append(_Holder(x))
            return local[-1]

        def unpack(holder: _Holder) -> torch.Tensor:
            assert holder.tensor is not None
            return holder.tensor

        try:
            with (
                self._restored(),
                torch.enable_grad(),
                torch.autograd.graph.saved_tensors_hooks(pack, unpack),
            ):
                self.replay(list(self.theta), self.state)
        finally:
            # A saved output refers to the node that saved it; emptying the holders breaks
            # those reference cycles so that the recomputed graph is freed at once.
            for holder in local:
                holder.tensor = None
        if count != len(self.holders):
            raise self._nondeterministic(
                f"{count} saved tensors where it saved {len(self.holders)}"
            )

    @contextlib.contextmanager
    def _restored(self) -> Iterator[None]:
        """Random state, buffers and modes as they were when the segment first ran."""
        current = [b.detach().clone() for b in self.buffers]
        current_modes = [m.training for m in self.modules]
        _copy_changed(self.buffers, self.buffer_values)
        for module, mode in zip(self.modules, self.modes):
            module.training = mode
        try:
            with torch.random.fork_rng(devices=self.devices):
                torch.set_rng_state(self.cpu_rng)
                set_device_states(self.devices, self.device_states)
                yield
        finally:
            _copy_changed(self.buffers, current)
            for module, mode in zip(self.modules, current_modes):
                module.training = mode

    def _nondeterministic(self, what: str) -> ImplicitGradError:
        return ImplicitGradError(
            f"`{self.call}(checkpoint=...)`: recomputing a segment produced {what} in the "
            "forward pass. train_loss must run the same operations when called again with the "
            "same arguments; avoid data-dependent control flow or pass checkpoint=False."
        )


def _copy_changed(targets: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    # Writing only what changed leaves untouched buffers' version counters alone, so graphs
    # that saved them (BatchNorm in eval mode) stay valid.
    with torch.no_grad():
        for target, value in zip(targets, values):
            if not torch.equal(target, value):
                target.copy_(value)


def _detached_like(x: torch.Tensor) -> torch.Tensor:
    return x.detach().requires_grad_(x.requires_grad)

"""Memory measurement for the unrolling benchmarks.

Two measures, because neither alone is convincing:

- `PeakTensorMemory`: the live bytes of tensor storages allocated by PyTorch operators, and
  their peak. Deterministic (the same run gives the same bytes), and it sees the autograd
  graph's saved tensors wherever they live, including those that checkpointing frees and
  recomputes.
- The peak resident set size of a fresh process (`ru_maxrss`), minus its size before the
  measured run: what the operating system saw, allocator overhead and fragmentation
  included, but coarse and noisy.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import weakref
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

MiB = 2**20


class PeakTensorMemory(TorchDispatchMode):
    """Live bytes of the tensor storages allocated inside the context, and their peak.

    Every storage an operator returns that is not one of its inputs' storages (so not a
    view) counts from its allocation until it is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            id(t.untyped_storage())
            for t in pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if id(storage) not in self.seen and id(storage) not in inputs:
                self.seen.add(id(storage))
                self.live += storage.nbytes()
                weakref.finalize(storage, self._free, id(storage), storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(script: str, *args: str) -> dict[str, Any]:
    """Run `python script --child *args` in a fresh process; it prints one JSON line last."""
    out = subprocess.run(
        [sys.executable, script, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])

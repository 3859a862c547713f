"""Join the process group that `torchrun` describes, for data-parallel learning.

Under `torchrun --nproc_per_node=N` every process runs the same command; the environment
(`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) says where it stands.
Outside torchrun nothing changes: one process, no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

import implicitgrad as ig

__all__ = ["Processes", "join"]

#: Seconds a collective may wait for a peer before it fails (a crashed or stuck process).
#: A peer that exits is usually noticed at once (its connections close); this bounds the
#: rest. `COMMENTARIES_DIST_TIMEOUT` overrides it.
TIMEOUT = 60.0


@dataclass(frozen=True)
class Processes:
    """Where this process stands: `rank` of `world`, its `device`, and the
    `data_parallel` object to pass to `learn` (`None` in one process)."""

    rank: int
    world: int
    device: torch.device
    data_parallel: ig.DataParallel | None

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and metrics and shows progress."""
        return self.rank == 0

    def close(self) -> None:
        if self.data_parallel is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def join(device: torch.device) -> Processes:
    """Join the group of a `torchrun` launch (gloo on the CPU, NCCL on CUDA), or return a
    one-process `Processes` when not launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(0, 1, device, None)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    timeout = float(os.environ.get("COMMENTARIES_DIST_TIMEOUT", TIMEOUT))
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout)
        )
    return Processes(rank, world, device, ig.DataParallel())

"""Start processes of a data-parallel test on 127.0.0.1, each with a deadline."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

# Gloo on the loopback interface only: the tests never reach another address.
ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs: Sequence[subprocess.Popen], start: float, timeout: float) -> list[int | None]:
    """The exit codes; every process still running at `timeout` is killed (code None)."""
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, timeout - (time.monotonic() - start))))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            codes.append(None)
    return codes


def _read(files) -> list[str]:
    out = []
    for f in files:
        f.seek(0)
        out.append(f.read())
        f.close()
    return out


def launch(args: Sequence[str], world: int, tmp: Path, timeout: float = 60.0):
    """Start `world` processes of `args + [rank, world, port, tmp]`.

    Returns the exit codes, the seconds until the last one ended, and the logs."""
    port = str(free_port())
    logs = [open(tmp / f"log{r}", "w+") for r in range(world)]
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [*args, str(r), str(world), port, str(tmp)],
            stdout=logs[r],
            stderr=subprocess.STDOUT,
            env={**os.environ, **ENV},
        )
        for r in range(world)
    ]
    codes = wait_all(procs, start, timeout)
    return codes, time.monotonic() - start, _read(logs)


def torchrun(args: Sequence[str], world: int, tmp: Path, timeout: float = 60.0):
    """`torchrun --nproc_per_node=world` on 127.0.0.1 running `args` (a script and its
    arguments); returns its exit code (None if killed at `timeout`), the seconds, the log."""
    log = open(tmp / "torchrun.log", "w+")
    cmd = [
        "torchrun",
        f"--nproc_per_node={world}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        *args,
    ]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV}, cwd=tmp
    )
    (code,) = wait_all([proc], start, timeout)
    return code, time.monotonic() - start, _read([log])[0]

"""Wall time, peak memory and error of one contender on one problem."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch
from _contenders import Contender
from _problems import Problem


@dataclass
class Result:
    problem: str
    family: str
    library: str
    setting: int
    hvps: int
    error: float
    seconds: float
    cpu_seconds: float
    peak_mb: float | None


def relative_error(hg: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(hg - reference) / torch.linalg.vector_norm(reference))


def peak_memory_mb(contender: Contender, problem: Problem) -> float:
    """Peak CPU memory the call allocates on top of what existed before, in MB.

    Read from the allocation events of `torch.profiler` (CPU allocations are not tracked
    otherwise): the running sum of allocated minus freed bytes, maximized over the call.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        contender.run(problem, problem.theta, problem.phi, None)
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh)["traceEvents"]
    finally:
        os.remove(path)
    memory = sorted(
        (e["ts"], e["args"]["Bytes"])
        for e in events
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0
    )
    live = peak = 0
    for _, nbytes in memory:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def measure_all(
    contenders: list[Contender], problem: Problem, repeats: int, memory_for: set[int]
) -> list[Result]:
    """Median wall and CPU time over `repeats` rounds and the error of every contender.

    CPU time (of the calling thread; torch runs single-threaded here) does not count the
    time the process waits for a core, so it is the steadier number on a shared machine.

    The rounds interleave the contenders (one call of each per round, after one warm-up
    call each), so that load from other processes on a shared machine spreads evenly over
    them instead of penalizing whichever ran at a busy moment. Peak memory is profiled in
    a separate call for the contenders whose index is in `memory_for`.
    """
    ok: list[tuple[int, Contender, torch.Tensor, int]] = []
    for i, contender in enumerate(contenders):
        try:
            hg, _, hvps = contender.run(problem, problem.theta, problem.phi, None)
        except Exception as err:  # noqa: BLE001 - report a failing contender, keep going
            print(f"  {contender.label}: failed ({type(err).__name__}: {err})", flush=True)
            continue
        ok.append((i, contender, hg, hvps))
    times: dict[int, list[float]] = {i: [] for i, *_ in ok}
    cpu: dict[int, list[float]] = {i: [] for i, *_ in ok}
    for _ in range(repeats):
        for i, contender, _, _ in ok:
            start, start_cpu = time.perf_counter(), time.thread_time()
            contender.run(problem, problem.theta, problem.phi, None)
            times[i].append(time.perf_counter() - start)
            cpu[i].append(time.thread_time() - start_cpu)
    return [
        Result(
            problem=problem.name,
            family=contender.family,
            library=contender.library,
            setting=contender.setting,
            hvps=hvps,
            error=relative_error(hg, problem.reference),
            seconds=statistics.median(times[i]),
            cpu_seconds=statistics.median(cpu[i]),
            peak_mb=peak_memory_mb(contender, problem) if i in memory_for else None,
        )
        for i, contender, hg, hvps in ok
    ]


def time_to_accuracy(results: list[Result], target: float) -> dict[str, Result | None]:
    """Per family, the setting with the least CPU time whose error is at most `target`."""
    best: dict[str, Result | None] = {}
    for r in results:
        best.setdefault(r.family, None)
        current = best[r.family]
        if r.error <= target and (current is None or r.cpu_seconds < current.cpu_seconds):
            best[r.family] = r
    return best

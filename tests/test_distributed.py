"""Data-parallel hypergradients on two CPU processes (gloo on 127.0.0.1) against one process
on the full data, in float64.

The two processes run `tests/_dp_worker.py`, each with a timeout (the process group's and
this launcher's), so that a failing rank ends the test instead of hanging it. Every entry
point runs in one launch to keep the cost of starting the processes (a few seconds) to one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import implicitgrad as ig

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import _dp_worker as worker  # noqa: E402
from _dp_launch import launch  # noqa: E402

# Mean of two local means against one mean over the union, then up to 40 solver products:
# rounding differences of a few ulps, far below this bound.
TOL = 1e-10

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    codes, _, logs = launch([sys.executable, str(HERE / "_dp_worker.py"), "core"], 2, tmp)
    assert codes == [0, 0], "\n".join(logs)
    ranks = [torch.load(tmp / f"rank{r}.pt") for r in range(2)]
    return ranks, worker.run_core(0, 1, None)


def _global(ranks: list, key: str) -> dict:
    """The global outer gradient from the ranks' results: `lam` (shared) must be identical
    on both; the sharded `weights` are their slices, concatenated."""
    a, b = ranks[0][key], ranks[1][key]
    assert torch.equal(a["lam"], b["lam"]), "the shared gradient differs between processes"
    return {"lam": a["lam"], "weights": torch.cat([a["weights"], b["weights"]])}


def _err(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


KEYS = (
    [f"hypergrad/{case.name}" for case in worker.SOLVERS]
    + [
        f"fixed_point_hypergrad/{case.name}"
        for case in worker.SOLVERS
        if not case.make(2, 1.0).requires_symmetric
    ]
    + ["implicit", "minimize/implicit", "minimize/unroll", "unroll"]
)


def test_every_solver_is_checked() -> None:
    exported = {n for n in ig.__all__ if isinstance(getattr(ig, n), type)}
    solvers = {n for n in exported if issubclass(getattr(ig, n), ig.AbstractSolver)}
    assert solvers - {"AbstractSolver"} == {case.name for case in worker.SOLVERS}


@pytest.mark.parametrize("key", KEYS)
def test_two_processes_equal_one_on_the_full_data(core, key: str) -> None:
    ranks, reference = core
    assert _err(_global(ranks, key), reference[key]) < TOL


@pytest.mark.parametrize("name", [case.name for case in worker.SOLVERS])
def test_every_process_runs_the_same_solve(core, name: str) -> None:
    ranks, reference = core
    key = f"iterations/{name}"
    assert ranks[0][key] == ranks[1][key] == reference[key]


def test_unrolled_training_is_the_same_on_every_process(core) -> None:
    ranks, reference = core
    for key in ("unroll/theta", "unroll/losses"):
        assert torch.equal(ranks[0][key], ranks[1][key])
        assert float((ranks[0][key] - reference[key]).abs().max()) < TOL


def test_a_rank_that_raises_ends_every_rank(tmp_path) -> None:
    codes, elapsed, logs = launch(
        [sys.executable, str(HERE / "_dp_worker.py"), "fail"], 2, tmp_path
    )
    assert None not in codes, f"a process was still running after 60 s:\n{logs}"
    assert all(c != 0 for c in codes), logs
    assert elapsed < 60
    assert "injected failure on rank 1" in logs[1]


def test_data_parallel_needs_a_process_group() -> None:
    with pytest.raises(ig.InputError, match="init_process_group"):
        ig.hypergrad(
            lambda w, p: ((w - p) ** 2).sum(),
            lambda w, p: w.sum(),
            torch.zeros(2),
            torch.zeros(2),
            data_parallel=ig.DataParallel(),
        )


def test_sharded_keys_are_checked() -> None:
    with pytest.raises(ig.InputError, match="sharded"):
        ig.DataParallel(sharded="weights")

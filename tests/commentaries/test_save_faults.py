"""A `learn` process killed (SIGKILL) at any point of a save leaves a folder that loads as
the complete old commentary or the complete new one, and the next run cleans up.

The save pauses at a named point when `IMPLICITGRAD_COMMENTARIES_PAUSE_AT=POINT:FILE` is
set (a test-only hook): it creates FILE and sleeps, and the test kills it there. The four
runs, one per point, go in parallel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import env, run, saved_blending, script
from implicitgrad_commentaries import load_commentary

POINTS = ["folder-created", "weights-written", "metadata-written", "synced", "swapped"]


def _learn(out: Path, point: str, flag: Path) -> subprocess.Popen[str]:
    environment = env() | {"IMPLICITGRAD_COMMENTARIES_PAUSE_AT": f"{point}:{flag}"}
    args = ["learn", "blending", "--student", "linear", "--steps", "1", "--seed", "1"]
    return subprocess.Popen(
        [*script(), *args, "--quiet", "--overwrite", "--out", str(out)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.Tensor]]:
    tmp = tmp_path_factory.mktemp("faults")
    runs = {}
    for point in POINTS:
        out = saved_blending(tmp / point / "blend")
        old = load_commentary(out).matrix.detach().clone()
        flag = tmp / point / "reached"
        runs[point] = (out, old, flag, _learn(out, point, flag))
    deadline = time.monotonic() + 240
    for point, (_, _, flag, proc) in runs.items():
        while not flag.exists():
            assert proc.poll() is None, (point, proc.communicate())
            assert time.monotonic() < deadline, f"the save never reached {point}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return {point: (out, old) for point, (out, old, _, _) in runs.items()}


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_leaves_the_old_or_the_new_commentary(
    killed: dict[str, tuple[Path, torch.Tensor]], point: str
) -> None:
    out, old = killed[point]
    commentary = load_commentary(out)  # never a CheckpointError
    seed = json.loads((out / "commentary.json").read_text())["extra"]["learn"]["seed"]
    if point == "swapped":
        assert seed == 1 and (out / "learn-metrics.json").is_file()  # the complete new one
        assert not torch.equal(commentary.matrix.detach(), old)
    else:
        assert seed == 0 and torch.equal(commentary.matrix.detach(), old)  # the old one
    leftovers = [p.name for p in out.parent.iterdir() if p.name != out.name]
    assert point == "folder-created" or leftovers, "the kill should leave something behind"


def test_the_next_run_cleans_up(killed: dict[str, tuple[Path, torch.Tensor]]) -> None:
    out, _ = killed["weights-written"]
    result = run(
        ["learn", "blending", "--student", "linear", "--steps", "1", "--quiet"]
        + ["--overwrite", "--out", str(out)]
    )
    assert result.code == 0, result.err
    kept = ("reached", f"{out.name}.log")  # the flag file and the run's metrics log
    assert sorted(p.name for p in out.parent.iterdir() if p.name not in kept) == [out.name]
    assert sorted(p.name for p in out.iterdir()) == [
        "commentary.json",
        "commentary.pt",
        "config.toml",
        "learn-metrics.csv",
        "learn-metrics.json",
    ]


def test_files_and_folder_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        out = saved_blending(tmp_path / "blend")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o750
    for name in ("commentary.json", "commentary.pt"):
        assert (out / name).stat().st_mode & 0o777 == 0o640

"""The core-overhead benchmark runs and its contenders agree.

`benchmarks/core_overhead.py --check` builds every case at its smallest size, asserts that
the contenders of each case compute the same hypergradient (vmap and batched=True equal the
loop within 1e-10, hand-written CG and TorchOpt equal `ig.hypergrad` at equal iterations)
and times one round. Timing goals are not asserted here: a shared CI machine cannot be
trusted with them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "core_overhead.py"


def test_core_overhead_check_mode_runs_and_agrees():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| case | A / B |" in out
    for key in ("(a)", "(a')", "(b)", "(c)", "(d)"):
        assert f"| {key} " in out, f"case {key} missing from the ratio table"


def test_gpu_run_quick_mode_falls_back_and_prints_ratios():
    """`benchmarks/gpu_run.py --quick` runs all three parts; without CUDA it says so."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_run.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    import torch

    if not torch.cuda.is_available():
        assert "CUDA not available: running on the CPU instead" in out
    assert "| ig / hand-written | ig / TorchOpt |" in out or "| ig / hand-written |" in out
    assert "## Time to accuracy" in out and "| ig CG |" in out
    assert "commentaries learn" in out

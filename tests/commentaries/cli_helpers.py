"""Running the real `commentaries` console script in subprocesses, several at a time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from implicitgrad_commentaries import BlendingCommentary, DataSpec, save_commentary

DIGITS = DataSpec("digits", (1, 8, 8), tuple(str(c) for c in range(10)))


def script() -> list[str]:
    """The installed console script, or the module when only the source tree is there."""
    found = shutil.which("commentaries", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "implicitgrad_commentaries.cli"]


@dataclass(frozen=True)
class Result:
    """What one run of the command printed and returned."""

    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def env(extra_path: Sequence[Path] = ()) -> dict[str, str]:
    out = dict(os.environ)
    out["OMP_NUM_THREADS"] = "1"
    out["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    if extra_path:
        old = out.get("PYTHONPATH")
        out["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), *([old] if old else [])])
    return out


def run(args: Sequence[str], *, extra_path: Sequence[Path] = (), timeout: float = 300) -> Result:
    proc = subprocess.run(
        [*script(), *args],
        env=env(extra_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_many(cases: dict[str, tuple[list[str], Sequence[Path]]]) -> dict[str, Result]:
    """Run the cases concurrently (they mostly wait for imports)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {k: pool.submit(run, args, extra_path=p) for k, (args, p) in cases.items()}
        return {k: f.result() for k, f in futures.items()}


def saved_blending(folder: Path, init: float = -1.0) -> Path:
    """A commentary folder as `learn` writes it, without the learning."""
    torch.manual_seed(0)
    commentary = BlendingCommentary(DIGITS, init=init)
    with torch.no_grad():
        commentary.matrix.add_(torch.randn_like(commentary.matrix))
    return save_commentary(commentary, folder, {"learn": {"seed": 0}})


def assert_one_line_error(result: Result, code: int, command: str, message: str) -> None:
    """Exit status `code`, no traceback, and one error line that carries `message`."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err + result.out, result.err
    errors = [line for line in result.lines if ": error: " in line]
    assert len(errors) == 1, result.err
    assert errors[0].startswith(f"commentaries {command}: error: "), result.err
    assert message in errors[0], (message, errors[0])

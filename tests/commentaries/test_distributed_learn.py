"""Commentary learning on two CPU processes (gloo on 127.0.0.1) against one process.

Every process has a deadline, so a failing rank ends the test instead of hanging it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _dp_launch import launch, torchrun  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    import _dp_learn

    tmp = tmp_path_factory.mktemp("dp-learn")
    codes, _, logs = launch([sys.executable, str(HERE / "_dp_learn.py"), "learn"], 2, tmp)
    assert codes == [0, 0], "\n".join(logs)
    ranks = [torch.load(tmp / f"rank{r}.pt") for r in range(2)]
    default = torch.get_default_dtype()
    try:
        reference = _dp_learn.learn_both(None)
    finally:
        torch.set_default_dtype(default)
    return ranks, reference


@pytest.mark.parametrize("method", ["unroll", "ift"])
def test_two_processes_learn_the_teacher_of_one(learned, method: str) -> None:
    ranks, reference = learned
    for name, value in reference[method].items():
        # The teacher is bitwise the same on both processes ...
        assert torch.equal(ranks[0][method][name], ranks[1][method][name])
        # ... and equals one process on the same global batches up to rounding (the mean
        # of two slices' means against one mean, through three Adam steps).
        assert float((ranks[0][method][name] - value).abs().max()) < 1e-10
    assert (
        float((ranks[0][f"{method}/val_loss"] - reference[f"{method}/val_loss"]).abs().max())
        < 1e-10
    )


@pytest.mark.slow
def test_the_readme_command_learns_on_two_processes(tmp_path) -> None:
    code, _, log = torchrun(
        [
            "-m",
            "implicitgrad_commentaries.cli",
            "learn",
            "weighting",
            "--out",
            "w",
            "--steps",
            "3",
            "--inner-steps",
            "2",
        ],
        2,
        tmp_path,
        timeout=120,
    )
    assert code == 0, log
    assert log.count("learned weighting") == 1, log  # one process reports
    metrics = json.loads((tmp_path / "w" / "learn-metrics.json").read_text())
    assert metrics["processes"] == 2


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_without_a_checkpoint(tmp_path) -> None:
    code, elapsed, log = torchrun(
        [
            str(HERE / "_dp_learn.py"),
            "fail",
            "learn",
            "weighting",
            "--out",
            "w",
            "--steps",
            "5",
            "--inner-steps",
            "2",
        ],
        2,
        tmp_path,
    )
    assert code not in (0, None), log
    assert elapsed < 60, log
    assert "injected failure on rank 1" in log
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())

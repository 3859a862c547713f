"""The few-shot commands: learn, evaluate and show a run; errors are one line with exit 2."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from implicitgrad_commentaries.cli import main
from implicitgrad_commentaries.fewshot import load_fewshot

EXPERIMENT = Path(__file__).resolve().parents[2] / "plugins/commentaries/experiments/fewshot.py"


@pytest.mark.parametrize("method", ["maml-commentary", "imaml"])
def test_learn_evaluate_show(method: str, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    args = ["fewshot-learn", "--method", method, "--dataset", "digits", "--quick"]
    assert main([*args, "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    assert load_fewshot(run).method == method
    assert main(["fewshot-evaluate", str(run), "--quick"]) == 0
    metrics = json.loads((run / "evaluate.json").read_text())
    assert metrics["tasks"] == 10 and 0 <= metrics["mean"] <= 1
    code = main(["fewshot-show", str(run), "--out", str(tmp_path / "png")])
    if method == "imaml":
        assert code == 2 and "has no teacher" in capsys.readouterr().err
    else:
        pytest.importorskip("matplotlib")
        assert code == 0 and (tmp_path / "png" / "support-weights-0.png").is_file()
    # The folder is kept unless --overwrite is given.
    assert main([*args, "--out", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fewshot-learn", "--method", "nope", "--out", "x"], "invalid choice"),
        (["fewshot-learn", "--method", "imaml", "--lam", "0", "--out", "x"], "--lam"),
        (["fewshot-learn", "--method", "maml", "--shots", "0", "--out", "x"], "--shots"),
        (["fewshot-evaluate", "missing-folder"], "does not exist"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_quick_experiment_runs(tmp_path: Path) -> None:
    """The documented experiment's --quick version: every condition, tiny sizes (< 60 s)."""
    experiment = runpy.run_path(str(EXPERIMENT))
    result = experiment["main"](["--quick", "--workers", "1", "--out", str(tmp_path)])
    assert {r["method"] for r in result["rows"]} == set(experiment["CONDITIONS"])
    assert "| maml-commentary |" in result["table"]
    assert (tmp_path / "results.md").is_file()

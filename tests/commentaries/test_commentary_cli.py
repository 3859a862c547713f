"""The `commentaries` command line: a tiny end-to-end run and its error paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from implicitgrad_commentaries.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse errors
        status = int(exc.code or 0)
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "blend"
    status = main(
        ["--quiet", "learn", "blending", "--steps", "3", "--student", "linear"]
        + ["--out", str(out)]
    )
    assert status == 0
    return out


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "list")
    assert status == 0 and "blending" in out and "weighting" in out


def test_learn_writes_checkpoint_and_metrics(learned: Path) -> None:
    meta = json.loads((learned / "commentary.json").read_text())
    assert meta["plugin"] == "blending" and meta["dataset"]["name"] == "digits"
    assert meta["extra"]["learn"]["solver"] == "neumann"
    metrics = json.loads((learned / "learn-metrics.json").read_text())
    assert len(metrics["history"]["val_loss"]) == 3


def test_train_prints_a_table_and_writes_json(
    capsys: pytest.CaptureFixture[str], learned: Path
) -> None:
    status, out, _ = run(
        capsys,
        "--quiet",
        "train",
        "--commentary",
        str(learned),
        "--student",
        "linear",
        "--seeds",
        "2",
        "--steps",
        "10",
    )
    assert status == 0, out
    for row in ("baseline (no commentary)", "learned commentary", "random blending"):
        assert f"| {row} |" in out
    metrics = json.loads((learned / "train-linear.json").read_text())
    assert len(metrics["results"]["learned commentary"]["per_seed"]) == 2


def test_show_writes_png(capsys: pytest.CaptureFixture[str], learned: Path, tmp_path: Path) -> None:
    status, out, _ = run(capsys, "show", str(learned), "--out", str(tmp_path))
    assert status == 0 and (tmp_path / "blending.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["learn", "nope", "--out", "x"], "unknown commentary 'nope'; installed:"),
        (["learn", "blending"], "the following arguments are required: --out"),
        (["learn", "blending", "--steps", "-2", "--out", "x"], "expected an integer >= 1"),
        (["learn", "blending", "--solver", "magic", "--out", "x"], "invalid choice: 'magic'"),
        (
            ["learn", "blending", "--dataset", "mnist", "--data-dir", "/nonexistent", "--out", "x"],
            "Nothing is downloaded",
        ),
        (["train", "--commentary", "/nonexistent"], "does not exist"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_nonzero_with_a_message(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status, _, err = run(capsys, *args)
    assert status == 2
    assert message in err


def test_train_on_the_wrong_dataset_is_refused(
    capsys: pytest.CaptureFixture[str], learned: Path
) -> None:
    status, _, err = run(
        capsys, "train", "--commentary", str(learned), "--dataset", "digits-binary"
    )
    assert status == 2
    assert "does not match the data" in err and "--dataset digits" in err


def test_set_passes_commentary_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run(
        capsys,
        "--quiet",
        "learn",
        "weighting",
        "--set",
        "normalize=true",
        "--set",
        "teacher=mlp",
        "--method",
        "ift",
        "--student",
        "linear",
        "--steps",
        "2",
        "--out",
        str(tmp_path),
    )
    assert status == 0, err
    config = json.loads((tmp_path / "commentary.json").read_text())["config"]
    assert config["normalize"] is True and config["teacher"] == "mlp"


@pytest.mark.parametrize(
    ("setting", "message"),
    [("normalize", "--set expects KEY=VALUE"), ("bogus=1", "does not fit WeightingCommentary")],
)
def test_bad_settings_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, setting: str, message: str
) -> None:
    status, _, err = run(capsys, "learn", "weighting", "--set", setting, "--out", str(tmp_path))
    assert status == 2 and message in err

"""The `commentaries` command line's configuration files, metrics logs, progress lines,
seed lists and learning-curve plots.

Most runs call `main` in this process (fast, and stderr is not a terminal there, as in a
batch job); the run whose CSV is read while it is still going is the real console script
in a subprocess. Every run is a few tiny meta-steps or student steps.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import Result, assert_one_line_error, env, run_many, script
from implicitgrad_commentaries.cli import main

LEARN = ["learn", "blending", "--student", "linear", "--steps", "3"]
TRAIN = ["train", "--student", "linear", "--steps", "6", "--curve-points", "3"]


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    try:
        code = main(list(args))
    except SystemExit as exc:  # --help
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def _train(
    capsys: pytest.CaptureFixture[str], commentary: Path, metrics: Path, *args: str
) -> Result:
    return _main(capsys, *TRAIN, "--commentary", str(commentary), "--out", str(metrics), *args)


def _start(args: list[str]) -> subprocess.Popen[str]:
    """The console script, running in the background (to be killed by the test)."""
    return subprocess.Popen(
        [*script(), "--quiet", *args],
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _learned(folder: Path) -> dict:
    return json.loads((folder / "learn-metrics.json").read_text())


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cfg") / "blend"
    assert main(["--quiet", *LEARN, "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------
# --config


CONFIG = """
student = "linear"
steps = 2
[learn]
name = "blending"
student_lr = 0.2
batch-size = 32
[learn.set]
init = -2.0
[train]
lr = "not a number: the table of the other command is not read"
"""


def test_a_config_file_is_used_and_flags_on_the_command_line_win(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "run.toml").write_text(CONFIG)
    out = tmp_path / "blend"
    result = _main(
        capsys,
        *["--quiet", "learn", "--config", str(tmp_path / "run.toml"), "--out", str(out)],
        *["--overwrite", "--student-lr", "0.3", "--set", "mode=learned"],
    )
    assert result.code == 0, result.err
    settings = _learned(out)["learn"]
    assert settings["name"] == "blending" and settings["student"] == "linear"
    assert settings["steps"] == 2 and settings["batch_size"] == 32
    assert settings["student_lr"] == 0.3  # the flag, not the file's 0.2
    assert len(_learned(out)["history"]["val_loss"]) == 2
    config = json.loads((out / "commentary.json").read_text())["config"]
    assert config == {"init": -2.0, "mode": "learned"}  # [learn.set] merged with --set


def test_the_resolved_config_is_saved_and_reproduces_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    result = _main(capsys, "--quiet", *LEARN, "--set", "init=-1.5", "--out", str(first))
    assert result.code == 0, result.err
    saved = (first / "config.toml").read_text()
    for line in ('name = "blending"', 'method = "ift"', "meta-lr = 0.05", "init = -1.5"):
        assert line in saved  # the plugin's defaults are resolved in it
    again = _main(
        capsys, "--quiet", "learn", "--config", str(first / "config.toml"), "--out", str(second)
    )
    assert again.code == 0, again.err
    assert (second / "config.toml").read_text() == saved.replace(str(first), str(second))
    meta = [json.loads((f / "commentary.json").read_text()) for f in (first, second)]
    assert meta[0]["config"] == meta[1]["config"] == {"init": -1.5, "mode": "learned"}
    # Same seed, same code path, same machine: the same weights.
    a, b = (torch.load(f / "commentary.pt") for f in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[learn]\nstudnet-lr = 0.1\n", "unknown key 'learn.studnet-lr'"),
        ("lr = 0.1\n", "unknown key 'lr': not a flag of `commentaries learn`; it is a flag of"),
        ("[learn]\nstudent-lr = -1\n", "key 'learn.student-lr': expected a number > 0"),
        ("steps = '3'\n", "key 'steps': expected an integer, got a string"),
        ("steps = 2.5\n", "key 'steps': expected an integer, got a number"),
        ("solver = 'magic'\n", "key 'solver': invalid choice: 'magic'"),
        ("normalize = true\n", "unknown key 'normalize'"),
        ("[learn.set]\ninit = nan\n", "key 'learn.set': init = nan"),
        ("learn = 3\n", "'learn' must be a table"),
        ("steps = \n", "is not valid TOML"),
        ("[learn]\nsteps = 2\nsteps = 3\n", "is not valid TOML"),
        ("[learn]\nstudent_lr = 0.1\nstudent-lr = 0.2\n", "are the same setting"),
    ],
)
def test_a_bad_config_file_is_one_line_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = _main(capsys, *LEARN, "--config", str(path), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, 2, "learn", message)
    assert f"--config '{path}'" in result.err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.log").exists()


def test_a_missing_config_file_and_a_missing_required_setting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = _main(capsys, "learn", "--config", str(tmp_path / "none.toml"), "--out", "x")
    assert_one_line_error(result, 2, "learn", "no such file")
    (tmp_path / "partial.toml").write_text("[learn]\nname = 'blending'\n")
    result = _main(capsys, "learn", "--config", str(tmp_path / "partial.toml"))
    assert_one_line_error(result, 2, "learn", "the following arguments are required: --out")


# ---------------------------------------------------------------------------------------
# Metrics: CSV, TensorBoard


def test_learn_writes_one_csv_row_per_meta_step(learned: Path) -> None:
    history = _learned(learned)["history"]
    for path in (
        learned / "learn-metrics.csv",
        learned.with_name("blend.log") / "learn-metrics.csv",
    ):
        rows = _rows(path)
        assert [int(r["step"]) for r in rows] == [1, 2, 3]
        assert [float(r["val_loss"]) for r in rows] == history["val_loss"]
        assert [float(r["hypergrad_norm"]) for r in rows] == history["hypergrad_norm"]
        assert {r["skipped"] for r in rows} == {"0"}
        assert all(float(r["seconds"]) >= 0 for r in rows)


def test_the_csv_is_written_while_learn_runs(tmp_path: Path) -> None:
    out = tmp_path / "long"
    csv_path = tmp_path / "long.log" / "learn-metrics.csv"
    # About 0.2 s per meta-step: an unflushed file would show nothing for the first
    # hundred rows or so (one 8 KiB buffer), then all of them at once.
    slow = ["--method", "unroll", "--inner-steps", "100", "--steps", "100000"]
    proc = _start([*LEARN[:-2], *slow, "--out", str(out)])
    try:
        deadline = time.monotonic() + 120
        seen: list[int] = []  # the number of rows at every look
        while time.monotonic() < deadline and proc.poll() is None and sum(seen[-1:]) < 3:
            time.sleep(0.05)
            if csv_path.exists():
                seen.append(len(_rows(csv_path)))
        assert proc.poll() is None, proc.communicate()[1]  # still learning
        rows = _rows(csv_path)
        assert len(rows) >= 3 and [r["step"] for r in rows[:3]] == ["1", "2", "3"]
        assert float(rows[0]["hypergrad_norm"]) > 0 and rows[0]["skipped"] == "0"
        first = next(n for n in seen if n)
        assert first < 20, seen  # the rows came one by one
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()  # killed before the end: nothing saved


def test_train_writes_a_csv_row_per_condition_seed_and_test(
    capsys: pytest.CaptureFixture[str], learned: Path, tmp_path: Path
) -> None:
    metrics = tmp_path / "m.json"
    result = _train(capsys, learned, metrics, "--quiet", "--seeds", "5-6")
    assert result.code == 0, result.err
    saved = json.loads(metrics.read_text())
    assert saved["seeds"] == [5, 6]
    rows = _rows(tmp_path / "m.csv")
    conditions = list(saved["results"])
    steps = [2, 4, 6]  # three curve points of six steps; 10/25/50/100% fall on 1, 2, 3, 6
    tested = sorted({1, 2, 3, 6, *steps})
    assert len(rows) == len(conditions) * 2 * len(tested)
    first = [r for r in rows if r["condition"] == conditions[1] and r["seed"] == "6"]
    assert [int(r["step"]) for r in first] == tested
    curve = saved["results"][conditions[1]]["curves"][1]
    assert [float(r["test_accuracy"]) for r in first] == [curve[str(s)] for s in tested]
    assert (tmp_path / "m.png").stat().st_size > 5000
    again = (tmp_path / "m.config.toml").read_text()
    assert "seeds = [\n    5,\n    6,\n]" in again and 'dataset = "digits"' in again


def test_tensorboard_scalars_in_the_log_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "logs"
    result = _main(capsys, "--quiet", *LEARN, "--out", str(tmp_path / "b"), "--log-dir", str(logs))
    assert result.code == 0 and "warning" not in result.err, result.err
    events = EventAccumulator(str(logs))
    events.Reload()
    assert {"learn/val_loss", "learn/hypergrad_norm", "learn/skipped"} <= set(
        events.Tags()["scalars"]
    )
    history = _learned(tmp_path / "b")["history"]
    scalars = events.Scalars("learn/val_loss")
    assert [e.step for e in scalars] == [1, 2, 3]
    assert [e.value for e in scalars] == pytest.approx(history["val_loss"], rel=1e-6)
    assert len(_rows(logs / "learn-metrics.csv")) == 3


def test_without_tensorboard_one_warning_and_still_the_csv(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    logs = tmp_path / "logs"
    result = _main(capsys, "--quiet", *LEARN, "--out", str(tmp_path / "b"), "--log-dir", str(logs))
    assert result.code == 0, result.err
    warnings = [line for line in result.lines if "warning" in line]
    assert len(warnings) == 1 and "implicitgrad-commentaries[tensorboard]" in warnings[0]
    assert len(_rows(logs / "learn-metrics.csv")) == 3


def test_without_matplotlib_one_warning_and_no_plot(
    capsys: pytest.CaptureFixture[str],
    learned: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    metrics = tmp_path / "m.json"
    result = _train(capsys, learned, metrics, "--quiet", "--seeds", "1")
    assert result.code == 0, result.err
    warnings = [line for line in result.lines if "warning" in line]
    assert len(warnings) == 1 and "implicitgrad-commentaries[plots]" in warnings[0]
    assert metrics.exists() and not (tmp_path / "m.png").exists()


# ---------------------------------------------------------------------------------------
# Progress


def test_progress_lines_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = _main(capsys, *LEARN, "--out", str(tmp_path / "a"), "--progress-every", "0")
    assert result.code == 0, result.err
    lines = [line for line in result.lines if "meta-step" in line]
    assert [line.split(",")[0] for line in lines] == [
        f"commentaries learn: meta-step {k}/3 ({100 * k // 3}%)" for k in (1, 2, 3)
    ]
    assert "val_loss" in lines[0] and "elapsed" in lines[0] and "left" in lines[0]
    # Rarely: the first and the last step only.
    result = _main(capsys, *LEARN, "--out", str(tmp_path / "b"), "--progress-every", "3600")
    lines = [line for line in result.lines if "meta-step" in line]
    assert len(lines) == 2 and "1/3" in lines[0] and "3/3" in lines[1]


def test_quiet_silences_the_progress_lines(
    capsys: pytest.CaptureFixture[str], learned: Path, tmp_path: Path
) -> None:
    result = _main(capsys, "--quiet", *LEARN, "--out", str(tmp_path / "a"), "--progress-every", "0")
    assert result.code == 0 and result.err == "", result.err
    result = _train(capsys, learned, tmp_path / "m.json", "--seeds", "1", "--progress-every", "0")
    students = [line for line in result.lines if ": student " in line]
    assert len(students) == 5 and students[-1].startswith("commentaries train: student 5/5 (100%)")
    result = _train(
        capsys, learned, tmp_path / "m.json", "--seeds", "1", "--progress-every", "0", "--quiet"
    )
    assert result.code == 0 and result.err == "", result.err


# ---------------------------------------------------------------------------------------
# Seeds


@pytest.mark.parametrize(
    ("seeds", "expected"),
    [("2", [0, 1]), ("0,4,7", [0, 4, 7]), ("5-6", [5, 6]), ("0-1,9", [0, 1, 9])],
)
def test_seeds_a_count_a_list_or_a_range(
    capsys: pytest.CaptureFixture[str], learned: Path, tmp_path: Path, seeds: str, expected: list
) -> None:
    metrics = tmp_path / "m.json"
    args = ["--commentary", str(learned), "--seeds", seeds, "--out", str(metrics), "--steps", "1"]
    result = _main(capsys, "--quiet", "train", "--student", "linear", "--curve-points", "0", *args)
    assert result.code == 0, result.err
    saved = json.loads(metrics.read_text())
    assert saved["seeds"] == expected
    assert len(saved["results"]["learned commentary"]["per_seed"]) == len(expected)


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("0,4,4", "seed 4 is given twice"),
        ("0-3,2", "seed 2 is given twice"),
        ("-1", "seeds must be >= 0"),
        ("1,-3", "seeds must be >= 0"),
        ("0", "expected at least 1 seed"),
        ("5-2", "the range '5-2' is empty"),
        ("two", "expected a count (3), a list (0,4,7) or a range (5-9)"),
    ],
)
def test_bad_seeds_are_one_line(
    capsys: pytest.CaptureFixture[str], learned: Path, seeds: str, message: str
) -> None:
    result = _main(capsys, "train", "--commentary", str(learned), f"--seeds={seeds}")
    assert_one_line_error(result, 2, "train", f"argument --seeds: {message}")


def test_seeds_in_a_config_file(
    capsys: pytest.CaptureFixture[str], learned: Path, tmp_path: Path
) -> None:
    config = tmp_path / "train.toml"
    config.write_text(f"[train]\ncommentary = {str(learned)!r}\nseeds = [3]\nsteps = 1\n")
    metrics = tmp_path / "m.json"
    result = _main(
        capsys,
        "--quiet",
        "train",
        "--config",
        str(config),
        "--student",
        "linear",
        "--out",
        str(metrics),
    )
    assert result.code == 0, result.err
    assert json.loads(metrics.read_text())["seeds"] == [3]  # an array is seeds, not a count
    config.write_text("[train]\nseeds = [1, 1]\n")
    result = _main(capsys, "train", "--config", str(config))
    assert_one_line_error(result, 2, "train", "key 'train.seeds': seed 1 is given twice")


# ---------------------------------------------------------------------------------------
# --resume


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A learn run killed with SIGKILL after it saved a state, and that state's step."""
    out = tmp_path_factory.mktemp("resume") / "run"
    state = out.with_name("run.resume")
    proc = _start([*LEARN[:-1], "100000", "--checkpoint-every", "3", "--out", str(out)])
    try:
        deadline = time.monotonic() + 120
        while not (state / "state.json").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    from implicitgrad_commentaries.learning import LearnState

    return out, LearnState.load(state).step


def test_resume_refuses_other_flags_a_missing_state_and_a_fresh_start(
    capsys: pytest.CaptureFixture[str], interrupted: tuple[Path, int], tmp_path: Path
) -> None:
    out, step = interrupted
    steps = str(step + 3)
    base = [*LEARN[:-1], steps, "--out", str(out), "--resume"]
    result = _main(capsys, *base, "--student-lr", "0.3", "--set", "init=-2")
    assert_one_line_error(result, 2, "learn", "was started with other settings: --set init=-2")
    assert "--student-lr 0.3 (saved: 0.1)" in result.err
    result = _main(capsys, *LEARN[:-1], str(step), "--out", str(out), "--resume")
    assert_one_line_error(result, 2, "learn", f"has already completed {step} meta-steps")
    result = _main(
        capsys, *LEARN[:-1], steps, "--out", str(out)
    )  # neither --resume nor --overwrite
    assert_one_line_error(result, 2, "learn", "pass --resume to continue it, or --overwrite")
    result = _main(capsys, *LEARN, "--out", str(tmp_path / "never"), "--resume")
    assert_one_line_error(result, 2, "learn", "--resume: there is no saved state in")
    assert (out.with_name("run.resume") / "state.json").exists()  # nothing was touched


def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(
    interrupted: tuple[Path, int],
) -> None:
    out, step = interrupted
    reference = out.with_name("reference")
    steps = ["--steps", str(step + 3)]
    results = run_many(
        {
            "resumed": ([*LEARN[:-2], *steps, "--out", str(out), "--resume", "--quiet"], ()),
            "reference": ([*LEARN[:-2], *steps, "--out", str(reference), "--quiet"], ()),
        }
    )
    for result in results.values():
        assert result.code == 0, result.err
    a, b = (torch.load(f / "commentary.pt") for f in (out, reference))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    histories = [_learned(f)["history"] for f in (out, reference)]
    for history in histories:
        del history["seconds"]
    assert histories[0] == histories[1] and len(histories[0]["val_loss"]) == step + 3
    for rows in (
        _rows(out / "learn-metrics.csv"),
        _rows(out.with_name("run.log") / "learn-metrics.csv"),
    ):
        assert [int(r["step"]) for r in rows] == list(range(1, step + 4))  # none twice or missing
        assert [float(r["val_loss"]) for r in rows] == histories[1]["val_loss"]
    assert not out.with_name("run.resume").exists()  # removed once the commentary is saved


def test_the_documented_config_file_is_accepted_by_learn_and_train(tmp_path: Path) -> None:
    # The TOML examples on docs/cli.md must stay valid files for both commands.
    import re

    from implicitgrad_commentaries.cli.config import read_config
    from implicitgrad_commentaries.cli.main import build_parser

    page = (Path(__file__).parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", page, flags=re.S)
    assert blocks, "docs/cli.md has no TOML example"
    parsers = build_parser().subcommands  # type: ignore[attr-defined]
    for i, text in enumerate(blocks):
        path = tmp_path / f"documented-{i}.toml"
        path.write_text(text, encoding="utf-8")
        for command in ("learn", "train"):
            assert read_config(str(path), command, parsers), (i, command)


@pytest.mark.parametrize("inside", ["out", "resume"])
def test_a_log_dir_inside_a_folder_that_is_replaced_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, inside: str
) -> None:
    out = tmp_path / "b"
    logs = out / "logs" if inside == "out" else tmp_path / "b.resume" / "logs"
    result = _main(capsys, "--quiet", *LEARN, "--out", str(out), "--log-dir", str(logs))
    where = "inside --out" if inside == "out" else "inside its state folder"
    assert_one_line_error(result, 2, "learn", where)
    assert not out.exists()


def test_a_set_value_holding_null_is_left_out_of_the_saved_config() -> None:
    import argparse

    import tomllib
    from implicitgrad_commentaries.cli.config import dump_config
    from implicitgrad_commentaries.cli.main import build_parser

    parser = build_parser().subcommands["learn"]  # type: ignore[attr-defined]
    args = parser.parse_args(["blending", "--out", "x"])
    assert isinstance(args, argparse.Namespace)
    text, left_out = dump_config(
        "learn", parser, args, {"set": {"a": [1, None], "b": {"c": None}, "d": [1, 2]}}
    )
    assert left_out == ["a", "b"]
    assert tomllib.loads(text)["learn"]["set"] == {"d": [1, 2]}

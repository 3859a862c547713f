"""Every case of issue 11's "What was observed", through the real `commentaries` console
script in a subprocess: the exit status, no traceback, and the one line that matters.

The runs are started together by one module fixture (they mostly wait for imports) and
each test checks one of them; learning runs take one to five tiny meta-steps.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_helpers import Result, assert_one_line_error, run_many, saved_blending
from commentary_helpers import write_dist_info
from implicitgrad_commentaries import load_commentary
from implicitgrad_commentaries.cli import main

LEARN = ["learn", "blending", "--student", "linear", "--steps", "2"]
KEPT: dict[str, Path] = {}  # the folder of a good commentary that a failing run must keep


def _make_readonly(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # root ignores permissions; an immutable folder stops it too
        return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    folder.chmod(0o555)
    return True


def _undo_readonly(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    else:
        folder.chmod(0o755)


def _plugins(where: Path) -> Path:
    """Third-party plugins, registered the way pip does: one that names an int, one that
    calls sys.exit at import, one that fails to import, and a broken one that takes the
    name of the built-in `blending`."""
    where.mkdir()
    write_dist_info(where, "int-plugin", "1.0", {"anint": "odd_plugins:NOT_A_CLASS"})
    write_dist_info(where, "exit-plugin", "1.0", {"exits": "exiting_plugin:Thing"})
    write_dist_info(where, "broken-plugin", "1.0", {"broken": "broken_plugin:Thing"})
    write_dist_info(where, "clash-plugin", "2.0", {"blending": "broken_plugin:Thing"})
    (where / "odd_plugins.py").write_text("NOT_A_CLASS = 3\n")
    (where / "exiting_plugin.py").write_text("import sys\nsys.exit(3)\n")
    (where / "broken_plugin.py").write_text("raise ImportError('needs libfrobnicate 2.0')\n")
    return where


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Result]]:
    tmp = tmp_path_factory.mktemp("observed")
    readonly = tmp / "readonly"
    if not _make_readonly(readonly):
        pytest.skip("cannot make a read-only folder here (chattr failed)")
    trainable = saved_blending(tmp / "trainable-readonly")
    nan = saved_blending(tmp / "nan")
    state = torch.load(nan / "commentary.pt")
    state["matrix"].fill_(float("nan"))
    torch.save(state, nan / "commentary.pt")
    meta = json.loads((nan / "commentary.json").read_text())
    del meta["weights_sha256"]  # as if a diverged run had written it (format 1 had none)
    (nan / "commentary.json").write_text(json.dumps(meta))
    truncated = saved_blending(tmp / "truncated")
    raw = (truncated / "commentary.pt").read_bytes()
    (truncated / "commentary.pt").write_bytes(raw[: len(raw) // 2])
    (tmp / "a-file").write_text("not a folder\n")
    kept = saved_blending(tmp / "kept")
    plugins = _plugins(tmp / "plugins")
    _make_readonly(trainable)
    KEPT["path"], KEPT["huge"] = kept, tmp / "huge"
    try:
        yield run_many(
            {
                "learn-readonly": ([*LEARN, "--out", str(readonly / "out"), "--quiet"], ()),
                "learn-onto-file": ([*LEARN, "--out", str(tmp / "a-file")], ()),
                "train-readonly": (
                    ["train", "--commentary", str(trainable), "--steps", "1", "--seeds", "1"],
                    (),
                ),
                "cg-skips": (
                    ["learn", "blending", "--solver", "cg", "--steps", "3", "--quiet"]
                    + ["--out", str(kept), "--overwrite"],
                    (),
                ),
                "student-lr-inf": ([*LEARN, "--student-lr", "inf", "--out", str(tmp / "x")], ()),
                "student-lr-huge": (
                    [*LEARN, "--student-lr", "1e38", "--out", str(tmp / "huge")],
                    (),
                ),
                "train-nan": (["train", "--commentary", str(nan), "--steps", "1"], ()),
                "truncated": (["train", "--commentary", str(truncated), "--steps", "1"], ()),
                "set-abc": ([*LEARN, "--set", "init=abc", "--out", str(tmp / "x")], ()),
                "list-plugins": (["list", "--quiet"], (plugins,)),
                "learn-int-plugin": ([*LEARN[:1], "anint", "--out", str(tmp / "x")], (plugins,)),
                "learn-broken-plugin": (["learn", "broken", "--out", str(tmp / "x")], (plugins,)),
                "argparse": (["learn", "blending"], ()),
                "version": (["--version"], ()),
            }
        )
    finally:
        _undo_readonly(readonly)
        _undo_readonly(trainable)


# ---------------------------------------------------------------------------------------
# Work done, then lost: refused before any work.


def test_learn_into_a_read_only_folder(results: dict[str, Result]) -> None:
    assert_one_line_error(results["learn-readonly"], 2, "learn", "cannot write into")


def test_learn_onto_an_existing_file(results: dict[str, Result]) -> None:
    assert_one_line_error(results["learn-onto-file"], 2, "learn", "is an existing file")


def test_train_into_a_read_only_folder(results: dict[str, Result]) -> None:
    result = results["train-readonly"]
    assert_one_line_error(result, 2, "train", "cannot write into")
    assert "test accuracy" not in result.out  # nothing was trained


# ---------------------------------------------------------------------------------------
# Success that is not.


def test_cg_without_damping_fails_and_keeps_the_old_commentary(
    results: dict[str, Result],
) -> None:
    result = results["cg-skips"]
    assert_one_line_error(result, 1, "learn", "3 of 3 meta-steps failed")
    assert "--cg-damping" in result.err and "the commentary already there is kept" in result.err
    kept = KEPT["path"]
    saved = json.loads((kept / "commentary.json").read_text())
    assert saved["extra"] == {"learn": {"seed": 0}}  # still the old one
    load_commentary(kept)


def test_an_infinite_student_learning_rate_is_refused(results: dict[str, Result]) -> None:
    assert_one_line_error(
        results["student-lr-inf"], 2, "learn", "argument --student-lr: expected a finite number"
    )


def test_an_infinite_meta_learning_rate_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(
        _in_process(capsys, [*LEARN, "--meta-lr", "inf", "--out", "x"]),
        2,
        "learn",
        "argument --meta-lr: expected a finite number",
    )


def test_a_run_whose_parameters_blow_up_fails(results: dict[str, Result]) -> None:
    result = results["student-lr-huge"]
    assert_one_line_error(result, 1, "learn", "NaN")
    assert not (KEPT["huge"]).exists()


def test_train_refuses_a_checkpoint_of_nan_weights(results: dict[str, Result]) -> None:
    result = results["train-nan"]
    assert_one_line_error(result, 2, "train", "its weights are not finite")
    assert "learned commentary" not in result.out


# ---------------------------------------------------------------------------------------
# Tracebacks instead of errors (the other damaged checkpoints: test_checkpoint_damage.py).


def test_a_truncated_checkpoint_is_one_line(results: dict[str, Result]) -> None:
    assert_one_line_error(results["truncated"], 2, "train", "commentary.pt")


def test_set_with_a_value_of_the_wrong_type(results: dict[str, Result]) -> None:
    assert_one_line_error(
        results["set-abc"], 2, "learn", "--set init=abc does not fit BlendingCommentary"
    )


def test_debug_shows_the_traceback_too(capsys: pytest.CaptureFixture[str]) -> None:
    result = _in_process(capsys, ["--debug", "train", "--commentary", "/nonexistent"])
    assert result.code == 2 and "Traceback" in result.err
    assert result.lines[-1].startswith("commentaries train: error: commentary folder")


# ---------------------------------------------------------------------------------------
# Plugin discovery.


def test_list_survives_bad_plugins_and_reports_them(results: dict[str, Result]) -> None:
    result = results["list-plugins"]
    assert result.code == 0 and "Traceback" not in result.err, result.err
    plain = [line for line in result.out.splitlines() if "CLASH" not in line]
    lines = {line.split()[0]: line for line in plain}
    assert "Blend pairs of examples" in lines["blending"]  # the built-in stays usable
    assert "weighting" in lines and "masks" in lines
    assert "BROKEN" in lines["anint"] and "not a subclass" in lines["anint"]
    assert "BROKEN" in lines["exits"] and "sys.exit(3)" in lines["exits"]
    assert "libfrobnicate" in lines["broken"]
    clash = [line for line in result.out.splitlines() if "CLASH" in line]
    assert len(clash) == 1 and "clash-plugin 2.0" in clash[0]
    assert "implicitgrad-commentaries 0.1.0" in clash[0]
    assert "RuntimeWarning" not in result.err


def test_learn_a_plugin_that_is_not_a_class(results: dict[str, Result]) -> None:
    assert_one_line_error(results["learn-int-plugin"], 2, "learn", "names int 3, not a subclass")


def test_learn_a_plugin_that_fails_to_import_says_why_once(results: dict[str, Result]) -> None:
    result = results["learn-broken-plugin"]
    assert_one_line_error(result, 2, "learn", "needs libfrobnicate 2.0")
    assert result.err.count("libfrobnicate") == 1 and "unknown commentary" not in result.err


# ---------------------------------------------------------------------------------------
# Conventions.


def test_argparse_errors_are_one_line(results: dict[str, Result]) -> None:
    result = results["argparse"]
    assert_one_line_error(result, 2, "learn", "the following arguments are required: --out")
    assert len(result.lines) == 1 and "usage:" not in result.err


def test_help_shows_defaults_and_help_for_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from implicitgrad_commentaries.cli import build_parser

    result = _in_process(capsys, ["learn", "--help"])
    assert result.code == 0
    for fragment in ("(default: 300)", "(default: neumann)", "(default: auto)", "--device"):
        assert fragment in result.out
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for p in [parser, *subparsers.values()]:
        for action in p._actions:
            assert action.help, (p.prog, action.option_strings)


def test_version_names_both_distributions(results: dict[str, Result]) -> None:
    result = results["version"]
    assert result.code == 0
    assert "implicitgrad-commentaries " in result.out and "implicitgrad " in result.out


def test_an_unavailable_device_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    result = _in_process(capsys, [*LEARN, "--device", "cuda:99", "--out", "x"])
    assert_one_line_error(result, 2, "learn", "'cuda:99' is not available")


def _in_process(capsys: pytest.CaptureFixture[str], args: list[str]) -> Result:
    """For the cases about parsing: `main` in this process, which is much faster."""
    try:
        code = main(args)
    except SystemExit as exc:  # --help
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)

"""Every way a saved commentary can be damaged or mismatched gives one `CheckpointError`
line that names the folder, what is wrong and what to do; `train` exits 2 with it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_helpers import saved_blending
from implicitgrad_commentaries import WeightingCommentary, load_commentary, save_commentary
from implicitgrad_commentaries.checkpoint import CheckpointError
from implicitgrad_commentaries.cli import main
from implicitgrad_commentaries.commentaries.base import DataSpec


def _edit_meta(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "commentary.json").read_text())
        change(meta)
        (folder / "commentary.json").write_text(json.dumps(meta))

    return edit


def _flip_a_bit(folder: Path) -> None:
    raw = bytearray((folder / "commentary.pt").read_bytes())
    raw[len(raw) // 2] ^= 0x10
    (folder / "commentary.pt").write_bytes(bytes(raw))


def _other_plugins_weights(folder: Path) -> None:
    other = WeightingCommentary(DataSpec("digits", (1, 8, 8), tuple("0123456789")))
    elsewhere = save_commentary(other, folder.parent / "weighting")
    (folder / "commentary.pt").write_bytes((elsewhere / "commentary.pt").read_bytes())
    _edit_meta(lambda m: m.pop("weights_sha256"))(folder)


DAMAGE = {
    "truncated .pt": (
        lambda f: (f / "commentary.pt").write_bytes((f / "commentary.pt").read_bytes()[:100]),
        "does not match the checksum",
    ),
    "empty .pt": (lambda f: (f / "commentary.pt").write_bytes(b""), "commentary.pt is empty"),
    "bit-flipped .pt": (_flip_a_bit, "does not match the checksum"),
    "truncated .pt, no checksum": (
        lambda f: (
            (f / "commentary.pt").write_bytes((f / "commentary.pt").read_bytes()[:100]),
            _edit_meta(lambda m: m.pop("weights_sha256"))(f),
        ),
        "commentary.pt cannot be read",
    ),
    "missing .pt": (lambda f: (f / "commentary.pt").unlink(), "commentary.pt is missing"),
    "invalid json": (
        lambda f: (f / "commentary.json").write_text("{not json"),
        "is not valid JSON",
    ),
    "binary json": (
        lambda f: (f / "commentary.json").write_bytes(b"\xff\xfe\x00"),
        "is not valid JSON",
    ),
    "list json": (
        lambda f: (f / "commentary.json").write_text(f"[{(f / 'commentary.json').read_text()}]"),
        "holds a JSON list, not an object",
    ),
    "plugin renamed": (
        _edit_meta(lambda m: m.update(plugin="no-such-plugin")),
        "plugin 'no-such-plugin', which cannot be loaded",
    ),
    "plugin not a string": (_edit_meta(lambda m: m.update(plugin=3)), "'plugin'"),
    "config value edited": (
        _edit_meta(lambda m: m["config"].update(init="abc")),
        "does not fit BlendingCommentary: ValueError",
    ),
    "config mode edited": (
        _edit_meta(lambda m: m["config"].update(mode="bogus")),
        "does not fit BlendingCommentary",
    ),
    "config key added": (
        _edit_meta(lambda m: m["config"].update(colour="red")),
        "unexpected keyword argument 'colour'",
    ),
    "config not an object": (_edit_meta(lambda m: m.update(config=[1])), "'config'"),
    "dataset edited": (
        _edit_meta(lambda m: m["dataset"].update(classes=["a", "b"])),
        "matrix (10, 10) (saved) vs (2, 2)",
    ),
    "dataset broken": (
        _edit_meta(lambda m: m["dataset"].pop("classes")),
        "dataset description in commentary.json is invalid",
    ),
    "fields missing": (_edit_meta(lambda m: m.pop("format")), "lacks the fields ['format']"),
    "future format": (_edit_meta(lambda m: m.update(format=99)), "has format 99"),
    "weights of another plugin": (_other_plugins_weights, "weights of another plugin"),
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return saved_blending(tmp_path / "blend")


@pytest.mark.parametrize("case", DAMAGE)
def test_damage_is_one_checkpoint_error_line(folder: Path, case: str) -> None:
    damage, message = DAMAGE[case]
    damage(folder)
    with pytest.raises(CheckpointError) as info:
        load_commentary(folder)
    text = str(info.value)
    assert "\n" not in text and message in text, text
    assert text.startswith(f"commentary folder {str(folder)!r}: ")
    assert "Learn it again" in text or "Install" in text or "Pass" in text


@pytest.mark.parametrize("case", ["bit-flipped .pt", "list json", "weights of another plugin"])
def test_train_exits_2_with_the_line(
    folder: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    DAMAGE[case][0](folder)
    assert main(["train", "--commentary", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("commentaries train: error: commentary folder")
    assert "Traceback" not in err


def test_a_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        load_commentary(tmp_path / "f")


def test_saving_non_finite_weights_is_refused(tmp_path: Path) -> None:
    c = saved_blending(tmp_path / "a")
    commentary = load_commentary(c)
    with torch.no_grad():
        commentary.matrix[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="1 of 100 values of 'matrix'"):
        save_commentary(commentary, tmp_path / "b")
    assert not (tmp_path / "b").exists()

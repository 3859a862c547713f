"""Students, teachers, batches and checkpoints follow the device: CPU everywhere, CUDA
where there is one (skipped otherwise, with the reason)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from commentary_helpers import make_tiny
from implicitgrad_commentaries import (
    BlendingCommentary,
    Implicit,
    MaskCommentary,
    TrainConfig,
    Unroll,
    WeightingCommentary,
    learn,
    load_commentary,
    save_commentary,
    train_student,
)
from implicitgrad_commentaries.learning import resolve_device

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="no CUDA device on this machine"
        ),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("cls", "method"),
    [
        (BlendingCommentary, Implicit(student_steps=3)),
        (WeightingCommentary, Unroll(inner_steps=2)),
        (MaskCommentary, Implicit(student_steps=3)),
    ],
)
def test_learn_train_and_reload_on_the_device(
    device: str, cls: type, method: object, tmp_path: Path
) -> None:
    data = make_tiny(shape=(1, 16, 16))
    torch.manual_seed(0)
    commentary = cls(data.spec)
    history = learn(commentary, data, method, student="linear", steps=2, device=device)
    assert history.failure(2) is None
    assert all(p.device.type == device for p in commentary.parameters())
    folder = save_commentary(commentary, tmp_path / "c")
    for target in ("cpu", device):  # learned on one device, loaded on another
        again = load_commentary(folder, device=target)
        assert all(p.device.type == target for p in again.parameters())
        for a, b in zip(again.parameters(), commentary.parameters()):
            assert torch.equal(a.detach().cpu(), b.detach().cpu())
    result = train_student(data, "linear", commentary, config=TrainConfig(steps=3), device=device)
    assert 0.0 <= result.final <= 1.0


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(Exception, match="unknown device 'tpu'"):
        resolve_device("tpu")

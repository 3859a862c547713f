"""Pictures of what a commentary learned: the noisy-label dataset, the weighting figures and
their mislabeled counts, and the mask grid."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from implicitgrad_commentaries import MaskCommentary, WeightingCommentary, save_commentary  # noqa: E402
from implicitgrad_commentaries.cli import main  # noqa: E402
from implicitgrad_commentaries.data import load_dataset, load_digits_dataset  # noqa: E402
from implicitgrad_commentaries.datasets import load_noisy_digits  # noqa: E402
from implicitgrad_commentaries.mask_data import load_cluttered  # noqa: E402
from implicitgrad_commentaries.masks import centre_distance  # noqa: E402
from implicitgrad_commentaries.plots import noise_detection, plot_commentary  # noqa: E402

from implicitgrad import InputError  # noqa: E402

LOWEST = re.compile(r"(\d+) of the (\d+) lowest-weighted are mislabeled \(chance ([\d.]+)\)")
AUC = re.compile(r"AUC of low weight for mislabeled ([\d.]+)")


@pytest.fixture(scope="module")
def noisy():
    return load_noisy_digits()


def test_noisy_digits_flips_exactly_the_fraction_to_other_classes(noisy) -> None:
    clean = load_digits_dataset()
    train = noisy.train
    assert train.noisy is not None and train.clean_y is not None
    assert train.noisy.dtype == torch.bool and int(train.noisy.sum()) == round(0.2 * len(train))
    assert torch.equal(train.clean_y, clean.train.y) and torch.equal(train.x, clean.train.x)
    assert bool((train.y[train.noisy] != train.clean_y[train.noisy]).all())
    assert torch.equal(train.y[~train.noisy], train.clean_y[~train.noisy])
    assert set(train.y[train.noisy].tolist()) <= set(range(10))
    # Every wrong class is reachable: the flips are not a fixed permutation of the labels.
    assert len(set((train.y[train.noisy] - train.clean_y[train.noisy]).remainder(10).tolist())) == 9
    half = load_noisy_digits(noise=0.5)
    assert int(half.train.noisy.sum()) == round(0.5 * len(half.train))
    assert int(load_noisy_digits(noise=0.0).train.noisy.sum()) == 0


def test_noisy_digits_keeps_validation_and_test_clean(noisy) -> None:
    clean = load_digits_dataset()
    for got, want in ((noisy.val, clean.val), (noisy.test, clean.test)):
        assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y)
        assert got.noisy is None and got.clean_y is None
    assert clean.train.noisy is None
    assert noisy.spec.name == "digits-noisy" and noisy.spec.classes == clean.spec.classes


def test_noisy_digits_is_deterministic_and_registered(noisy) -> None:
    again = load_dataset("digits-noisy", "unused")
    assert torch.equal(again.train.y, noisy.train.y)
    assert torch.equal(again.train.noisy, noisy.train.noisy)
    other = load_noisy_digits(seed=1)
    assert not torch.equal(other.train.noisy, noisy.train.noisy)
    moved = noisy.train.to("cpu")
    assert torch.equal(moved.noisy, noisy.train.noisy)


@pytest.mark.parametrize("noise", [-0.1, 1.5, "0.2", True])
def test_noisy_digits_rejects_a_bad_fraction(noise: object) -> None:
    with pytest.raises(InputError, match=r"load_noisy_digits\(noise=\.\.\.\)"):
        load_noisy_digits(noise=noise)  # type: ignore[arg-type]


def _teacher(spec) -> WeightingCommentary:
    torch.manual_seed(0)
    c = WeightingCommentary(spec)
    with torch.no_grad():  # spread the weights, as after some learning
        c.head.weight.mul_(30.0)
    return c


def _mean_weights(c: WeightingCommentary, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([c(x, y, float(t)) for t in np.linspace(0, 1, 21)]).mean(0)


def test_show_reports_the_mislabeled_count_of_the_teacher(
    noisy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = _teacher(noisy.spec)
    folder = save_commentary(teacher, tmp_path / "weighting")
    assert main(["--quiet", "show", str(folder)]) == 0
    out = capsys.readouterr().out
    for name in ("weights.png", "weights-examples.png"):
        assert 1000 < (folder / name).stat().st_size < 300_000
    found, k, chance = map(float, LOWEST.search(out).groups())
    # Independently: the 16 lowest mean weights over 21 points of training, and the AUC as
    # the fraction of (mislabeled, correct) pairs ordered by weight.
    w = _mean_weights(teacher, noisy.train.x, noisy.train.y)
    flags = noisy.train.noisy
    ranked = torch.sort(w).values
    assert ranked[16] - ranked[15] > 1e-5  # the count does not hinge on rounding
    assert int(k) == 16 and int(found) == int(flags[torch.argsort(w)[:16]].sum())
    assert chance == pytest.approx(16 * 0.2, abs=0.05)
    pairs = (w[flags][:, None] < w[~flags][None]).double().mean()
    assert float(AUC.search(out).group(1)) == pytest.approx(float(pairs), abs=1e-3)


def test_weight_extremes_count_planted_mislabels(noisy, tmp_path: Path, capsys) -> None:
    teacher = _teacher(noisy.spec)
    order = torch.argsort(_mean_weights(teacher, noisy.train.x, noisy.train.y))
    # Mark 10 of the 16 lowest-weighted and 100 examples from the upper half as mislabeled.
    flags = torch.zeros(len(noisy.train), dtype=torch.bool)
    flags[order[:10]] = True
    flags[order[-100:]] = True
    data = replace(noisy, train=replace(noisy.train, noisy=flags))
    paths = plot_commentary(teacher, data, tmp_path)
    assert [p.name for p in paths] == ["weights.png", "weights-examples.png"]
    out = capsys.readouterr().out
    assert LOWEST.search(out).groups()[:2] == ("10", "16")
    d = noise_detection(_mean_weights(teacher, data.train.x, data.train.y), flags, k=16)
    assert d.lowest_mislabeled == 10 and d.mislabeled == 110
    assert d.expected == pytest.approx(16 * 110 / len(flags))
    assert d.precision == pytest.approx(10 / 110)
    # 10 flags below every correct example, 100 above every one.
    assert d.auc == pytest.approx(10 / 110, abs=1e-9)


@pytest.mark.parametrize("noise", [None, 0.0])
def test_show_without_flipped_labels_prints_no_noise_line(
    noise: float | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = load_digits_dataset() if noise is None else load_noisy_digits(noise=noise)
    paths = plot_commentary(_teacher(data.spec), data, tmp_path)
    assert {p.name for p in paths} == {"weights.png", "weights-examples.png"}
    assert "mislabeled" not in capsys.readouterr().out


def test_noise_detection_refuses_unusable_flags() -> None:
    with pytest.raises(InputError, match="noise_detection"):
        noise_detection(torch.rand(5), torch.zeros(5, dtype=torch.bool))
    with pytest.raises(InputError, match="noise_detection"):
        noise_detection(torch.rand(5), torch.tensor([True, False, False, False, True]), k=6)


def test_masks_draw_the_grid_and_report_the_distance(tmp_path: Path, capsys) -> None:
    data = load_cluttered(size=16, distractors=3, copies=1)
    torch.manual_seed(0)
    mask = MaskCommentary(data.spec, teacher="conv")
    paths = plot_commentary(mask, data, tmp_path)
    assert [p.name for p in paths] == ["masks.png", "masked-inputs.png"]
    for p in paths:
        assert 1000 < p.stat().st_size < 300_000
    out = capsys.readouterr().out
    got = re.search(r"the mask centre is ([\d.]+) px from the target", out)
    want = centre_distance(mask, data.test.x, data.test.centre).mean()
    assert float(got.group(1)) == pytest.approx(float(want), abs=0.006)

"""The mixup baseline (Zhang et al., 2018): λ ~ Beta(α, α), inputs and one-hot labels mixed."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from implicitgrad_commentaries import BlendingCommentary, DataSpec, Mixup, TrainConfig
from implicitgrad_commentaries.learning.reuse import train_student

from implicitgrad import InputError

SPEC = DataSpec("toy", (5,), ("a", "b", "c"))


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_lambda_follows_beta_alpha_alpha(alpha: float) -> None:
    mixup = Mixup(SPEC, alpha=alpha)
    gen = torch.Generator().manual_seed(0)
    lam = np.array([mixup.sample_lambda(gen) for _ in range(4000)])
    assert np.all((lam >= 0) & (lam <= 1))
    # Kolmogorov–Smirnov against Beta(α, α): with 4000 draws a real mismatch gives p ~ 0.
    assert scipy.stats.kstest(lam, scipy.stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    # Beta(α, α) has mean 1/2 and variance 1 / (4 (2α + 1)).
    assert abs(lam.mean() - 0.5) < 0.02
    assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_same_generator_state_gives_the_same_mix() -> None:
    mixup, x, y = Mixup(SPEC), torch.randn(16, 5), torch.arange(16) % 3
    first = mixup.mix(x, y, torch.Generator().manual_seed(3))
    second = mixup.mix(x, y, torch.Generator().manual_seed(3))
    assert first[2] == second[2] and torch.equal(first[3], second[3])
    assert torch.equal(first[0], second[0])


def test_inputs_and_one_hot_labels_are_mixed_with_one_lambda() -> None:
    mixup = Mixup(SPEC, alpha=0.5)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.arange(16) % 3
    x_mix, target, lam, perm = mixup.mix(x, y, torch.Generator().manual_seed(1))
    assert sorted(perm.tolist()) == list(range(16)) and 0 < lam < 1
    assert torch.allclose(x_mix, lam * x + (1 - lam) * x[perm])
    onehot = F.one_hot(y, 3).to(torch.float64)
    assert torch.allclose(target, lam * onehot + (1 - lam) * onehot[perm])
    assert torch.allclose(target.sum(1), torch.ones(16, dtype=torch.float64))
    # Cross-entropy against the mixed labels is λ CE(y_i) + (1 − λ) CE(y_π(i)).
    student = torch.nn.Linear(5, 3).to(torch.float64)
    loss = mixup.loss({}, student, x, y, 0.0, torch.Generator().manual_seed(1))
    logits = student(x_mix)
    expected = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
    assert torch.allclose(loss, expected)


def test_mixup_is_a_fixed_control_of_blending_and_trains_a_student() -> None:
    controls = BlendingCommentary(SPEC).controls()
    mixup = controls["mixup (α = 1)"]
    assert isinstance(mixup, Mixup) and mixup.alpha == 1.0
    assert not mixup.is_learnable and mixup.phi() == {}
    from implicitgrad_commentaries.data import load_digits_dataset

    data = load_digits_dataset()
    result = train_student(data, "linear", Mixup(data.spec), config=TrainConfig(steps=30))
    assert 0.3 < result.final <= 1.0


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), True, "1"])
def test_bad_alpha_is_refused(alpha: object) -> None:
    with pytest.raises(InputError, match=r"`Mixup\(alpha=\.\.\.\)` must be"):
        Mixup(SPEC, alpha=alpha)  # type: ignore[arg-type]


@pytest.mark.slow
def test_demo_prints_the_mixup_row(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from implicitgrad_commentaries import demo

    status = demo.main(["--quiet", "--seeds", "2", "--steps", "20", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| mixup (α = 1) |")]
    assert len(rows) == 1 and rows[0].count("±") == 5, out

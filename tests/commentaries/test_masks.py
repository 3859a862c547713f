"""The attention-mask commentary and its canvas datasets.

Checks the datasets (shapes, ground truth, seeding, the spurious correlation), the mask
(parametrizations, controls, the student's input pipeline), the hypergradient against
central finite differences in float64, and the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny
from implicitgrad_commentaries import DataSpec, MaskCommentary, learn
from implicitgrad_commentaries.cli import main as cli_main
from implicitgrad_commentaries.data import DATASETS, Dataset, Split, load_dataset
from implicitgrad_commentaries.learn import Implicit
from implicitgrad_commentaries.mask_data import PlacedSplit, load_cluttered, load_spurious
from implicitgrad_commentaries.masks import centre_distance
from implicitgrad_commentaries.train import TrainConfig, train_student

import implicitgrad as ig


@pytest.fixture(scope="module")
def cluttered() -> Dataset:
    return load_cluttered(size=16, distractors=3, copies=1)


@pytest.fixture(scope="module")
def spurious() -> Dataset:
    return load_spurious()


# --------------------------------------------------------------------------------------------
# Datasets


def test_cluttered_canvas_holds_the_target_digit_at_its_centre(cluttered: Dataset) -> None:
    from implicitgrad_commentaries.data import load_digits_dataset

    digits = load_digits_dataset()
    assert isinstance(cluttered.test, PlacedSplit)
    assert cluttered.spec.input_shape == (1, 16, 16) and cluttered.spec.name == "cluttered"
    for split, base in ((cluttered.train, digits.train), (cluttered.test, digits.test)):
        assert len(split) == len(base) and torch.equal(split.y, base.y)
        corner = (split.centre - 3.5).long()
        # The target is pasted whole and fragments never overlap it.
        for i in range(0, len(split), 97):
            r, c = corner[i].tolist()
            assert torch.equal(split.x[i, 0, r : r + 8, c : c + 8], base.x[i, 0])
        # Fragments add ink outside the target: 3 crops of 4x4 from other digits.
        outside = split.x.sum((1, 2, 3)) - base.x.sum((1, 2, 3))
        assert (outside > 0).float().mean() > 0.9


def test_datasets_are_seeded() -> None:
    a, b = load_cluttered(size=16, copies=1), load_cluttered(size=16, copies=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.centre, b.test.centre)
    c = load_cluttered(size=16, copies=3, seed=1)
    assert len(c.train) == 3 * len(a.train) and not torch.equal(a.test.x, c.test.x)


def test_spurious_bar_predicts_the_label_except_at_test(spurious: Dataset) -> None:
    def agreement(split: Split) -> float:
        bar = split.x[:, 0, -1, ::2].argmax(1)
        return float((bar == split.y).float().mean())

    # 0.9 honest plus 0.1 * 1/10 random hits.
    assert agreement(spurious.train) == pytest.approx(0.91, abs=0.03)
    assert agreement(spurious.val) == pytest.approx(0.91, abs=0.05)
    assert agreement(spurious.test) == pytest.approx(0.10, abs=0.05)
    rows = (spurious.test.centre[:, 0] + 4.5).max()
    assert rows <= spurious.spec.input_shape[1] - 4, "the digit stays clear of the bar"
    clean = load_spurious(val_correlation=0.0)
    assert torch.equal(clean.train.x, spurious.train.x)
    assert agreement(clean.val) == pytest.approx(0.10, abs=0.05)


def test_mask_datasets_are_registered() -> None:
    assert {"cluttered", "spurious"} <= set(DATASETS)
    assert load_dataset("spurious").spec.name == "spurious"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: load_cluttered(size=12), "size"),
        (lambda: load_cluttered(crop=9), "crop"),
        (lambda: load_spurious(correlation=1.5), "correlation"),
        (lambda: load_spurious(size=18), "bar fits"),
    ],
)
def test_dataset_errors_name_the_call(call, match: str) -> None:
    with pytest.raises(ig.InputError, match=match):
        call()


# --------------------------------------------------------------------------------------------
# The mask


SPEC = DataSpec("toy", (1, 12, 12), ("a", "b", "c"))


@pytest.mark.parametrize("teacher", ["conv", "unet"])
def test_mask_is_a_gaussian_around_its_centre(teacher: str) -> None:
    torch.manual_seed(0)
    c = MaskCommentary(SPEC, teacher=teacher, init_sigma=2.5, init_background=0.2)
    x = torch.rand(5, 1, 12, 12)
    m = c(x)
    mu, sigma, bg = c.parameters_of_mask(x)
    assert m.shape == (5, 1, 12, 12)
    assert float(bg.detach()) == pytest.approx(0.2)
    assert ((mu >= 0) & (mu <= 11)).all()
    rows = torch.arange(12.0)
    grid = torch.stack(torch.meshgrid(rows, rows, indexing="ij"), -1)
    d2 = ((grid[None] - mu[:, None, None]) ** 2).sum(-1)
    expected = bg + torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
    torch.testing.assert_close(m[:, 0], expected)
    if teacher == "conv":  # starts at the canvas centre with the initial width
        torch.testing.assert_close(mu, torch.full((5, 2), 5.5), atol=0.5, rtol=0)
        torch.testing.assert_close(sigma, torch.full((5,), 2.5), atol=0.3, rtol=0)
    else:
        torch.testing.assert_close(sigma, torch.full((5,), 2.5))


def test_controls_are_fixed_and_use_the_learned_width() -> None:
    c = MaskCommentary(SPEC, init_sigma=4.0, init_background=0.3)
    x = torch.rand(6, 1, 12, 12)
    controls = c.controls(x)
    centred, rand = controls["centred mask"], controls["random-centre mask"]
    assert not centred.is_learnable and not rand.is_learnable and centred.phi() == {}
    mu, sigma, bg = centred.parameters_of_mask(x)
    assert torch.equal(mu, torch.full((6, 2), 5.5))
    assert float(sigma[0]) == pytest.approx(float(c.parameters_of_mask(x)[1].detach().mean()))
    assert float(bg) == pytest.approx(0.3)
    g = torch.Generator
    a = rand.parameters_of_mask(x, g().manual_seed(1))[0]
    assert torch.equal(a, rand.parameters_of_mask(x, g().manual_seed(1))[0])
    assert not torch.equal(a, rand.parameters_of_mask(x, g().manual_seed(2))[0])
    d = centre_distance(centred, x, torch.tensor([[5.5, 9.5]]).expand(6, 2))
    torch.testing.assert_close(d, torch.full((6,), 4.0))


def test_loss_trains_on_masked_images_and_validation_sees_them_too() -> None:
    from implicitgrad_commentaries.learn import losses

    torch.manual_seed(0)
    c = MaskCommentary(SPEC)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3))
    x, y = torch.rand(8, 1, 12, 12), torch.arange(8) % 3
    phi = c.phi()
    masked = c.student_inputs(phi, x)
    torch.testing.assert_close(masked, x * c(x))
    torch.testing.assert_close(c.loss(phi, student, x, y, 0.0), F.cross_entropy(student(masked), y))
    fn, theta = ig.make_functional(student)
    _, outer = losses(c, fn, (x, y), (x, y), 0.0, 0)
    val = outer(theta, phi)
    torch.testing.assert_close(val, F.cross_entropy(student(masked), y))
    grads = torch.autograd.grad(val, list(phi.values()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "L_V depends on φ"


def test_trained_students_are_tested_on_masked_images() -> None:
    data = make_tiny(n=48, shape=(1, 12, 12), name="toy")
    centred = MaskCommentary(data.spec, mode="centred", init_sigma=2.0, init_background=0.05)

    def masked(split: Split) -> Split:
        return Split(split.x * centred(split.x), split.y)

    premasked = Dataset(data.spec, masked(data.train), masked(data.val), masked(data.test))
    config = TrainConfig(steps=30, batch_size=16, eval_fractions=(0.5, 1.0))
    with_mask = train_student(data, "linear", centred, config=config, seed=3)
    by_hand = train_student(premasked, "linear", None, config=config, seed=3)
    assert with_mask.accuracy == by_hand.accuracy


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(teacher="mlp"), "teacher"),
        (dict(mode="best"), "mode"),
        (dict(init_background=1.0), "init_background"),
        (dict(init_sigma=1.0), "init_sigma"),
        (dict(width=0), "width"),
    ],
)
def test_mask_errors_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ig.InputError, match=match):
        MaskCommentary(SPEC, **kwargs)
    with pytest.raises(ig.InputError, match="image inputs"):
        MaskCommentary(DataSpec("vec", (5,), ("a", "b")))


# --------------------------------------------------------------------------------------------
# Hypergradient against finite differences


def _newton(inner, theta: torch.Tensor, phi: dict, iters: int = 30) -> torch.Tensor:
    """Solve the strongly convex inner problem to machine precision."""
    for _ in range(iters):
        g = torch.autograd.functional.jacobian(lambda t: inner(t, phi), theta)
        if float(g.norm()) < 1e-13:
            break
        h = torch.autograd.functional.hessian(lambda t: inner(t, phi), theta)
        theta = theta - torch.linalg.solve(h, g)
    return theta.detach()


def test_hypergradient_matches_finite_differences_float64() -> None:
    torch.manual_seed(0)
    n, side, classes, l2 = 18, 10, 3, 1e-1
    spec = DataSpec("toy", (1, side, side), tuple("abc"))
    c = MaskCommentary(spec, teacher="conv", width=2, init_sigma=3.0).double()
    with torch.no_grad():  # move the masks off the centre so that every φ leaf matters
        c.net.head.weight.normal_(0, 0.3)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, side, side, generator=gen, dtype=torch.float64)
    y = torch.arange(n) % classes
    xv = torch.rand(n, 1, side, side, generator=gen, dtype=torch.float64)
    yv = torch.arange(n) % classes
    d = side * side

    def student(theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        w, b = theta[: classes * d].reshape(classes, d), theta[classes * d :]
        return z.flatten(1) @ w.T + b

    def inner(theta: torch.Tensor, phi: dict) -> torch.Tensor:
        loss = c.loss(phi, lambda z: student(theta, z), x, y, 0.0)
        return loss + 0.5 * l2 * (theta**2).sum()

    def outer(theta: torch.Tensor, phi: dict) -> torch.Tensor:
        return F.cross_entropy(student(theta, c.student_inputs(phi, xv)), yv)

    phi = {k: v.detach() for k, v in c.phi().items()}
    theta0 = torch.zeros(classes * d + classes, dtype=torch.float64)
    theta_star = _newton(inner, theta0, phi)
    hg, info = ig.hypergrad(inner, outer, theta_star, phi, solver=ig.Exact(), return_info=True)
    assert info.stationarity < 1e-12

    def value(t: float, direction: dict) -> float:
        shifted = {k: phi[k] + t * direction[k] for k in phi}
        return float(outer(_newton(inner, theta_star, shifted), shifted))

    eps = 1e-5
    for seed in range(3):
        g = torch.Generator().manual_seed(10 + seed)
        direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in phi.items()}
        analytic = sum(float((hg[k] * direction[k]).sum()) for k in phi)
        numeric = (value(eps, direction) - value(-eps, direction)) / (2 * eps)
        # Central differences in float64 with eps 1e-5: truncation ~eps^2 * |third derivative|
        # and rounding ~1e-16 / eps, both far below 1e-7 here.
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    # The implicit term matters: dropping it (the direct term only) misses the answer.
    direct = torch.autograd.grad(
        outer(theta_star, {k: v.requires_grad_(True) for k, v in phi.items()}), list(phi.values())
    )
    total = torch.cat([hg[k].flatten() for k in phi])
    assert not torch.allclose(torch.cat([g.flatten() for g in direct]), total, rtol=1e-2)


# --------------------------------------------------------------------------------------------
# Learning and the command line


def test_learning_moves_the_masks_and_keeps_them_finite(cluttered: Dataset) -> None:
    torch.manual_seed(0)
    c = MaskCommentary(cluttered.spec, teacher="unet", width=4)
    before = centre_distance(c, cluttered.val.x, cluttered.val.centre)
    method = Implicit(ig.CG(max_iter=50, tol=1e-4, damping=0.1), student_lr=0.1, student_steps=5)
    history = learn(c, cluttered, method, student="linear", steps=3, batch_size=16)
    after = centre_distance(c, cluttered.val.x, cluttered.val.centre)
    assert history.skipped == 0 and all(torch.isfinite(torch.tensor(history.hypergrad_norm)))
    assert not torch.equal(before, after) and torch.isfinite(after).all()


def test_cli_learn_train_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "masks"
    common = ["--quiet", "learn", "masks", "--dataset", "cluttered", "--student", "linear"]
    status = cli_main(common + ["--steps", "2", "--student-steps", "2", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    meta = json.loads((out / "commentary.json").read_text())
    assert meta["plugin"] == "masks" and meta["dataset"]["name"] == "cluttered"
    status = cli_main(
        ["--quiet", "train", "--commentary", str(out), "--student", "linear"]
        + ["--seeds", "1", "--steps", "5"]
    )
    assert status == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    for row in ("baseline", "learned commentary", "centred mask", "random-centre mask"):
        assert row in table
    assert cli_main(["--quiet", "show", str(out)]) == 0
    assert (out / "masks.png").stat().st_size > 1000

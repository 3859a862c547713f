"""One conformance suite, run on every registered commentary plugin.

Each plugin is created on a tiny dataset and must honour the
`AbstractCommentary` contract: a finite scalar training loss that is differentiable in
both the student's parameters and φ and deterministic given the generator, JSON-able
config, a save/load round trip, and a learning step that changes φ and keeps it finite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from commentary_helpers import make_tiny
from implicitgrad_commentaries import (
    AbstractCommentary,
    BlendingCommentary,
    Implicit,
    WeightingCommentary,
    learn,
)
from implicitgrad_commentaries.checkpoint import load_commentary, save_commentary
from implicitgrad_commentaries.learn import METHODS
from implicitgrad_commentaries.models import make_student

import implicitgrad as ig


def _registered() -> dict[str, type]:
    names = ig.plugins.available()
    if not names:  # source tree without installation: the built-in plugins
        return {"weighting": WeightingCommentary, "blending": BlendingCommentary}
    return {name: ig.plugins.load(name) for name in names}


PLUGINS = _registered()


@pytest.fixture(params=sorted(PLUGINS))
def commentary(request: pytest.FixtureRequest) -> AbstractCommentary:
    torch.manual_seed(0)
    return PLUGINS[request.param](make_tiny().spec)


def _loss(c: AbstractCommentary, student: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    data = make_tiny()
    gen = torch.Generator().manual_seed(seed)
    return c.loss(c.phi(), student, data.train.x[:12], data.train.y[:12], 0.3, gen)


def test_class_attributes(commentary: AbstractCommentary) -> None:
    name = type(commentary).name
    assert name in PLUGINS and PLUGINS[name] is type(commentary)
    assert type(commentary).default_method in METHODS
    assert isinstance(commentary.describe(), str) and commentary.describe()
    json.dumps(commentary.config)


def test_phi_is_a_nonempty_parameter_dict(commentary: AbstractCommentary) -> None:
    phi = commentary.phi()
    assert phi and all(isinstance(p, torch.nn.Parameter) for p in phi.values())
    assert set(phi) == {k for k, _ in commentary.named_parameters()}


def test_training_loss_contract(commentary: AbstractCommentary) -> None:
    student = make_student("mlp", commentary.spec, seed=0)
    loss = _loss(commentary, student)
    assert loss.shape == () and torch.isfinite(loss)
    assert torch.equal(loss, _loss(commentary, student)), "same generator, same loss"
    theta = list(student.parameters())
    phi = list(commentary.phi().values())
    grads = torch.autograd.grad(loss, theta + phi, allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads[: len(theta)])
    if commentary.is_learnable:
        assert any(g is not None and g.abs().sum() > 0 for g in grads[len(theta) :])


def test_save_load_round_trip(commentary: AbstractCommentary, tmp_path: Path) -> None:
    with torch.no_grad():
        for p in commentary.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_commentary(commentary, tmp_path / "c")
    loaded = load_commentary(tmp_path / "c")
    assert type(loaded) is type(commentary)
    assert loaded.config == commentary.config and loaded.spec == commentary.spec
    for (k, a), (k2, b) in zip(commentary.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    student = make_student("mlp", commentary.spec, seed=0)
    assert torch.equal(_loss(commentary, student), _loss(loaded, student))


def test_a_learning_step_changes_phi(commentary: AbstractCommentary) -> None:
    if not commentary.is_learnable:
        pytest.skip("a fixed control")
    data = make_tiny()
    before = {k: v.detach().clone() for k, v in commentary.phi().items()}
    method = Implicit(ig.Neumann(terms=1, alpha=0.1), student_lr=0.1, student_steps=5)
    history = learn(commentary, data, method, steps=2, batch_size=8, meta_lr=1e-2)
    after = commentary.phi()
    assert history.skipped == 0 and len(history.val_loss) == 2
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_default_method_learns(commentary: AbstractCommentary) -> None:
    if type(commentary).default_method == "unroll" and not hasattr(ig, "unroll"):
        pytest.skip("implicitgrad.unroll is not available in this implicitgrad")
    data = make_tiny()
    before = {k: v.detach().clone() for k, v in commentary.phi().items()}
    history = learn(commentary, data, None, steps=1, batch_size=8)
    assert history.method == type(commentary).default_method
    assert any(not torch.equal(before[k], v) for k, v in commentary.phi().items())


@pytest.mark.parametrize("init_weight", [0.2, 0.7])
def test_normalized_constant_weights_give_plain_cross_entropy(init_weight: float) -> None:
    data = make_tiny()
    c = WeightingCommentary(data.spec, normalize=True, init_weight=init_weight)
    with torch.no_grad():
        c.head.weight.zero_()
    student = make_student("mlp", data.spec, seed=0)
    x, y = data.train.x, data.train.y
    plain = torch.nn.functional.cross_entropy(student(x), y)
    torch.testing.assert_close(c.loss(c.phi(), student, x, y, 0.5), plain)
    unnormalized = WeightingCommentary(data.spec, init_weight=init_weight)
    with torch.no_grad():
        unnormalized.head.weight.zero_()
    scaled = unnormalized.loss(unnormalized.phi(), student, x, y, 0.5)
    torch.testing.assert_close(scaled, init_weight * plain)


def test_controls_are_usable_commentaries(commentary: AbstractCommentary) -> None:
    data = make_tiny()
    controls = commentary.controls(data.val.x)
    assert isinstance(controls, dict)
    student = make_student("mlp", commentary.spec, seed=0)
    for label, control in controls.items():
        assert isinstance(label, str) and isinstance(control, AbstractCommentary)
        assert control.spec == commentary.spec
        assert torch.isfinite(_loss(control, student))


def test_unconverged_solves_are_counted_and_reported_once() -> None:
    data = make_tiny()
    c = BlendingCommentary(data.spec)
    method = Implicit(ig.CG(max_iter=1, tol=1e-12), student_lr=0.1, student_steps=5)
    with pytest.warns(ig.ConvergenceWarning, match=r"in 3 of 3 meta-steps") as record:
        history = learn(c, data, method, steps=3, batch_size=8)
    assert history.not_converged == 3 and "CG" in history.first_warning
    assert sum(issubclass(w.category, ig.ConvergenceWarning) for w in record) == 1

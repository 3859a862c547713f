"""Few-shot meta-learners against their definitions, in float64 on a tiny network.

MAML's meta-gradient is checked against central finite differences of the query loss after
the inner loop (second order), FO-MAML against its own definition, iMAML against the closed
form of a quadratic inner problem and against finite differences on a small network whose
inner problem is solved tightly, the teacher's gradient the same ways, and few-shot folders
round-trip.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from implicitgrad_commentaries.checkpoint import CheckpointError, load_commentary
from implicitgrad_commentaries.fewshot import (
    IMAML,
    MAML,
    METHODS,
    FewShotNet,
    TaskBatch,
    evaluate,
    load_fewshot,
    make_model,
    make_teacher,
    meta_train,
    save_fewshot,
)

import implicitgrad as ig

WAYS, SHOTS, QUERIES = 2, 2, 3


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def tiny_task(seed: int, size: int = 6) -> SimpleNamespace:
    """A stand-in for `datasets.episodes.Task`: images in [0, 1], labels grouped."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    return SimpleNamespace(
        support_x=torch.rand(WAYS * SHOTS, 1, size, size, generator=gen),
        support_y=labels.repeat_interleave(SHOTS),
        query_x=torch.rand(WAYS * QUERIES, 1, size, size, generator=gen),
        query_y=labels.repeat_interleave(QUERIES),
    )


def tiny_net(seed: int = 0) -> tuple:
    torch.manual_seed(seed)
    net = FewShotNet((1, 6, 6), WAYS, width=3, blocks=2, activation="softplus").double()
    return net, *ig.make_functional(net)


def smooth_teacher(seed: int):
    """A teacher whose weights vary clearly between examples, with its ReLUs replaced by
    softplus so that finite differences do not cross kinks (max-pooled ReLU outputs tie at
    zero)."""
    teacher = make_teacher("toy", (1, 6, 6), WAYS, seed=seed).double()
    for i, module in enumerate(teacher.features):
        if isinstance(module, torch.nn.ReLU):
            teacher.features[i] = torch.nn.Softplus()
    with torch.no_grad():
        teacher.head.weight.mul_(30.0)
    return teacher


def direction(params: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}


def dot(a: dict, b: dict) -> float:
    return float(sum((a[k] * b[k]).sum() for k in a))


def shifted(params: dict, v: dict, eps: float) -> dict:
    return {k: (p.detach() + eps * v[k]) for k, p in params.items()}


def central(f, params: dict, v: dict, eps: float) -> float:
    with torch.no_grad():
        return (f(shifted(params, v, eps)) - f(shifted(params, v, -eps))) / (2 * eps)


def check_directions(grads: dict, f, params: dict, abs: float) -> None:
    """`grads` against central differences of `f` along three random directions. Float64
    central differences at eps = 1e-5 have a truncation error ~1e-10 relative, far below
    rel = 1e-6."""
    for seed in range(3):
        v = direction(params, seed)
        assert dot(grads, v) == pytest.approx(central(f, params, v, 1e-5), rel=1e-6, abs=abs)


def query_loss(fn, theta, task) -> torch.Tensor:
    return F.cross_entropy(fn(theta, task.query_x), task.query_y)


# ------------------------------------------------------------------------------------------
# MAML


def test_maml_second_order_matches_finite_differences() -> None:
    _, fn, theta0 = tiny_net()
    task = tiny_task(1)
    maml = MAML(inner_steps=3, inner_lr=0.5)
    grads = torch.autograd.grad(maml.query_loss(fn, theta0, task), list(theta0.values()))
    g = dict(zip(theta0, grads))

    def f(init):
        return float(query_loss(fn, maml.adapt(fn, init, task), task))

    check_directions(g, f, theta0, abs=1e-9)


def test_fomaml_is_the_query_gradient_at_the_adapted_parameters() -> None:
    _, fn, theta0 = tiny_net()
    task = tiny_task(2)
    fo, so = MAML(inner_steps=3, inner_lr=0.5, first_order=True), MAML(3, 0.5)
    theta_fo = fo.adapt(fn, theta0, task)
    grads = torch.autograd.grad(query_loss(fn, theta_fo, task), list(theta0.values()))
    # Definition (Finn et al., 2017): the same inner trajectory, and the meta-gradient is
    # the query gradient at theta_K, taken as if theta_K did not depend on theta_0.
    with torch.no_grad():
        theta_k = so.adapt(fn, theta0, task)
    for k in theta0:
        torch.testing.assert_close(theta_fo[k].detach(), theta_k[k], rtol=0, atol=1e-14)
    leaves = {k: v.detach().requires_grad_() for k, v in theta_k.items()}
    expected = torch.autograd.grad(query_loss(fn, leaves, task), list(leaves.values()))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    so_grads = torch.autograd.grad(so.query_loss(fn, theta0, task), list(theta0.values()))
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(grads, so_grads)), "FO != SO"


def test_fomaml_refuses_a_learned_teacher() -> None:
    _, fn, theta0 = tiny_net()
    teacher = make_teacher("toy", (1, 6, 6), WAYS).double()
    with pytest.raises(ig.InputError, match="first-order MAML has no gradient path"):
        MAML(first_order=True).adapt(fn, theta0, tiny_task(0), teacher, teacher.phi())


def test_maml_teacher_gradient_matches_finite_differences() -> None:
    _, fn, theta0 = tiny_net()
    task = tiny_task(3)
    teacher = smooth_teacher(4)
    phi = teacher.phi()
    maml = MAML(inner_steps=3, inner_lr=0.5)
    loss = maml.query_loss(fn, theta0, task, teacher, phi)
    grads = dict(zip(phi, torch.autograd.grad(loss, list(phi.values()))))

    def f(p):
        return float(query_loss(fn, maml.adapt(fn, theta0, task, teacher, p), task))

    check_directions(grads, f, phi, abs=1e-10)


def test_task_batch_equals_the_loop_over_tasks() -> None:
    _, fn, theta0 = tiny_net()
    tasks = [tiny_task(s) for s in range(3)]
    teacher = make_teacher("toy", (1, 6, 6), WAYS).double()
    for learner in (MAML(2, 0.5), IMAML(lam=2.0, inner_steps=4)):
        loop = sum(learner.query_loss(fn, theta0, t, teacher, teacher.phi()) for t in tasks) / 3
        batch = learner.query_loss(fn, theta0, TaskBatch.stack(tasks), teacher, teacher.phi())
        torch.testing.assert_close(batch, loop, rtol=1e-12, atol=0)
        if isinstance(learner, MAML):  # CG couples the stacked blocks, so only MAML's match
            params = list(theta0.values()) + list(teacher.parameters())
            for a, b in zip(torch.autograd.grad(loop, params), torch.autograd.grad(batch, params)):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------------------------------
# iMAML


def test_imaml_matches_the_closed_form_on_a_quadratic() -> None:
    # theta* = argmin 1/2 t'At - b't + lam/2 |t - theta0|^2  =>  (A + lam I) theta* = b +
    # lam theta0, so d theta*/d theta0 = lam (A + lam I)^-1 (symmetric).
    torch.manual_seed(0)
    n, lam = 6, 0.7
    q = torch.linalg.qr(torch.randn(n, n))[0]
    a = q @ torch.diag(torch.linspace(0.5, 3.0, n)) @ q.T
    b = torch.randn(n)
    theta0 = {"w": torch.randn(n, requires_grad=True)}
    c = torch.randn(n)  # outer loss c' theta*

    def support(theta, phi, progress):
        w = theta["w"]
        return 0.5 * w @ a @ w - b @ w

    imaml = IMAML(lam=lam, inner_steps=400, inner_lr=0.25, solver=ig.CG(max_iter=50, tol=1e-12))
    theta = imaml.solve(support, theta0)
    (grad,) = torch.autograd.grad(c @ theta["w"], [theta0["w"]])
    m = a + lam * torch.eye(n)
    torch.testing.assert_close(theta["w"].detach(), torch.linalg.solve(m, b + lam * theta0["w"]))
    torch.testing.assert_close(grad, lam * torch.linalg.solve(m, c), rtol=1e-9, atol=1e-12)


def tight_imaml() -> IMAML:
    # lam = 4 makes the support problem of the tiny net strongly convex; 300 SGD steps then
    # solve it to ~1e-15, so the implicit gradient is exact up to the CG tolerance.
    return IMAML(lam=4.0, inner_steps=300, inner_lr=0.15, solver=ig.CG(max_iter=500, tol=1e-12))


def test_imaml_matches_finite_differences_on_a_network() -> None:
    _, fn, theta0 = tiny_net()
    task = tiny_task(5)
    imaml = tight_imaml()
    loss = imaml.query_loss(fn, theta0, task)
    g = dict(zip(theta0, torch.autograd.grad(loss, list(theta0.values()))))

    def f(init):
        return float(query_loss(fn, imaml.adapt(fn, init, task), task))

    check_directions(g, f, theta0, abs=1e-9)


def test_imaml_teacher_gradient_matches_finite_differences() -> None:
    _, fn, theta0 = tiny_net()
    task = tiny_task(6)
    teacher = smooth_teacher(2)
    phi = teacher.phi()
    imaml = tight_imaml()
    loss = imaml.query_loss(fn, theta0, task, teacher, phi)
    grads = dict(zip(phi, torch.autograd.grad(loss, list(phi.values()))))

    def f(p):
        return float(query_loss(fn, imaml.adapt(fn, theta0, task, teacher, p), task))

    check_directions(grads, f, phi, abs=1e-10)


def test_imaml_validates_its_settings() -> None:
    with pytest.raises(ig.InputError, match="lam"):
        IMAML(lam=0.0)
    with pytest.raises(ig.InputError, match="solver"):
        IMAML(solver=3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# training, evaluation and checkpoints


def stream(seed: int):
    i = seed
    while True:
        yield tiny_task(i)
        i += 1


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_saves_and_loads(method: str, tmp_path: Path) -> None:
    model = make_model(method, (1, 6, 6), WAYS, width=3, blocks=2, inner_steps=2)
    model.net.double()
    if model.teacher is not None:
        model.teacher.double()
        before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    history = meta_train(model, stream(0), meta_steps=2, meta_batch=2, meta_lr=1e-2)
    assert len(history.losses) == (0 if method == "scratch" else 2)
    if model.teacher is not None:
        changed = any(not torch.equal(before[k], v) for k, v in model.teacher.state_dict().items())
        assert changed == model.learn_teacher
    tasks = [tiny_task(100 + i) for i in range(5)]
    acc = evaluate(model, tasks)
    folder = save_fewshot(model, tmp_path / "run", {"note": "test"})
    loaded = load_fewshot(folder)
    assert loaded.method == method and loaded.learner == model.learner
    assert loaded.learn_teacher == model.learn_teacher
    for k, v in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k].double(), v)
    loaded.net.double()
    if loaded.teacher is not None:
        loaded.teacher.double()
        assert type(load_commentary(folder)).__name__ == "WeightingCommentary"
    assert evaluate(loaded, tasks).per_task == acc.per_task


def test_damaged_folders_are_one_line_errors(tmp_path: Path) -> None:
    model = make_model("imaml", (1, 6, 6), WAYS, width=3, blocks=2, solver=ig.CG(max_iter=7))
    folder = save_fewshot(model, tmp_path / "run")
    assert load_fewshot(folder).learner.solver == ig.CG(max_iter=7)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_fewshot(tmp_path / "missing")
    raw = (folder / "init.pt").read_bytes()
    (folder / "init.pt").write_bytes(raw[:-10])
    with pytest.raises(CheckpointError, match="checksum") as err:
        load_fewshot(folder)
    assert "\n" not in str(err.value)
    save_fewshot(model, folder)  # a new save replaces the damaged folder as one unit
    assert load_fewshot(folder).method == "imaml"
    (folder / "fewshot.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_fewshot(folder)

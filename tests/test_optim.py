"""The differentiable optimizers: torch.optim numerics, tensor hyperparameters, validation."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given
from hypothesis import strategies as st

import implicitgrad as ig

DTYPE = torch.float64


def _run_pair(ours: ig.AbstractOptimizer, theirs, shapes, steps: int, seed: int = 0):
    """Feed the same gradient sequence to both optimizers; return both final parameters."""
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=DTYPE) for s in shapes]
    torch_params = [p.clone().requires_grad_() for p in init]
    torch_opt = theirs(torch_params)
    params = {"a": init[0].clone(), "rest": [p.clone() for p in init[1:]]}
    state = ours.init(params)
    for _ in range(steps):
        grads = [torch.randn(s, generator=gen, dtype=DTYPE) for s in shapes]
        for p, g in zip(torch_params, grads):
            p.grad = g.clone()
        torch_opt.step()
        params, state = ours.step(params, {"a": grads[0], "rest": grads[1:]}, state)
    ours_flat = [params["a"], *params["rest"]]
    return ours_flat, [p.detach() for p in torch_params], state


CASES = [
    (ig.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (ig.SGD(lr=0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    (
        ig.SGD(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1),
    ),
    (
        ig.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    ),
    (ig.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (
        ig.Adam(lr=0.02, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1),
    ),
    (
        ig.Adam(lr=0.01, amsgrad=True, weight_decay=0.05),
        lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True, weight_decay=0.05),
    ),
    (ig.AdamW(lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    (
        ig.AdamW(lr=0.03, weight_decay=0.2, amsgrad=True),
        lambda p: torch.optim.AdamW(p, lr=0.03, weight_decay=0.2, amsgrad=True),
    ),
]


@pytest.mark.parametrize("ours, theirs", CASES, ids=lambda c: repr(c)[:40])
def test_matches_torch_optim(ours, theirs):
    got, want, state = _run_pair(ours, theirs, [(3, 4), (5,), ()], steps=25)
    for g, w in zip(got, want):
        # Same operations in the same order: agreement to a few ulps after 25 steps.
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert state.step == 25


@given(
    lr=st.floats(1e-4, 1.0),
    momentum=st.floats(0.0, 0.99),
    weight_decay=st.floats(0.0, 0.5),
    nesterov=st.booleans(),
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    steps=st.integers(1, 8),
)
def test_sgd_matches_torch_property(lr, momentum, weight_decay, nesterov, shape, steps):
    nesterov = nesterov and momentum > 0
    ours = ig.SGD(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)

    def theirs(p):
        return torch.optim.SGD(
            p, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )

    got, want, _ = _run_pair(ours, theirs, [tuple(shape)], steps)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)


@given(
    lr=st.floats(1e-4, 0.5),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.0, 0.9999),
    eps=st.floats(1e-10, 1e-3),
    weight_decay=st.floats(0.0, 0.5),
    amsgrad=st.booleans(),
    decoupled=st.booleans(),
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    steps=st.integers(1, 8),
)
def test_adam_matches_torch_property(
    lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled, shape, steps
):
    cls, torch_cls = (ig.AdamW, torch.optim.AdamW) if decoupled else (ig.Adam, torch.optim.Adam)
    kwargs = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
    got, want, _ = _run_pair(cls(**kwargs), lambda p: torch_cls(p, **kwargs), [tuple(shape)], steps)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda h: ig.SGD(lr=h, momentum=0.9, nesterov=True),
        lambda h: ig.Adam(lr=h, amsgrad=True),
        lambda h: ig.AdamW(lr=h, weight_decay=0.1),
    ],
)
def test_tensor_hyperparameter_gives_same_values_and_a_gradient(make):
    theta = torch.linspace(-1, 1, 6, dtype=DTYPE)
    lr = torch.tensor(0.05, dtype=DTYPE, requires_grad=True)
    opt_f, opt_t = make(0.05), make(lr)
    a, b = theta.clone(), theta.clone()
    sa, sb = opt_f.init(a), opt_t.init(b)
    for _ in range(3):
        a, sa = opt_f.step(a, torch.sin(3 * a), sa)
        b, sb = opt_t.step(b, torch.sin(3 * b), sb)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    (g,) = torch.autograd.grad((b * torch.arange(6.0)).sum(), lr)
    assert torch.isfinite(g) and g != 0


def test_adam_hypergradient_finite_where_gradient_is_zero():
    # The second entry never receives a gradient: v stays 0, where sqrt has infinite slope.
    lr = torch.tensor(0.1, dtype=DTYPE, requires_grad=True)
    phi = torch.tensor(2.0, dtype=DTYPE, requires_grad=True)
    opt = ig.Adam(lr=lr)
    theta = torch.ones(2, dtype=DTYPE)
    state = opt.init(theta)
    for _ in range(3):
        grad = torch.stack([phi * theta[0], 0.0 * theta[1]])
        theta, state = opt.step(theta, grad, state)
    g_lr, g_phi = torch.autograd.grad(theta.sum(), [lr, phi])
    assert torch.isfinite(g_lr) and torch.isfinite(g_phi)
    assert theta[1] == 1.0


def test_states():
    params = {"w": torch.ones(2, 3), "b": [torch.zeros(3)]}
    assert ig.SGD(lr=0.1).init(params) == ig.SGDState(0, None)
    s = ig.SGD(lr=0.1, momentum=0.5).init(params)
    assert pytree.tree_structure(s.momentum_buffer) == pytree.tree_structure(params)
    a = ig.Adam(lr=0.1).init(params)
    assert isinstance(a, ig.AdamState) and a.max_exp_avg_sq is None
    assert ig.Adam(lr=0.1, amsgrad=True).init(params).max_exp_avg_sq is not None
    new, s2 = ig.SGD(lr=0.5, momentum=0.5).step(params, params, s)
    assert s2.step == 1 and torch.equal(new["w"], torch.full((2, 3), 0.5))
    assert torch.equal(params["w"], torch.ones(2, 3))  # inputs are not modified in place


def test_abstract_optimizer_needs_init_and_step():
    class NoStep(ig.AbstractOptimizer):
        def init(self, params):
            return None

    with pytest.raises(TypeError):
        ig.AbstractOptimizer()  # type: ignore[abstract]
    with pytest.raises(TypeError, match="step"):
        NoStep()  # type: ignore[abstract]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ig.SGD(lr=-0.1), r"SGD\(lr=\.\.\.\)` must lie in \[0.0, inf\], got -0.1"),
        (lambda: ig.SGD(lr="0.1"), r"SGD\(lr=\.\.\.\)` must be a number .* got str"),
        (lambda: ig.SGD(lr=True), r"SGD\(lr=\.\.\.\)` must be a number .* got bool"),
        (lambda: ig.SGD(lr=torch.ones(2)), r"SGD\(lr=\.\.\.\)` .* one-element .* shape \(2,\)"),
        (lambda: ig.SGD(lr=torch.tensor(1)), r"SGD\(lr=\.\.\.\)` .* dtype torch.int64"),
        (lambda: ig.SGD(lr=0.1, momentum=-1), r"SGD\(momentum=\.\.\.\)`"),
        (lambda: ig.SGD(lr=0.1, dampening=1.5), r"SGD\(dampening=\.\.\.\)` must lie in \[0.0, 1"),
        (lambda: ig.SGD(lr=0.1, weight_decay=-1e-3), r"SGD\(weight_decay=\.\.\.\)`"),
        (lambda: ig.SGD(lr=0.1, nesterov=1), r"SGD\(nesterov=\.\.\.\)` must be a bool"),
        (lambda: ig.SGD(lr=0.1, nesterov=True), r"nesterov=True\)` needs momentum > 0"),
        (
            lambda: ig.SGD(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
            r"dampening = 0",
        ),
        (lambda: ig.Adam(lr=-1.0), r"`Adam\(lr=\.\.\.\)` must lie in"),
        (lambda: ig.Adam(lr=torch.tensor(-1.0)), r"`Adam\(lr=\.\.\.\)` must lie in .* -1.0"),
        (lambda: ig.Adam(lr=0.1, betas=(1.0, 0.9)), r"`Adam\(betas\[0\]=\.\.\.\)` .*1.0\)"),
        (lambda: ig.Adam(lr=0.1, betas=(0.9, -0.1)), r"`Adam\(betas\[1\]=\.\.\.\)`"),
        (lambda: ig.Adam(lr=0.1, betas=0.9), r"`Adam\(betas=\.\.\.\)` must be a pair"),
        (lambda: ig.Adam(lr=0.1, eps=-1e-8), r"`Adam\(eps=\.\.\.\)`"),
        (lambda: ig.Adam(lr=0.1, amsgrad="yes"), r"`Adam\(amsgrad=\.\.\.\)` must be a bool"),
        (lambda: ig.AdamW(lr=0.1, weight_decay=-1.0), r"`AdamW\(weight_decay=\.\.\.\)`"),
    ],
)
def test_invalid_hyperparameters(make, match):
    with pytest.raises(ig.InputError, match=match):
        make()


def test_step_errors():
    params = {"w": torch.ones(3)}
    with pytest.raises(ig.InputError, match=r"`SGD.step\(grads=\.\.\.\)` must have the structure"):
        ig.SGD(lr=0.1).step(params, [torch.ones(3)], ig.SGD(lr=0.1).init(params))
    with pytest.raises(ig.InputError, match=r"`Adam.step\(grads=\.\.\.\)`.*Tensor\(shape=\(2,\)"):
        ig.Adam(lr=0.1).step(params, {"w": torch.ones(2)}, ig.Adam(lr=0.1).init(params))
    with pytest.raises(ig.InputError, match=r"`SGD.step\(state=\.\.\.\)` has no momentum buffer"):
        ig.SGD(lr=0.1, momentum=0.9).step(params, params, ig.SGD(lr=0.1).init(params))
    with pytest.raises(ig.InputError, match=r"`Adam.step\(state=\.\.\.\)` has no max_exp_avg_sq"):
        ig.Adam(lr=0.1, amsgrad=True).step(params, params, ig.Adam(lr=0.1).init(params))
    with pytest.raises(
        ig.InputError, match=r"`AdamW.init\(params=\.\.\.\)` has a leaf .* of complex dtype"
    ):
        ig.AdamW(lr=0.1).init(torch.ones(2, dtype=torch.complex64))
    with pytest.raises(ig.InputError, match=r"`SGD.init\(params=\.\.\.\)` .* dtype torch.int64"):
        ig.SGD(lr=0.1).init(torch.ones(2, dtype=torch.int64))


@pytest.mark.parametrize("make", [lambda: ig.SGD(lr=0.1, momentum=0.9), lambda: ig.AdamW(lr=0.1)])
def test_unroll_leaf_path_equals_public_steps(make):
    # `unroll` drives the built-in optimizers through their leaf-list form; its parameters
    # and returned state must be those of calling the public `step` on trees, bitwise.
    torch.manual_seed(0)
    theta0 = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    X = torch.randn(5, 3, dtype=torch.float64)

    def loss(theta, phi, batch, step):
        return ((X @ theta["w"] + theta["b"]) ** 2).sum() + step * theta["b"].sum()

    opt = make()
    theta, info = ig.unroll(loss, theta0, None, None, opt, steps=4, return_info=True)
    ref, state = theta0, opt.init(theta0)
    for t in range(4):
        ref = {k: v.detach().requires_grad_() for k, v in ref.items()}
        grads = dict(zip(ref, torch.autograd.grad(loss(ref, None, None, t), list(ref.values()))))
        with torch.no_grad():
            ref, state = opt.step(ref, grads, state)
    for k in ref:
        assert torch.equal(theta[k], ref[k])
    got, want = pytree.tree_flatten(info.state), pytree.tree_flatten(state)
    assert got[1] == want[1]
    assert all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(got[0], want[0]))


def test_unroll_rejects_an_optimizer_that_changes_the_tree():
    class Flattening(ig.AbstractOptimizer):
        def init(self, params):
            return None

        def step(self, params, grads, state):
            return [params["w"] - grads["w"]], state

    def loss(theta, phi, batch, step):
        return (theta["w"] ** 2).sum()

    with pytest.raises(ig.InputError, match=r"unroll\(optimizer=...\).*different tree structure"):
        ig.unroll(loss, {"w": torch.ones(2)}, None, None, Flattening(), steps=2)


def test_sgd_without_momentum_ignores_a_momentum_buffer_in_its_state():
    # A state made by a momentum SGD, passed to one without momentum: the buffer is unused.
    theta = {"w": torch.ones(3, dtype=torch.float64)}
    grads = {"w": torch.full((3,), 2.0, dtype=torch.float64)}
    with_buffer = ig.SGD(lr=0.1, momentum=0.9).init(theta)
    plain = ig.SGD(lr=0.05, dampening=0.5)
    new, state = plain.step(theta, grads, with_buffer._replace(step=3))
    assert torch.equal(new["w"], torch.full((3,), 0.9, dtype=torch.float64))
    assert state.momentum_buffer is None and state.step == 4

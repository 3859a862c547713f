"""Hypergradients by backpropagation through training: differentiable unrolled optimization."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Literal, overload

import torch
import torch.utils._pytree as pytree
from torch import nn

from ._distributed import DataParallel, Reducer, bind
from ._errors import DivergenceError, InputError, warn
from ._optim.base import AbstractOptimizer
from ._recompute import Checkpoint
from ._tree import Tree, TreeDef, flatten, leaf_path, unflatten, unflattener

__all__ = ["UnrollInfo", "unroll"]

CALL = "unroll"


@dataclass(frozen=True)
class UnrollInfo:
    """What happened during one [`unroll`][implicitgrad.unroll].

    **Fields:**

    - `steps`: optimizer steps taken, $N$.
    - `differentiated_steps`: how many of the last steps carry a gradient path ($N$, or
      `truncate`).
    - `segment_length`: steps per checkpointed segment, or `None` without checkpointing.
    - `losses`: the training loss before each step, a detached float64 tensor of length $N$.
    - `state`: the optimizer state after the last step (it carries the gradient path of the
      differentiated steps; pass it to the next `unroll` as `optimizer_state` to continue).
    """

    steps: int
    differentiated_steps: int
    segment_length: int | None
    losses: torch.Tensor
    state: Any


@overload
def unroll(
    train_loss: Callable[[Tree, Tree, Any, int], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree | None,
    batches: Iterable[Any] | None,
    optimizer: AbstractOptimizer,
    *,
    steps: int | None = ...,
    truncate: int | None = ...,
    checkpoint: bool | int = ...,
    differentiate_init: bool = ...,
    optimizer_state: Any = ...,
    buffers: nn.Module | Tree | None = ...,
    return_info: Literal[False] = ...,
    data_parallel: DataParallel | None = ...,
) -> Tree: ...
@overload
def unroll(
    train_loss: Callable[[Tree, Tree, Any, int], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree | None,
    batches: Iterable[Any] | None,
    optimizer: AbstractOptimizer,
    *,
    steps: int | None = ...,
    truncate: int | None = ...,
    checkpoint: bool | int = ...,
    differentiate_init: bool = ...,
    optimizer_state: Any = ...,
    buffers: nn.Module | Tree | None = ...,
    return_info: Literal[True],
    data_parallel: DataParallel | None = ...,
) -> tuple[Tree, UnrollInfo]: ...


def unroll(
    train_loss: Callable[[Tree, Tree, Any, int], torch.Tensor],
    inner_params: Tree,
    outer_params: Tree | None,
    batches: Iterable[Any] | None,
    optimizer: AbstractOptimizer,
    *,
    steps: int | None = None,
    truncate: int | None = None,
    checkpoint: bool | int = False,
    differentiate_init: bool = False,
    optimizer_state: Any = None,
    buffers: nn.Module | Tree | None = None,
    return_info: bool = False,
    data_parallel: DataParallel | None = None,
) -> Tree | tuple[Tree, UnrollInfo]:
    """Train the inner parameters for $N$ steps, keeping the gradient path to the outer ones.

    Runs $\\theta_{t+1}, s_{t+1} = \\mathrm{step}(\\theta_t, \\nabla_\\theta
    \\ell(\\theta_t, \\phi, b_t, t), s_t)$ for $t = 0, \\dots, N-1$ over the batches $b_t$,
    where $\\ell$ is `train_loss`, `step` is `optimizer` and $s_t$ its state, and returns
    $\\theta_N$ as a function of $\\phi$. Every gradient is taken with `create_graph=True`,
    so `outer_loss(θ_N, φ).backward()` computes the unrolled hypergradient
    $\\mathrm{d}g(\\theta_N(\\phi), \\phi)/\\mathrm{d}\\phi$ (backpropagation through
    training; Maclaurin et al., 2015; Franceschi et al., 2017, reverse mode). Gradients
    also reach optimizer hyperparameters given as tensors that require grad (a learned
    learning rate), and $\\theta_0$ with `differentiate_init=True`.

    Unlike [`hypergrad`][implicitgrad.hypergrad], this does not assume that training has
    converged: it differentiates exactly the $N$ steps that were run. On a strongly convex
    inner problem trained to convergence both agree.

    **Memory and time.** Plain unrolling keeps every step's graph until the backward pass:
    memory $O(N)$. Two ways to use less:

    - `truncate=k` differentiates only the last $k$ steps (memory $O(k)$, time close to
      plain training for the first $N-k$ steps). The hypergradient is then biased: it
      ignores how $\\phi$ shaped $\\theta_{N-k}$ (Shaban et al., 2019).
    - `checkpoint=True` keeps only the parameters and optimizer state at the start of each
      segment of $\\lceil\\sqrt{N}\\rceil$ steps and recomputes a segment's graph when the
      backward pass reaches it (Griewank, 1992; Chen et al., 2016). Memory falls to about
      $O(\\sqrt{N})$ step graphs plus $\\sqrt{N}$ copies of $(\\theta, s)$. The backward
      pass reruns every differentiated step once; since a step (a forward and a backward
      pass of `train_loss`) costs more than backpropagating through it, a meta-step takes
      about twice as long (2 to 2.3 times for the small MLP trained with Adam in
      `benchmarks/unroll_vs_higher.py`, on a CPU). The gradients are the same as without
      checkpointing. An int sets the segment length: longer segments keep fewer copies of
      $(\\theta, s)$ but recompute larger graphs at once.

    Called under `torch.no_grad()`, it is plain training: no step is differentiated.

    **Arguments:**

    - `train_loss`: `train_loss(θ, φ, batch, step) -> scalar`, the training loss on one
      batch at step `step` (counted from 0). It must compute with its arguments (not with
      detached copies or under `torch.no_grad()`), and be deterministic given them when
      `checkpoint` is used (random number generators are restored for the recomputation).
    - `inner_params`: $\\theta_0$, a tensor or tree of tensors (for an `nn.Module`, the
      dictionary from [`make_functional`][implicitgrad.make_functional]).
    - `outer_params`: $\\phi$, passed to `train_loss` unchanged, or `None` when only the
      hyperparameters of `optimizer` or $\\theta_0$ are differentiated.
    - `batches`: an iterable of batches, one per step, or `None` for full-batch training
      (`batch=None`; then `steps` is needed). Without `steps`, one step per batch.
    - `optimizer`: an [`AbstractOptimizer`][implicitgrad.AbstractOptimizer], for example
      [`SGD`][implicitgrad.SGD] or [`Adam`][implicitgrad.Adam].
    - `steps`: the number of steps $N$; the first $N$ batches are used.
    - `truncate`: differentiate only the last `truncate` steps (truncated backpropagation);
      `None` (default) differentiates all.
    - `checkpoint`: `False` (default), `True` for segments of $\\lceil\\sqrt{k}\\rceil$
      steps ($k$ the differentiated steps), or a segment length.
    - `differentiate_init`: keep the gradient path to $\\theta_0$ and to `optimizer_state`
      (default `False`: they are detached, so `make_functional`'s `nn.Parameter`s do not
      receive gradients by accident). Set it for MAML-style learned initializations.
    - `optimizer_state`: the state to start from (default `optimizer.init(θ_0)`), for
      example `info.state` of a previous call, to continue training.
    - `buffers`: tensors that `train_loss` updates in place and never differentiates, such
      as BatchNorm running statistics: an `nn.Module` (its buffers, and the `train()`/`eval()`
      mode of its submodules) or a tree of tensors. With `checkpoint` they are set back to
      their values at the start of a segment while it is recomputed and restored afterwards,
      so they are updated exactly once per step as in an ordinary training loop, and a
      switch to `eval()` before the outer loss does not change the recomputation.
    - `return_info`: also return an [`UnrollInfo`][implicitgrad.UnrollInfo].
    - `data_parallel`: an [`ig.DataParallel`][implicitgrad.DataParallel]: `train_loss` is
      this process's term of the mean over processes (its shard of each batch). The
      gradient of every step is averaged with the autograd-aware
      `torch.distributed.nn.functional.all_reduce` (together with the loss, one
      collective of $n + 1$ floats per step), so every process takes the same steps and the
      backward pass runs through the reductions; `info.losses` are the global losses. After
      `backward()`, `.grad` holds this process's contribution: complete it with
      `DataParallel.reduce_grads`.

    **Returns:**

    $\\theta_N$ with the structure of `inner_params`, or `(θ_N, info)` with `return_info`.

    Raises [`InputError`][implicitgrad.InputError] for zero steps, no batches, or a loss
    that is not a scalar or is not finite at the start;
    [`DivergenceError`][implicitgrad.DivergenceError] (a `SolverError`)
    naming the step when the loss or the parameters become NaN/Inf (the training diverged).
    Warns when the trained parameters do not depend on `outer_params` at all (the
    hypergradient is then exactly zero).

    !!! warning
        With `checkpoint`, modules whose forward updates state in place (BatchNorm in
        `train()` mode) would update it a second time during the recomputation: pass
        `buffers=model`. A second-order backward through a checkpointed unroll
        (`create_graph=True` on the outer loss) is not supported.

    **Example:** learn per-example loss weights by differentiating through 20 SGD steps.

    ```python
    import torch, implicitgrad as ig
    torch.manual_seed(0)
    X, y = torch.randn(32, 3), torch.randn(32)
    X_val, y_val = torch.randn(16, 3), torch.randn(16)
    weights = torch.zeros(32, requires_grad=True)          # φ: logits of example weights

    def train_loss(w, phi, batch, step):
        return (torch.sigmoid(phi) * (X @ w - y) ** 2).mean()

    w = ig.unroll(train_loss, torch.zeros(3), weights, None, ig.SGD(lr=0.1, momentum=0.9),
                  steps=20)
    ((X_val @ w - y_val) ** 2).mean().backward()
    assert weights.grad.shape == (32,)
    ```
    """
    if not callable(train_loss):
        raise InputError(
            f"`{CALL}(train_loss=...)` must be callable as train_loss(inner_params, "
            f"outer_params, batch, step), got {type(train_loss).__name__}."
        )
    _check_arity(train_loss)
    if not isinstance(optimizer, AbstractOptimizer):
        raise InputError(
            f"`{CALL}(optimizer=...)` must be an implicitgrad optimizer such as ig.SGD(lr=0.1) "
            f"or ig.Adam(lr=1e-3), got {type(optimizer).__name__}. torch.optim optimizers "
            "update in place and cannot be differentiated through."
        )
    theta, theta_spec = flatten(inner_params, call=CALL, name="inner_params")
    phi_targets: list[torch.Tensor] = []
    if outer_params is not None:
        phi_leaves, _ = flatten(outer_params, call=CALL, name="outer_params")
        phi_targets = [p for p in phi_leaves if p.requires_grad]
    n, batch_iter = _resolve_batches(batches, steps)
    k = n if truncate is None else _positive_int("truncate", truncate)
    k = min(k, n) if torch.is_grad_enabled() else 0
    segment = _segment_length(checkpoint, k)
    for i, t in enumerate(theta):
        if not _all_finite([t]):
            raise InputError(
                f"`{CALL}(inner_params=...)` holds NaN or Inf in leaf {leaf_path(theta_spec, i)}."
            )

    if not differentiate_init:
        theta = [t.detach() for t in theta]
    if optimizer_state is None:
        state = optimizer.init(unflatten(theta_spec, theta))
    elif differentiate_init:
        state = optimizer_state
    else:
        state = _map_tensors(torch.Tensor.detach, optimizer_state)
    state = optimizer._flat_state(state, theta_spec, theta)
    dp = bind(data_parallel, None, call=CALL)
    run = _Run(train_loss, optimizer, theta_spec, outer_params, n, *_module_state(buffers), dp)
    losses = _Losses(run)
    for t in range(n - k):
        theta, state = run.step(theta, state, _next(batch_iter, t, n), t, losses, graph=False)
    if segment is None:
        for t in range(n - k, n):
            theta, state = run.step(theta, state, _next(batch_iter, t, n), t, losses, graph=True)
    else:
        for start in range(n - k, n, segment):
            stop = min(start + segment, n)
            chunk = [_next(batch_iter, t, n) for t in range(start, stop)]
            theta, state = run.segment(theta, state, chunk, start, losses)

    losses.flush()
    if not _all_finite(theta):
        raise run.diverged(n - 1)
    if k and phi_targets and not _reaches(theta, phi_targets):
        warn(
            f"`{CALL}`: the trained inner parameters have no gradient path to outer_params, so "
            "the hypergradient with respect to outer_params is exactly zero. The gradient of "
            "train_loss with respect to inner_params must depend on outer_params (a term "
            "that is constant in inner_params, or a detached outer_params, has no effect).",
            UserWarning,
        )
    result = unflatten(theta_spec, theta)
    if not return_info:
        return result
    state = optimizer._tree_state(state, theta_spec)
    info = UnrollInfo(n, k, segment, torch.tensor(losses.values, dtype=torch.float64), state)
    return result, info


class _Run:
    """The settings of one unroll and the single step every phase shares."""

    def __init__(
        self,
        train_loss: Callable[..., Any],
        optimizer: AbstractOptimizer,
        spec: TreeDef,
        phi: Tree | None,
        n: int,
        buffers: list[torch.Tensor],
        modules: list[nn.Module],
        dp: Reducer | None = None,
    ) -> None:
        self.train_loss = train_loss
        self.optimizer = optimizer
        self.spec = spec
        self.tree = unflattener(spec)
        self.phi = phi
        self.phi_detached = None if phi is None else _map_tensors(torch.Tensor.detach, phi)
        self.n = n
        self.buffers = buffers
        self.modules = modules
        self.dp = dp

    def step(
        self,
        theta: list[torch.Tensor],
        state: Any,
        batch: Any,
        t: int,
        losses: _Losses | None,
        *,
        graph: bool,
    ) -> tuple[list[torch.Tensor], Any]:
        """One optimizer step; `losses is None` marks a recomputation (no checks)."""
        if graph:
            leaves = [x if x.requires_grad else x.detach().requires_grad_() for x in theta]
        else:
            leaves = [x.detach().requires_grad_() for x in theta]
        with torch.enable_grad():
            loss = self.train_loss(
                self.tree(leaves), self.phi if graph else self.phi_detached, batch, t
            )
            _check_loss(loss, t)
            grads = torch.autograd.grad(
                loss, leaves, create_graph=graph, allow_unused=True, materialize_grads=True
            )
            if self.dp is not None:
                grads, loss = self._mean(grads, loss, graph)
        try:
            if graph:
                new_leaves, state = self.optimizer._step_leaves(leaves, grads, state, self.spec)
            else:
                with torch.no_grad():
                    new_leaves, state = self.optimizer._step_leaves(leaves, grads, state, self.spec)
        except InputError as err:
            raise InputError(f"`{CALL}(optimizer=...)`: {err}") from None
        if losses is not None:
            losses.record(loss, leaves, t, graph=graph)
        return new_leaves, state

    def _mean(
        self, grads: Sequence[torch.Tensor], loss: torch.Tensor, graph: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The global gradient and loss from this process's: one collective, through which
        the backward pass runs when the step is differentiated."""
        dp = self.dp
        assert dp is not None
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1)])
        flat = dp.mean_autograd(flat) if graph else dp.mean_(flat.detach())
        chunks = flat.split([g.numel() for g in grads] + [1])
        return [c.view_as(g) for c, g in zip(chunks, grads)], chunks[-1].reshape(())

    def check_loss_value(self, value: float, theta: Sequence[torch.Tensor], t: int) -> None:
        """Raise if the loss `value` of step `t` (at the parameters `theta`) is not finite."""
        if math.isfinite(value):
            return
        # Non-finite parameters give a non-finite loss at the next step, so checking them
        # only here still names the step where they went wrong.
        if t > 0 and not _all_finite(theta):
            raise self.diverged(t - 1)
        where = f"at step {t} of {self.n}"
        if t == 0:
            raise InputError(
                f"`{CALL}`: train_loss returned {value} {where}, at the initial inner "
                "parameters. Check inner_params, outer_params and the first batch."
            )
        raise DivergenceError(
            f"`{CALL}`: train_loss became {value} {where}: the unrolled training diverged. "
            "Lower the learning rate, or clip or rescale the loss."
        )

    def diverged(self, t: int) -> DivergenceError:
        return DivergenceError(
            f"`{CALL}`: the inner parameters became NaN or Inf after step {t} of {self.n}: the "
            "unrolled training diverged. Lower the learning rate or add gradient clipping to "
            "train_loss."
        )

    def segment(
        self,
        theta: list[torch.Tensor],
        state: Any,
        batches: list[Any],
        start: int,
        losses: _Losses,
    ) -> tuple[list[torch.Tensor], Any]:
        """Differentiated steps `start, start + 1, ...` whose graph is recomputed in backward."""

        def replay(theta: list[torch.Tensor], state: Any) -> None:
            for i, batch in enumerate(batches):
                theta, state = self.step(theta, state, batch, start + i, None, graph=True)

        checkpoint = Checkpoint(replay, theta, state, self.buffers, self.modules, call=CALL)
        with checkpoint.saving():
            for i, batch in enumerate(batches):
                theta, state = self.step(theta, state, batch, start + i, losses, graph=True)
        return theta, state


class _Losses:
    """The training losses of an unroll, read from the device in windows.

    Reading a loss is a host sync; doing it every step stalls an accelerator's queue. The
    losses of differentiated steps are kept on the device and read together every `WINDOW`
    steps (and at the end), then checked in order, so a non-finite loss still raises naming
    its step: the parameters each step started from are kept with it, and the graph keeps
    them alive anyway. Steps that are not differentiated are read at once, so that no
    parameters outlive their step there. A diverged run is reported up to `WINDOW - 1`
    steps after it diverged, having computed those steps on NaN.
    """

    WINDOW = 16

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.values: list[float] = []
        self.pending: list[tuple[torch.Tensor, list[torch.Tensor], int]] = []

    def record(self, loss: torch.Tensor, theta: list[torch.Tensor], t: int, *, graph: bool) -> None:
        self.pending.append((loss.detach().reshape(()), theta, t))
        if not graph or len(self.pending) >= self.WINDOW:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        if len(pending) == 1:
            values = [float(pending[0][0])]
        else:
            values = torch.stack([loss.to(torch.float64) for loss, _, _ in pending]).tolist()
        for value, (_, theta, t) in zip(values, pending):
            self.run.check_loss_value(value, theta, t)
        self.values.extend(values)


def _check_arity(train_loss: Callable[..., Any]) -> None:
    try:
        signature = inspect.signature(train_loss)
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return
    try:
        signature.bind(None, None, None, 0)
    except TypeError:
        raise InputError(
            f"`{CALL}(train_loss=...)` must accept four arguments (inner_params, outer_params, "
            f"batch, step), but its signature is {signature}. Add the unused ones, e.g. "
            "`lambda theta, phi, batch, step: ...`."
        ) from None


def _check_loss(loss: Any, t: int) -> None:
    if not isinstance(loss, torch.Tensor):
        raise InputError(
            f"`{CALL}`: train_loss must return a scalar torch.Tensor, got "
            f"{type(loss).__name__} at step {t}."
        )
    if loss.numel() != 1 or not loss.is_floating_point():
        raise InputError(
            f"`{CALL}`: train_loss must return a floating-point scalar, got a tensor of shape "
            f"{tuple(loss.shape)} and dtype {loss.dtype} at step {t}. Reduce it, e.g. with "
            ".mean() or .sum()."
        )
    if not loss.requires_grad:
        raise InputError(
            f"`{CALL}`: train_loss does not depend on inner_params (at step {t}, its output has "
            "no gradient path to them). Compute the loss from the inner_params it receives, "
            "without .detach() or torch.no_grad()."
        )


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"`{CALL}({name}=...)` must be a positive int, got {value!r}.")
    return value


def _segment_length(checkpoint: bool | int, k: int) -> int | None:
    if checkpoint is False or k == 0:
        return None
    if checkpoint is True:
        return math.isqrt(k - 1) + 1  # ceil(sqrt(k))
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 1:
        raise InputError(
            f"`{CALL}(checkpoint=...)` must be True, False or a positive segment length, got "
            f"{checkpoint!r}."
        )
    return checkpoint


def _resolve_batches(batches: Iterable[Any] | None, steps: int | None) -> tuple[int, Iterator]:
    if steps is not None:
        _positive_int("steps", steps)
    if batches is None:
        if steps is None:
            raise InputError(f"`{CALL}(batches=None)` means full-batch training and needs steps=N.")
        return steps, repeat(None)
    if not isinstance(batches, Iterable):
        raise InputError(
            f"`{CALL}(batches=...)` must be an iterable of batches (a list, a DataLoader, a "
            f"generator) or None, got {type(batches).__name__}."
        )
    if steps is None:
        if not hasattr(batches, "__len__"):
            batches = list(batches)
        steps = len(batches)  # type: ignore[arg-type]
        if steps == 0:
            raise InputError(
                f"`{CALL}(batches=...)` is empty, so there is no step to differentiate. Pass "
                "at least one batch, or batches=None with steps=N for full-batch training."
            )
    return steps, iter(batches)


def _next(batch_iter: Iterator, t: int, n: int) -> Any:
    try:
        return next(batch_iter)
    except StopIteration:
        raise InputError(
            f"`{CALL}(batches=...)` ran out after {t} batches, but {n} steps were asked for. "
            "Pass more batches, fewer steps, or itertools.cycle(batches)."
        ) from None


def _module_state(
    buffers: nn.Module | Tree | None,
) -> tuple[list[torch.Tensor], list[nn.Module]]:
    """The tensors to restore around a recomputation, and the modules whose mode to restore."""
    if buffers is None:
        return [], []
    if isinstance(buffers, nn.Module):
        return list(buffers.buffers()), list(buffers.modules())
    leaves = pytree.tree_leaves(buffers)
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise InputError(
                f"`{CALL}(buffers=...)` must be an nn.Module or a tree of tensors, got a leaf "
                f"of type {type(leaf).__name__}."
            )
    return leaves, []


def _map_tensors(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    return pytree.tree_map(lambda x: fn(x) if isinstance(x, torch.Tensor) else x, tree)


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(t.detach()).all() for t in tensors]).all())


def _reaches(outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> bool:
    """Whether the autograd graph of `outputs` reaches any of `targets` (breadth first)."""
    leaf_ids = {id(t) for t in targets if t.grad_fn is None}
    nodes = {t.grad_fn for t in targets if t.grad_fn is not None}
    frontier = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen = set(frontier)
    while frontier:
        following = []
        for node in frontier:
            if node in nodes or id(getattr(node, "variable", None)) in leaf_ids:
                return True
            for child, _ in node.next_functions:
                if child is not None and child not in seen:
                    seen.add(child)
                    following.append(child)
        frontier = following
    return False

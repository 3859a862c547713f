"""The meta-learner contract: how a network adapts to one task from a starting point."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F

from implicitgrad import InputError

from ..commentaries.base import AbstractCommentary

__all__ = [
    "AbstractMetaLearner",
    "TaskLike",
    "TaskBatch",
    "Functional",
    "SupportLoss",
    "support_loss",
    "check_positive",
]

SupportLoss = Callable[[Any, Any, float], torch.Tensor]
"""An inner loss `support(θ, φ, progress) -> scalar` (`progress`: the normalized inner step)."""

Functional = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
"""A network as a pure function `fn(params, x) -> logits` (see `ig.make_functional`)."""


class TaskLike(Protocol):
    """What a meta-learner reads from a task: support and query sets, labels `0..ways-1`
    (the `Task` of `implicitgrad_commentaries.datasets.episodes`)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


@dataclass(frozen=True)
class TaskBatch:
    r"""Tasks of one shape stacked along a new first dimension, adapted as one problem.

    Adapting $T$ tasks is one inner problem over $T$ stacked copies of the parameters,
    $\min_{\theta_1..\theta_T} \sum_t \ell_t(\theta_t)$. It is separable, so SGD and
    Adam (element-wise updates) take exactly the steps they would take on each task alone,
    and the unrolled meta-gradient of the summed query losses is the sum of the per-task
    ones; only a solver that couples the blocks (CG's global step lengths) would differ.
    The network runs once per step over all tasks through `torch.func.vmap`.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @classmethod
    def stack(cls, tasks: Sequence[TaskLike]) -> TaskBatch:
        if not tasks:
            raise InputError("`TaskBatch.stack(tasks=...)` needs at least one task.")
        fields = ("support_x", "support_y", "query_x", "query_y")
        shapes = {tuple(tuple(getattr(t, f).shape) for f in fields) for t in tasks}
        if len(shapes) != 1:
            raise InputError(
                "`TaskBatch.stack`: the tasks differ in ways, shots, queries or image size; "
                "stack only tasks drawn from one sampler."
            )
        return cls(*(torch.stack([getattr(t, f) for t in tasks]) for f in fields))

    def __len__(self) -> int:
        return int(self.support_x.shape[0])

    def expand(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`params` repeated once per task (differentiably: the copies sum their gradients)."""
        return {k: v.unsqueeze(0).expand(len(self), *v.shape) for k, v in params.items()}

    def logits(self, fn: Functional, theta: dict[str, torch.Tensor], x: torch.Tensor):
        """`fn` on each task's own parameters and inputs: shape `(T, n, ways)`."""
        return torch.func.vmap(fn)(theta, x)


def support_loss(
    fn: Functional,
    theta: dict[str, torch.Tensor],
    task: TaskLike,
    teacher: AbstractCommentary | None,
    phi: dict[str, torch.Tensor] | None,
    progress: float,
) -> torch.Tensor:
    """The inner loss on the support set: plain cross-entropy, or the teacher's
    commentary-modified loss (per-example weights) when a teacher is given."""
    if isinstance(task, TaskBatch):

        def one(theta: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
            return support_loss(fn, theta, _Support(x, y), teacher, phi, progress)

        return torch.func.vmap(one)(theta, task.support_x, task.support_y).sum()
    if teacher is None:
        return F.cross_entropy(fn(theta, task.support_x), task.support_y)
    assert phi is not None
    return teacher.loss(
        phi, lambda x: fn(theta, x), task.support_x, task.support_y, float(progress)
    )


@dataclass(frozen=True)
class _Support:
    support_x: torch.Tensor
    support_y: torch.Tensor


def check_positive(owner: str, name: str, value: Any, *, integer: bool = False) -> None:
    """Raise `InputError` unless `value` is a positive finite number (an int if asked)."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"`{owner}({name}=...)` must be an int >= 1, got {value!r}.")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise InputError(f"`{owner}({name}=...)` must be a finite number > 0, got {value!r}.")


class AbstractMetaLearner(abc.ABC):
    """Base class of the few-shot learners: MAML, iMAML and training from scratch.

    **Contract.** A meta-learner is a small frozen dataclass. It implements
    `solve(support, theta0, phi=None) -> θ`, the parameters after its inner loop on the
    loss `support(θ, φ, progress)` starting from `theta0`, computed with the core's
    [`ig.minimize`][implicitgrad.minimize] and an adjoint of the core; `adapt(fn, theta0,
    task, teacher=None, phi=None)` applies it to a task's support set. With grad mode on,
    θ carries the gradient path back to `theta0` (and to `phi`, the teacher's parameters)
    that defines the meta-learner's meta-gradient; under `torch.no_grad()` it is plain
    adaptation, as at meta-test time. `teacher` is an example-weighting commentary (a
    [`WeightingCommentary`][implicitgrad_commentaries.WeightingCommentary] over the `ways`
    labels) whose weights multiply the support loss.

    Class attributes: `name`, `is_meta_learned` (`False` for a baseline whose starting
    point is a fresh random initialization per task), `learns_teacher` (whether the
    meta-gradient reaches the teacher), `separable` (whether the meta-gradient of a
    [`TaskBatch`][implicitgrad_commentaries.TaskBatch] is exactly the sum of the
    per-task ones, so that meta-training may adapt the tasks of a meta-batch together).
    """

    name: ClassVar[str] = ""
    is_meta_learned: ClassVar[bool] = True
    learns_teacher: ClassVar[bool] = True
    separable: ClassVar[bool] = True
    inner_steps: int

    @abc.abstractmethod
    def solve(
        self,
        support: SupportLoss,
        theta0: dict[str, torch.Tensor],
        phi: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The inner loop on any support loss `support(θ, φ, progress)` from `theta0`,
        through [`ig.minimize`][implicitgrad.minimize]; `progress` is the normalized inner
        step in [0, 1]."""

    def adapt(
        self,
        fn: Functional,
        theta0: dict[str, torch.Tensor],
        task: TaskLike,
        teacher: AbstractCommentary | None = None,
        phi: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The network's parameters after the inner loop on `task.support_*`:
        [`solve`][implicitgrad_commentaries.AbstractMetaLearner.solve] on
        [`support_loss`][implicitgrad_commentaries.fewshot.support_loss]."""

        def support(theta: Any, phi: Any, progress: float) -> torch.Tensor:
            return support_loss(fn, theta, task, teacher, phi, progress)

        return self.solve(support, theta0, phi)

    def query_loss(
        self,
        fn: Functional,
        theta0: dict[str, torch.Tensor],
        task: TaskLike,
        teacher: AbstractCommentary | None = None,
        phi: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The outer loss of one task: the plain cross-entropy on the query set after
        adaptation (the teacher changes only the inner loop). For a
        [`TaskBatch`][implicitgrad_commentaries.TaskBatch] it is the mean over its
        tasks, adapted together."""
        if isinstance(task, TaskBatch):
            theta = self.adapt(fn, task.expand(theta0), task, teacher, phi)
            logits = task.logits(fn, theta, task.query_x)
            return F.cross_entropy(logits.flatten(0, 1), task.query_y.flatten())
        theta = self.adapt(fn, theta0, task, teacher, phi)
        return F.cross_entropy(fn(theta, task.query_x), task.query_y)

    def config(self) -> dict[str, Any]:
        """The settings as JSON-able values (saved with a run)."""
        from dataclasses import fields

        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value if isinstance(value, (int, float, str, bool)) else repr(value)
        return out

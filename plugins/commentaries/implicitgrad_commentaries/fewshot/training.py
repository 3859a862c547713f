"""Meta-training: Adam on the initialization (and the teacher) from the query losses."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

import implicitgrad as ig
from implicitgrad import DivergenceError, InputError

from .base import TaskBatch, TaskLike
from .model import FewShotModel

__all__ = ["MetaHistory", "meta_train"]


@dataclass
class MetaHistory:
    """What happened during [`meta_train`][implicitgrad_commentaries.meta_train].

    **Fields:** `losses` (the mean query loss of each meta-step), `accuracies` (the mean
    query accuracy after adaptation, the same tasks), `seconds` (wall time), `skipped`
    (tasks whose meta-gradient the solver could not compute and that were left out, with
    `first_error`).
    """

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped: int = 0
    first_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "losses": self.losses,
            "accuracies": self.accuracies,
            "seconds": self.seconds,
            "skipped": self.skipped,
            "first_error": self.first_error,
        }


def meta_train(
    model: FewShotModel,
    tasks: Iterable[TaskLike],
    *,
    meta_steps: int,
    meta_batch: int = 4,
    meta_lr: float = 1e-3,
    teacher_lr: float | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> MetaHistory:
    """Meta-train `model` in place on tasks drawn from `tasks`.

    Each meta-step draws `meta_batch` tasks, adapts the network to each support set with
    the model's meta-learner, and takes one Adam step on $\\theta_0$ (and on the teacher's
    $\\phi$ when it is learned) along the mean query loss's gradient, which the core's
    adjoint computes: $\\min_{\\theta_0, \\phi} \\frac1B\\sum_b
    L_\\text{query}^{(b)}(\\mathrm{adapt}(\\theta_0, \\phi))$. The graph of each task is freed
    before the next is adapted, so memory is that of one task.

    **Arguments:**

    - `model`: a [`FewShotModel`][implicitgrad_commentaries.FewShotModel].
    - `tasks`: an iterable of tasks (a `TaskSampler`), drawn from in order.
    - `meta_steps`: the number of Adam steps.
    - `meta_batch`: tasks per meta-step (default `4`).
    - `meta_lr`: Adam's learning rate for $\\theta_0$ (default `1e-3`).
    - `teacher_lr`: for $\\phi$ (default: `meta_lr`).
    - `callback`: called as `callback(meta_step, mean_query_loss)` after each meta-step.

    **Returns:**

    A [`MetaHistory`][implicitgrad_commentaries.MetaHistory]. The scratch baseline
    learns nothing and returns an empty one.

    **Raises:**

    [`DivergenceError`][implicitgrad.DivergenceError] when the query loss becomes NaN or
    infinite (lower `meta_lr` or the inner learning rate).
    """
    for name, value in (("meta_steps", meta_steps), ("meta_batch", meta_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"`meta_train({name}=...)` must be an int >= 1, got {value!r}.")
    for name, rate in (("meta_lr", meta_lr), ("teacher_lr", teacher_lr)):
        if rate is not None and not (isinstance(rate, (int, float)) and 0 < rate < math.inf):
            raise InputError(f"`meta_train({name}=...)` must be a number > 0, got {rate!r}.")
    learner = model.learner
    history = MetaHistory()
    if not learner.is_meta_learned:
        return history
    if model.learn_teacher and not learner.learns_teacher:
        raise InputError(
            f"`meta_train`: {type(learner).__name__}({learner.config()}) cannot learn a "
            "teacher (first-order MAML has no gradient path to it); use MAML or IMAML."
        )
    fn, theta0 = ig.make_functional(model.net)
    groups: list[dict[str, Any]] = [{"params": list(theta0.values()), "lr": meta_lr}]
    if model.teacher is not None and model.learn_teacher:
        groups.append({"params": list(model.teacher.parameters()), "lr": teacher_lr or meta_lr})
    optimizer = torch.optim.Adam(groups)
    stream: Iterator[TaskLike] = iter(tasks)
    start = time.perf_counter()
    for step in range(meta_steps):
        optimizer.zero_grad(set_to_none=True)
        total, correct, used = 0.0, 0.0, 0
        drawn = [next(stream) for _ in range(meta_batch)]
        # A separable learner adapts the meta-batch as one stacked problem (the same
        # meta-gradient, one network call per step); iMAML solves task by task.
        units = [TaskBatch.stack(drawn)] if learner.separable else drawn
        for task in units:
            weight = len(task) / meta_batch if isinstance(task, TaskBatch) else 1 / meta_batch
            try:
                if isinstance(task, TaskBatch):
                    theta = learner.adapt(
                        fn, task.expand(theta0), task, model.teacher, model.teacher_phi()
                    )
                    logits = task.logits(fn, theta, task.query_x).flatten(0, 1)
                    labels = task.query_y.flatten()
                else:
                    theta = learner.adapt(fn, theta0, task, model.teacher, model.teacher_phi())
                    logits, labels = fn(theta, task.query_x), task.query_y
                loss = torch.nn.functional.cross_entropy(logits, labels)
                (loss * weight).backward()
            except ig.SolverError as err:
                # An indefinite H + λI (iMAML with CG) on one task: leave it out, count it.
                history.skipped += 1
                history.first_error = history.first_error or " ".join(str(err).split())
                continue
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DivergenceError(
                    f"`meta_train`: the query loss became {value} at meta-step {step}; lower "
                    "meta_lr or the inner learning rate."
                )
            total += value * weight * meta_batch
            correct += float((logits.argmax(1) == labels).double().mean()) * weight * meta_batch
            used += round(weight * meta_batch)
        if used:
            optimizer.step()
        mean = total / max(used, 1)
        history.losses.append(mean)
        history.accuracies.append(correct / max(used, 1))
        if callback is not None:
            callback(step, mean)
    history.seconds = time.perf_counter() - start
    return history

"""Meta-test accuracy: mean and 95% confidence interval over many test tasks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

import implicitgrad as ig

from .base import TaskBatch, TaskLike
from .model import FewShotModel
from .network import FewShotNet

__all__ = ["Accuracy", "evaluate"]


@dataclass(frozen=True)
class Accuracy:
    """Meta-test accuracy over `n` tasks.

    **Fields:** `mean` and `ci95` (the half-width $1.96\\,s/\\sqrt n$ of the normal 95%
    confidence interval, $s$ the standard deviation over tasks), both as fractions;
    `n`; `per_task`, the accuracy of every task.
    """

    mean: float
    ci95: float
    n: int
    per_task: tuple[float, ...]

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.ci95:.1f}"

    @classmethod
    def of(cls, values: Iterable[float]) -> Accuracy:
        """Summarize per-task accuracies."""
        per_task = tuple(float(v) for v in values)
        n = len(per_task)
        mean = sum(per_task) / n
        var = sum((v - mean) ** 2 for v in per_task) / max(n - 1, 1)
        return cls(mean, 1.96 * math.sqrt(var / n), n, per_task)


def evaluate(
    model: FewShotModel, tasks: Iterable[TaskLike], *, seed: int = 0, chunk: int = 100
) -> Accuracy:
    """Adapt to each test task's support set and measure the accuracy on its query set.

    The adaptation is the model's inner loop exactly as in meta-training (with the teacher,
    if any), run without a graph, on `chunk` tasks at a time stacked into one
    [`TaskBatch`][implicitgrad_commentaries.TaskBatch] (a separable problem: the
    same steps as one task at a time). For the scratch baseline, task $i$ starts from a
    fresh initialization seeded with `seed + i`.

    **Arguments:**

    - `model`: a [`FewShotModel`][implicitgrad_commentaries.FewShotModel].
    - `tasks`: the test tasks (for example `sampler.tasks(600)`).
    - `seed`: see above.
    - `chunk`: tasks adapted at once (`1`: one at a time).

    **Returns:**

    An [`Accuracy`][implicitgrad_commentaries.Accuracy]; report it as
    `str(acc)`, the percentage mean ± 95% interval.
    """
    fn, theta0 = ig.make_functional(model.net)
    learner = model.learner
    phi = model.teacher_phi()
    accs: list[float] = []
    pending: list[TaskLike] = []

    def run(group: list[TaskLike]) -> None:
        batch = TaskBatch.stack(group)
        if learner.is_meta_learned:
            start = batch.expand(theta0)
        else:
            fresh = [_fresh(model.net, seed + len(accs) + i) for i in range(len(group))]
            start = {k: torch.stack([f[k] for f in fresh]) for k in theta0}
        theta = learner.adapt(fn, start, batch, model.teacher, phi)
        pred = batch.logits(fn, theta, batch.query_x).argmax(-1)
        accs.extend((pred == batch.query_y).double().mean(1).tolist())

    with torch.no_grad():
        for task in tasks:
            pending.append(task)
            if len(pending) == chunk:
                run(pending)
                pending = []
        if pending:
            run(pending)
    if not accs:
        raise ig.InputError("`evaluate(tasks=...)` gave no tasks.")
    return Accuracy.of(accs)


def _fresh(net: FewShotNet, seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = FewShotNet(**net.config)
    ref = next(net.parameters())
    return {k: v.detach().to(ref) for k, v in fresh.named_parameters()}

"""The example-weighting teacher of a few-shot task, and its fixed control."""

from __future__ import annotations

import torch

from ..commentaries.base import DataSpec
from ..commentaries.weighting import WeightingCommentary

__all__ = ["make_teacher", "task_spec"]


def task_spec(dataset: str, input_shape: tuple[int, ...], ways: int) -> DataSpec:
    """The [`DataSpec`][implicitgrad_commentaries.DataSpec] of an `ways`-way task of
    `dataset`: its classes are the task's labels `"0"`, ..., `"ways-1"`, so a teacher
    learned on it applies to every task of that many ways."""
    return DataSpec(f"{dataset}-{ways}way", tuple(input_shape), tuple(str(i) for i in range(ways)))


def make_teacher(
    dataset: str,
    input_shape: tuple[int, ...],
    ways: int,
    *,
    seed: int = 0,
    normalize: bool = True,
) -> WeightingCommentary:
    """A fresh example-weighting teacher for few-shot tasks.

    The teacher is the plugin's
    [`WeightingCommentary`][implicitgrad_commentaries.WeightingCommentary] over the
    task's labels: it maps a support image, its label (one-hot over the `ways`
    labels) and the normalized inner step to a weight in (0, 1), with the conv teacher for
    images. So a learned few-shot teacher is saved, loaded and reused like any commentary.

    **Arguments:**

    - `dataset`, `input_shape`, `ways`: what the tasks are drawn from.
    - `seed`: seeds the teacher's initialization (the fixed control is this, frozen).
    - `normalize`: divide the weights by their mean over the support set (default `True`):
      the teacher can only move emphasis between support examples, not rescale the inner
      learning rate, which MAML holds fixed (see the warning on `WeightingCommentary`).

    **Returns:**

    A `WeightingCommentary` whose `spec` is
    [`task_spec`][implicitgrad_commentaries.fewshot.task_spec].
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WeightingCommentary(task_spec(dataset, input_shape, ways), normalize=normalize)

"""A few-shot model: a network, the meta-learner that adapts it, and an optional teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from implicitgrad import InputError

from ..commentaries.weighting import WeightingCommentary
from .base import AbstractMetaLearner
from .imaml import IMAML
from .maml import MAML
from .network import FewShotNet
from .scratch import Scratch
from .teacher import make_teacher

__all__ = ["FewShotModel", "METHODS", "make_model"]

METHODS: dict[str, tuple[str, str | None]] = {
    "scratch": ("scratch", None),
    "maml": ("maml", None),
    "fomaml": ("fomaml", None),
    "maml-commentary": ("maml", "learned"),
    "maml-fixed-teacher": ("maml", "fixed"),
    "imaml": ("imaml", None),
    "imaml-commentary": ("imaml", "learned"),
}
"""The seven conditions: method name → (meta-learner, teacher: `None`, `"learned"` or
`"fixed"`)."""


@dataclass
class FewShotModel:
    """Everything a few-shot run learns and evaluates.

    **Fields:**

    - `method`: one of [`METHODS`][implicitgrad_commentaries.fewshot.METHODS].
    - `learner`: the [`AbstractMetaLearner`][implicitgrad_commentaries.AbstractMetaLearner].
    - `net`: the [`FewShotNet`][implicitgrad_commentaries.FewShotNet]; its parameters
      are the meta-learned initialization $\\theta_0$.
    - `teacher`: the example-weighting commentary, or `None`.
    - `learn_teacher`: whether the meta-gradient updates the teacher (`False`: the fixed,
      randomly initialized control).
    - `dataset`: the name of the data the tasks come from.
    """

    method: str
    learner: AbstractMetaLearner
    net: FewShotNet
    teacher: WeightingCommentary | None = None
    learn_teacher: bool = False
    dataset: str = "unknown"

    @property
    def ways(self) -> int:
        return int(self.net.config["ways"])

    def teacher_phi(self) -> dict[str, torch.Tensor] | None:
        """φ as the inner loop receives it: the parameters themselves when learned, detached
        copies for the fixed control, `None` without a teacher."""
        if self.teacher is None:
            return None
        phi = self.teacher.phi()
        return phi if self.learn_teacher else {k: v.detach() for k, v in phi.items()}

    def to(self, device: torch.device | str) -> FewShotModel:
        self.net.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        return self


def _learner(kind: str, settings: dict[str, Any]) -> AbstractMetaLearner:
    given = {k: v for k, v in settings.items() if v is not None}
    allowed = {
        "scratch": ("inner_steps", "inner_lr"),
        "maml": ("inner_steps", "inner_lr", "checkpoint"),
        "fomaml": ("inner_steps", "inner_lr", "checkpoint"),
        "imaml": ("inner_steps", "inner_lr", "lam", "solver", "stationarity_tol"),
    }[kind]
    kwargs = {k: v for k, v in given.items() if k in allowed}
    if kind == "scratch":
        return Scratch(**kwargs)
    if kind == "imaml":
        return IMAML(**kwargs)
    return MAML(first_order=kind == "fomaml", **kwargs)


def make_model(
    method: str,
    input_shape: tuple[int, ...],
    ways: int,
    *,
    dataset: str = "unknown",
    width: int = 32,
    blocks: int = 4,
    seed: int = 0,
    **settings: Any,
) -> FewShotModel:
    """Build a fresh few-shot model for one of the seven conditions.

    **Arguments:**

    - `method`: `"scratch"`, `"maml"`, `"fomaml"`, `"maml-commentary"`,
      `"maml-fixed-teacher"`, `"imaml"` or `"imaml-commentary"`.
    - `input_shape`, `ways`: the images and the number of classes per task.
    - `dataset`: the data's name (recorded with the model and in the teacher's spec).
    - `width`, `blocks`: the network's size (see `FewShotNet`).
    - `seed`: seeds the network's and the teacher's initialization.
    - `**settings`: the meta-learner's settings (`inner_steps`, `inner_lr`, `lam`, `solver`,
      ...); `None` values and settings the method does not have are ignored, so one
      dictionary serves every method.

    **Returns:**

    A [`FewShotModel`][implicitgrad_commentaries.FewShotModel].

    **Example:**

    ```python
    from implicitgrad_commentaries.fewshot import make_model
    model = make_model("maml-commentary", (1, 8, 8), 5, width=8, inner_steps=3)
    assert model.learn_teacher and model.learner.inner_steps == 3
    ```
    """
    if method not in METHODS:
        raise InputError(
            f"`make_model(method={method!r})`: unknown method; expected one of "
            f"{', '.join(METHODS)}."
        )
    kind, teacher_mode = METHODS[method]
    learner = _learner(kind, settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FewShotNet(tuple(input_shape), ways, width=width, blocks=blocks)
    teacher = None
    if teacher_mode is not None:
        teacher = make_teacher(dataset, tuple(input_shape), ways, seed=seed + 1)
        if teacher_mode == "fixed":
            teacher.requires_grad_(False)
    return FewShotModel(method, learner, net, teacher, teacher_mode == "learned", dataset)

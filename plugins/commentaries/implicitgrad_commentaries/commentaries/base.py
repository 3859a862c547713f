"""The commentary contract: what a commentary owns and how it changes a student's loss."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from implicitgrad import InputError

if TYPE_CHECKING:  # the data sets depend on this module, not the other way round
    from ..datasets.splits import Dataset

__all__ = ["DataSpec", "AbstractCommentary", "Student"]

Student = Callable[[torch.Tensor], torch.Tensor]
"""A student as a function: inputs `x` of shape `(n, *input_shape)` to logits `(n, C)`."""


@dataclass(frozen=True)
class DataSpec:
    """What a commentary needs to know about its dataset.

    **Fields:**

    - `name`: the dataset name, e.g. `"digits"`.
    - `input_shape`: the shape of one input, e.g. `(1, 8, 8)`.
    - `classes`: the class names, in label order.
    """

    name: str
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.classes or len(self.classes) < 2:
            raise InputError(
                f"`DataSpec(classes=...)` needs at least two classes, got {self.classes!r}."
            )
        if not self.input_shape or any(int(s) < 1 for s in self.input_shape):
            raise InputError(
                f"`DataSpec(input_shape=...)` must be positive sizes, got {self.input_shape!r}."
            )
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataSpec:
        return cls(data["name"], tuple(data["input_shape"]), tuple(data["classes"]))


class AbstractCommentary(nn.Module, abc.ABC):
    """Base class of commentaries (Raghu et al., *Teaching with Commentaries*, ICLR 2021).

    A commentary is learned meta-information that changes how a student trains. It owns
    its parameters $\\phi$ (the module's parameters: a teacher network or a table) and
    defines the student's training loss $L_T(\\theta, \\phi)$ on a batch; the learner fits
    $\\phi$ to the student's plain validation loss
    $\\min_\\phi L_V(\\theta^*(\\phi))$, $\\theta^*(\\phi) \\approx \\arg\\min_\\theta
    L_T(\\theta, \\phi)$, by backpropagation through training (Algorithm 1) or implicit
    differentiation (Algorithm 2).

    **Contract.** A subclass sets the class attributes `name` (its plugin name),
    `default_method` (`"unroll"` or `"ift"`) and optionally `default_meta_lr` (the Adam
    step on $\\phi$ the learner uses unless told otherwise). Its `__init__` takes
    `(spec, **config)`, every config value JSON-serializable with a default, and passes
    them on with `super().__init__(spec, **config)`. It implements

    - `loss(phi, student, x, y, progress, generator=None) -> scalar`: the commentary-modified
      training loss of the student on one batch. `phi` is a dictionary name → tensor with the
      keys of `self.phi()`; the loss must depend on $\\phi$ only through `phi` (use
      `torch.func.functional_call(self, phi, ...)`) so that it can be differentiated with
      respect to it. `progress` $\\in [0, 1]$ is the fraction of the student's training done.
      Any randomness must come from `generator`, so that the same generator state gives the
      same loss.

    Optionally override `describe()` for the CLI, `plot()` for `commentaries show` and
    `is_learnable` (a control that must not be learned returns `False`). Register the
    class under the entry-point group `implicitgrad.commentaries`; the conformance tests
    then run on it.

    **Arguments:**

    - `spec`: the [`DataSpec`][implicitgrad_commentaries.DataSpec] of the dataset.
    - `**config`: the commentary's settings (JSON-serializable), saved with it.

    **Example:** a commentary that learns one temperature for the logits.

    ```python
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call
    from implicitgrad_commentaries import AbstractCommentary, DataSpec

    class Temperature(AbstractCommentary):
        name = "temperature"

        def __init__(self, spec, init=0.0):
            super().__init__(spec, init=init)
            self.log_t = torch.nn.Parameter(torch.tensor(float(init)))

        def forward(self):
            return self.log_t.exp()

        def loss(self, phi, student, x, y, progress, generator=None):
            t = functional_call(self, phi, ())
            return F.cross_entropy(student(x) / t, y)

    c = Temperature(DataSpec("toy", (3,), ("a", "b")))
    student = torch.nn.Linear(3, 2)
    loss = c.loss(c.phi(), student, torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), 0.0)
    ```
    """

    name: ClassVar[str] = ""
    default_method: ClassVar[str] = "ift"
    default_meta_lr: ClassVar[float] = 1e-2

    def __init__(self, spec: DataSpec, **config: Any) -> None:
        super().__init__()
        if not isinstance(spec, DataSpec):
            raise InputError(
                f"`{type(self).__name__}(spec=...)` must be a DataSpec, got {type(spec).__name__}."
            )
        self.spec = spec
        self.config = dict(config)

    def phi(self) -> dict[str, torch.Tensor]:
        """The commentary parameters $\\phi$, as a dictionary name → parameter."""
        return dict(self.named_parameters())

    @property
    def is_learnable(self) -> bool:
        """Whether the learner should fit $\\phi$ (`False` for fixed controls)."""
        return True

    @abc.abstractmethod
    def loss(
        self,
        phi: dict[str, torch.Tensor],
        student: Student,
        x: torch.Tensor,
        y: torch.Tensor,
        progress: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The commentary-modified training loss of `student` on the batch `(x, y)`."""

    def student_inputs(
        self,
        phi: dict[str, torch.Tensor],
        x: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The inputs the student sees outside training: in the learner's validation loss
        and at test time.

        The default returns `x` unchanged, so that the validation loss is the student's plain
        loss. A commentary that is part of the student's input pipeline (an attention mask)
        overrides it; the validation loss then depends on $\\phi$ directly as well.
        """
        return x

    def controls(self, x: torch.Tensor | None = None) -> dict[str, AbstractCommentary]:
        """Fixed control commentaries to compare against when this one is reused.

        A learned commentary should beat not only the plain baseline but also an unlearned
        commentary of the same kind (random blending, random masks, ...). `x` are
        validation inputs a control may use to match this commentary's statistics.

        **Returns:**

        label → commentary (default: none).
        """
        return {}

    def describe(self) -> str:
        """A one-line description for listings."""
        doc = (type(self).__doc__ or "").strip().splitlines()
        return doc[0] if doc else type(self).__name__

    def plot(self, data: Dataset, folder: Path) -> list[Path]:
        """Write PNG plots of this commentary into the existing folder `folder`.

        `commentaries show` calls it with the commentary and `data` on the CPU. The default
        writes nothing; a plugin that can be pictured overrides it (matplotlib is imported
        inside, as it is an optional extra).

        **Returns:**

        The paths written.
        """
        return []

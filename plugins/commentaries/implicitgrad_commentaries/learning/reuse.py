"""Train fresh students with a fixed commentary (reuse) and compare against baselines."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from implicitgrad import InputError

from ..commentaries.base import AbstractCommentary
from ..commentaries.students import make_student
from ..datasets.splits import Dataset, Split

__all__ = ["TrainConfig", "TrainResult", "train_student", "compare", "accuracy", "format_table"]


@dataclass(frozen=True)
class TrainConfig:
    """How a student is trained when a commentary is reused.

    SGD with Nesterov momentum and weight decay, the learning rate multiplied by 0.1 at
    30%, 60% and 80% of training: the paper's blending evaluation schedule, shortened.

    **Arguments:**

    - `steps`: optimizer steps (default `1500`).
    - `batch_size`: default `64`.
    - `lr`: initial learning rate (default `0.05`).
    - `momentum`: default `0.9` (Nesterov).
    - `weight_decay`: default `5e-4`.
    - `eval_fractions`: fractions of training at which test accuracy is recorded (default
      `(0.1, 0.25, 0.5, 1.0)`), to show speed-ups.
    - `curve_points`: test accuracy is also recorded at this many evenly spaced steps, for
      learning curves (default `0`: only at `eval_fractions`). Testing does not change
      the training.
    """

    steps: int = 1500
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    curve_points: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise InputError(f"`TrainConfig(steps=...)` must be an int >= 1, got {self.steps!r}.")
        if not all(0 < f <= 1 for f in self.eval_fractions):
            raise InputError(
                "`TrainConfig(eval_fractions=...)` must lie in (0, 1], got "
                f"{self.eval_fractions!r}."
            )
        if not isinstance(self.curve_points, int) or self.curve_points < 0:
            raise InputError(
                f"`TrainConfig(curve_points=...)` must be an int >= 0, got {self.curve_points!r}."
            )

    def eval_step(self, fraction: float) -> int:
        """The training step at which `fraction` of training is done."""
        return max(1, round(fraction * self.steps))

    def eval_steps(self) -> list[int]:
        """The training steps after which the student is tested, in order: those of
        `eval_fractions`, `curve_points` evenly spaced ones, and the last."""
        n = self.curve_points
        steps = {self.eval_step(f) for f in self.eval_fractions} | {self.steps}
        return sorted(steps | {self.eval_step(k / n) for k in range(1, n + 1)})


@dataclass(frozen=True)
class TrainResult:
    """Test accuracy of one trained student.

    **Fields:**

    - `accuracy`: fraction of training → test accuracy at that point.
    - `final`: test accuracy at the end of training.
    - `curve`: training step → test accuracy, at every step the student was tested
      (`TrainConfig.eval_steps()`: those of `eval_fractions` and `curve_points`).
    """

    accuracy: dict[float, float]
    final: float
    curve: dict[int, float] = field(default_factory=dict)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split) -> float:
    """Classification accuracy of `model` on `split`."""
    model.eval()
    correct = (model(split.x).argmax(1) == split.y).sum()
    model.train()
    return float(correct) / len(split)


def train_student(
    data: Dataset,
    arch: str,
    commentary: AbstractCommentary | None = None,
    *,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    device: str | torch.device | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a fresh student, optionally with a fixed commentary, and test it.

    The commentary is not changed: its training loss
    [`loss`][implicitgrad_commentaries.AbstractCommentary.loss] replaces plain
    cross-entropy, with $\\phi$ detached. The student is tested on
    [`student_inputs`][implicitgrad_commentaries.AbstractCommentary.student_inputs] of the
    test images (the images themselves, except for commentaries such as attention masks that
    belong to the student's input pipeline). Without a commentary the student minimizes plain
    cross-entropy with the same schedule, batches and initialization (the baseline).

    **Arguments:**

    - `data`: the dataset; the student is tested on `data.test`.
    - `arch`: the student architecture
      ([`make_student`][implicitgrad_commentaries.models.make_student]).
    - `commentary`: the commentary to reuse, or `None` for the baseline.
    - `config`: a [`TrainConfig`][implicitgrad_commentaries.train.TrainConfig].
    - `seed`: seeds the initialization, the batches and the commentary's randomness.
    - `device`: where the student, the commentary and the batches live (default: the
      device of `data`); the commentary is moved there in place.
    - `on_eval`: called as `on_eval(step, test_accuracy)` after every test of the student.

    **Returns:**

    A [`TrainResult`][implicitgrad_commentaries.train.TrainResult].

    **Example:**

    ```python
    from implicitgrad_commentaries.data import load_digits_dataset
    from implicitgrad_commentaries.train import TrainConfig, train_student
    result = train_student(load_digits_dataset(), "linear", config=TrainConfig(steps=50))
    print(result.final)
    ```
    """
    if commentary is not None and commentary.spec != data.spec:
        raise InputError(
            f"`train_student`: the commentary was learned on {commentary.spec} but the data is "
            f"{data.spec}."
        )
    device = data.device if device is None else torch.device(device)
    data = data.to(device)
    model = make_student(arch, data.spec, seed=seed).to(device)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    milestones = [int(config.steps * f) for f in (0.3, 0.6, 0.8)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    tested = set(config.eval_steps())
    gen = torch.Generator().manual_seed(seed)
    # A separate stream for the commentary's randomness keeps the batches identical across
    # conditions with the same seed.
    commentary_gen = torch.Generator().manual_seed(seed + 1_000_003)
    phi = None
    if commentary is not None:
        commentary.to(device)
        commentary.eval()
        phi = {k: v.detach() for k, v in commentary.phi().items()}
    # What the student is tested on does not change during training: built once.
    test = _test_split(data, commentary, phi)
    curve: dict[int, float] = {}
    for step in range(1, config.steps + 1):
        idx = torch.randint(len(data.train), (config.batch_size,), generator=gen).to(device)
        x, y = data.train.x[idx], data.train.y[idx]
        if commentary is None:
            loss = F.cross_entropy(model(x), y)
        else:
            progress = (step - 1) / config.steps
            loss = commentary.loss(phi, model, x, y, progress, commentary_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step in tested:
            curve[step] = accuracy(model, test)
            if on_eval is not None:
                on_eval(step, curve[step])
    result = {f: curve[config.eval_step(f)] for f in config.eval_fractions}
    return TrainResult(result, curve[config.steps], curve)


def _test_split(data: Dataset, commentary: AbstractCommentary | None, phi: dict | None) -> Split:
    if commentary is None:
        return data.test
    # The same generator state at every evaluation, so random controls see the same test set.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return Split(commentary.student_inputs(phi or {}, data.test.x, gen), data.test.y)


def compare(
    data: Dataset,
    arch: str,
    conditions: Mapping[str, AbstractCommentary | None],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    config: TrainConfig = TrainConfig(),
    callback: Callable[[str, int], None] | None = None,
    device: str | torch.device | None = None,
    on_eval: Callable[[str, int, int, float], None] | None = None,
) -> dict[str, list[TrainResult]]:
    """Train one student per condition and seed; the same seed gives every condition the
    same initialization and batches.

    **Arguments:**

    - `conditions`: label → commentary (or `None` for the baseline).
    - `seeds`, `config`: as in [`train_student`][implicitgrad_commentaries.train.train_student].
    - `callback`: called as `callback(label, seed)` after each student.
    - `device`: as in `train_student`.
    - `on_eval`: called as `on_eval(label, seed, step, test_accuracy)` after every test of
      a student.

    **Returns:**

    label → one [`TrainResult`][implicitgrad_commentaries.train.TrainResult] per seed.
    """
    out: dict[str, list[TrainResult]] = {}
    for label, commentary in conditions.items():
        out[label] = []
        for seed in seeds:
            tested = None
            if on_eval is not None:
                tested = functools.partial(on_eval, label, seed)
            result = train_student(
                data, arch, commentary, config=config, seed=seed, device=device, on_eval=tested
            )
            out[label].append(result)
            if callback is not None:
                callback(label, seed)
    return out


def _mean_std(values: Sequence[float], signed: bool = False) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:{'+' if signed else ''}.2f} ± {100 * std:.2f}"


def format_table(results: Mapping[str, Sequence[TrainResult]]) -> str:
    """A Markdown table of mean ± std test accuracy (%) per condition and training fraction.

    The last column is the paired difference of final accuracy to the first condition (the
    baseline), seed by seed: conditions share initialization and batches per seed, so the
    paired difference is less noisy than comparing the two means.
    """
    fractions = sorted(next(iter(results.values()))[0].accuracy)
    reference = next(iter(results.values()))
    header = "| condition | " + " | ".join(f"acc @ {int(100 * f)}% of training" for f in fractions)
    header += " | final − first row (paired) |"
    lines = [header, "|---" * (len(fractions) + 2) + "|"]
    for label, runs in results.items():
        cells = [_mean_std([r.accuracy[f] for r in runs]) for f in fractions]
        paired = [r.final - b.final for r, b in zip(runs, reference)]
        cells.append("" if runs is reference else _mean_std(paired, signed=True))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(results: Mapping[str, Sequence[TrainResult]]) -> dict[str, dict[str, object]]:
    """JSON-ready summary: per condition, the accuracies per seed and their mean/std, and
    every seed's learning curve (training step → test accuracy)."""
    summary: dict[str, dict[str, object]] = {}
    for label, runs in results.items():
        finals = [r.final for r in runs]
        summary[label] = {
            "final_mean": statistics.fmean(finals),
            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "per_seed": [{str(f): a for f, a in r.accuracy.items()} for r in runs],
            "curves": [{str(s): a for s, a in r.curve.items()} for r in runs],
        }
    return summary

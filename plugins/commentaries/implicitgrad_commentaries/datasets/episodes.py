"""Episodic few-shot data: N-way K-shot tasks over a data set whose classes are split into
meta-training, meta-validation and meta-test parts that never share a class."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from implicitgrad import InputError

__all__ = ["Task", "ClassSplit", "EpisodicDataset", "TaskSampler"]

_PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    """One N-way K-shot episode: a support set to adapt on and a query set to score on.

    Labels are task labels $0, \\dots, N-1$: class `classes[j]` of the data set has label `j`
    in this task. The map is drawn afresh for every task, so a learner cannot memorize
    which class a label stands for. Both sets are grouped by label: `support_y` is
    `arange(ways).repeat_interleave(shots)`, and likewise `query_y` with `queries`.

    **Fields:**

    - `support_x`: `(ways * shots, *input_shape)`, float32.
    - `support_y`: `(ways * shots,)`, int64 in `0..ways-1`.
    - `query_x`: `(ways * queries, *input_shape)`, float32; no example of the support set.
    - `query_y`: `(ways * queries,)`, int64.
    - `classes`: the data set's class ids, `classes[j]` has task label `j`.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: tuple[int, ...]

    @property
    def ways(self) -> int:
        """The number of classes $N$."""
        return len(self.classes)

    def to(self, device: str | torch.device) -> Task:
        """The same task with its tensors on `device`."""
        return Task(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            self.classes,
        )


@dataclass(frozen=True)
class ClassSplit:
    """Which classes meta-training, meta-validation and meta-test tasks draw from.

    The three parts are disjoint: a class seen at meta-test time is never seen during
    meta-training (nor used for model selection). A part may be empty (scikit-learn's
    digits has only ten classes, so its split has no meta-validation part); sampling
    from a part with fewer classes than the task's ways raises an
    [`InputError`][implicitgrad.InputError].

    **Fields:**

    - `train`, `val`, `test`: tuples of class ids (non-negative ints).
    """

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for part in _PARTS:
            ids = getattr(self, part)
            try:
                normal = tuple(int(c) for c in ids)
            except (TypeError, ValueError):
                raise InputError(
                    f"`ClassSplit({part}=...)` must be a sequence of int class ids, got {ids!r}."
                ) from None
            for c in normal:
                if c < 0:
                    raise InputError(f"`ClassSplit({part}=...)`: class id {c} is negative.")
                if c in seen:
                    where = "twice in" if seen[c] == part else f"in both {seen[c]!r} and"
                    raise InputError(
                        f"`ClassSplit`: class {c} is {where} {part!r}; the parts must be "
                        "disjoint so that no meta-test class is seen in meta-training."
                    )
                seen[c] = part
            object.__setattr__(self, part, normal)

    @classmethod
    def by_fraction(
        cls, classes: tuple[int, ...] | range, fractions: tuple[float, float, float]
    ) -> ClassSplit:
        """Split `classes` in order into consecutive train / val / test parts.

        **Arguments:**

        - `classes`: the class ids, in the order they are assigned.
        - `fractions`: the shares of train, val and test; they must sum to 1.

        **Returns:**

        A `ClassSplit`; the train and val sizes are rounded down, the test part takes the
        rest.
        """
        ids = tuple(int(c) for c in classes)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
            raise InputError(
                "`ClassSplit.by_fraction(fractions=...)` must be three non-negative shares "
                f"summing to 1, got {fractions!r}."
            )
        n_train = int(len(ids) * fractions[0])
        n_val = int(len(ids) * fractions[1])
        return cls(ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :])


def _check_part(call: str, part: str) -> None:
    if part not in _PARTS:
        raise InputError(f"`{call}(part={part!r})` must be one of 'train', 'val', 'test'.")


@dataclass(frozen=True)
class EpisodicDataset:
    """A labelled data set with a class split, from which few-shot tasks are drawn.

    `x` holds every example of every part, `y` its class id; `split` says which class ids
    each part may use. `x` is float32 in $[0, 1]$, or uint8 in $0..255$ to save memory
    (MiniImageNet is 5 GB as float32); tasks are always float32 in $[0, 1]$.

    **Fields:**

    - `name`: a short name such as `"glyphs"`.
    - `x`: `(n, *input_shape)`, float32 or uint8.
    - `y`: `(n,)`, int64 class ids.
    - `split`: the [`ClassSplit`][implicitgrad_commentaries.ClassSplit].
    - `input_shape`: the shape of one example, channels first.
    - `description`: one sentence saying what the data is and where it came from.
    - `class_names`: optional, `class_names[c]` names class id `c`.

    **Example:**

    ```python
    from implicitgrad_commentaries import make_glyphs

    data = make_glyphs(n_classes=40, per_class=10)
    task = data.sampler("train", ways=5, shots=1, queries=3, seed=0).sample()
    print(task.support_x.shape, task.query_x.shape)
    # torch.Size([5, 1, 16, 16]) torch.Size([15, 1, 16, 16])
    ```
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    split: ClassSplit
    input_shape: tuple[int, ...]
    description: str
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        call = f"EpisodicDataset(name={self.name!r})"
        if self.x.dtype not in (torch.float32, torch.uint8):
            raise InputError(f"`{call}`: x must be float32 or uint8, got {self.x.dtype}.")
        if self.y.dtype != torch.int64 or self.y.ndim != 1:
            raise InputError(
                f"`{call}`: y must be a 1-d int64 tensor, got {self.y.dtype} {tuple(self.y.shape)}."
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise InputError(
                f"`{call}`: x has {self.x.shape[0]} examples but y has {self.y.shape[0]} labels."
            )
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if tuple(self.x.shape[1:]) != self.input_shape:
            raise InputError(
                f"`{call}`: x has examples of shape {tuple(self.x.shape[1:])}, but input_shape "
                f"is {self.input_shape}."
            )
        present = set(torch.unique(self.y).tolist())
        for part in _PARTS:
            missing = sorted(set(getattr(self.split, part)) - present)
            if missing:
                raise InputError(
                    f"`{call}`: split.{part} names classes with no example in y: {missing[:5]}."
                )

    def classes(self, part: str) -> tuple[int, ...]:
        """The class ids of one part: `"train"`, `"val"` or `"test"`."""
        _check_part("EpisodicDataset.classes", part)
        return getattr(self.split, part)

    def sampler(self, part: str, ways: int, shots: int, queries: int, seed: int) -> TaskSampler:
        """A seeded sampler of `ways`-way `shots`-shot tasks from the classes of `part`.

        **Arguments:**

        - `part`: `"train"` (meta-training), `"val"` (meta-validation) or `"test"`.
        - `ways`: classes per task, $N$.
        - `shots`: support examples per class, $K$.
        - `queries`: query examples per class.
        - `seed`: the same seed gives the same tasks in the same order.

        **Returns:**

        A [`TaskSampler`][implicitgrad_commentaries.TaskSampler].
        """
        return TaskSampler(self, part, ways, shots, queries, seed)

    def to(self, device: str | torch.device) -> EpisodicDataset:
        """The same data set with `x` and `y` on `device` (tasks are then drawn there)."""
        return EpisodicDataset(
            self.name,
            self.x.to(device),
            self.y.to(device),
            self.split,
            self.input_shape,
            self.description,
            self.class_names,
        )


class TaskSampler:
    """Draws N-way K-shot tasks from one part of an episodic data set.

    Each task picks `ways` distinct classes of the part in random order (the order is the
    label map), then `shots + queries` distinct examples of each class, the first `shots`
    for the support set and the rest for the query set.

    Task $i$ depends only on `(seed, i)`: `sample()` returns tasks $0, 1, 2, \\dots$ in turn,
    `task(i)` returns task $i$ directly, and two samplers with the same arguments give
    identical tensors. Meta-test accuracy over `tasks(600)` is therefore reproducible
    whatever else was drawn first from other samplers.

    **Arguments:**

    - `dataset`: the data set.
    - `part`: `"train"`, `"val"` or `"test"`.
    - `ways`, `shots`, `queries`: positive ints; every class of the part needs at least
      `shots + queries` examples.
    - `seed`: an int.

    **Example:**

    ```python
    from implicitgrad_commentaries import load_fewshot_digits

    sampler = load_fewshot_digits().sampler("test", ways=5, shots=1, queries=5, seed=0)
    for task in sampler.tasks(3):
        print(task.classes, task.support_y.tolist())
    ```
    """

    def __init__(
        self, dataset: EpisodicDataset, part: str, ways: int, shots: int, queries: int, seed: int
    ) -> None:
        call = "EpisodicDataset.sampler"
        _check_part(call, part)
        for arg, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"`{call}({arg}=...)` must be a positive int, got {value!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"`{call}(seed=...)` must be a non-negative int, got {seed!r}.")
        classes = dataset.classes(part)
        if len(classes) < ways:
            sizes = ", ".join(f"{p} {len(dataset.classes(p))}" for p in _PARTS)
            fix = f"use ways <= {len(classes)}" if classes else "sample from another part"
            raise InputError(
                f"`{call}({part!r}, ways={ways})`: {dataset.name!r} has {len(classes)} "
                f"{part} classes, fewer than {ways} ({sizes}); {fix}."
            )
        y = dataset.y.cpu()
        self._members = [torch.nonzero(y == c).flatten() for c in classes]
        need = shots + queries
        for c, members in zip(classes, self._members):
            if members.numel() < need:
                raise InputError(
                    f"`{call}({part!r}, shots={shots}, queries={queries})`: class {c} of "
                    f"{dataset.name!r} has {members.numel()} examples, fewer than "
                    f"shots + queries = {need}."
                )
        self.dataset = dataset
        self.part = part
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, seed
        self._classes = classes
        self._next = 0

    def __repr__(self) -> str:
        return (
            f"TaskSampler({self.dataset.name!r}, {self.part!r}, ways={self.ways}, "
            f"shots={self.shots}, queries={self.queries}, seed={self.seed})"
        )

    def _generator(self, index: int) -> torch.Generator:
        # SeedSequence mixes (seed, index) so that nearby seeds give unrelated task streams.
        state = np.random.SeedSequence([self.seed, index]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def task(self, index: int) -> Task:
        """Task number `index` of this sampler's stream (without advancing it)."""
        if index < 0:
            raise InputError(f"`TaskSampler.task(index={index})` must be non-negative.")
        gen = self._generator(index)
        picks = torch.randperm(len(self._classes), generator=gen)[: self.ways].tolist()
        chosen = []
        for p in picks:
            members = self._members[p]
            order = torch.randperm(members.numel(), generator=gen)[: self.shots + self.queries]
            chosen.append(members[order])
        rows = torch.stack(chosen)  # (ways, shots + queries)
        support = rows[:, : self.shots].reshape(-1)
        query = rows[:, self.shots :].reshape(-1)
        x = self.dataset.x
        labels = torch.arange(self.ways, device=x.device)
        return Task(
            support_x=_as_float(x[support.to(x.device)]),
            support_y=labels.repeat_interleave(self.shots),
            query_x=_as_float(x[query.to(x.device)]),
            query_y=labels.repeat_interleave(self.queries),
            classes=tuple(self._classes[p] for p in picks),
        )

    def sample(self) -> Task:
        """The next task of the stream."""
        task = self.task(self._next)
        self._next += 1
        return task

    def tasks(self, n: int) -> list[Task]:
        """The next `n` tasks of the stream."""
        return [self.sample() for _ in range(n)]

    def reset(self) -> None:
        """Start the stream again from task 0."""
        self._next = 0

    def __iter__(self) -> Iterator[Task]:
        """Endless: yields the next task for ever."""
        while True:
            yield self.sample()


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x

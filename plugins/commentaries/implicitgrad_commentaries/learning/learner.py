"""Learn a commentary's parameters: through training (Algorithm 1) or implicitly (Algorithm 2)."""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

import implicitgrad as ig
from implicitgrad import InputError, SolverError

from ..commentaries.base import AbstractCommentary
from ..commentaries.students import make_student
from ..datasets.splits import Dataset, Split
from .state import LearnState, to_device

__all__ = [
    "Schedule",
    "meta_gradient",
    "Unroll",
    "Implicit",
    "LearnHistory",
    "learn",
    "losses",
    "unrolled_hypergrad",
    "METHODS",
]

METHODS = ("unroll", "ift")


class Schedule(abc.ABC):
    """How the student trains while a commentary is learned, and how that is differentiated.

    A schedule fixes what one meta-step does: which batches the student trains on, for how
    many steps, when it is re-initialized, and the core differentiation object (an
    [`ig.AbstractAdjoint`][implicitgrad.AbstractAdjoint]) that turns the trained student
    into a function of the commentary's parameters. [`learn`][implicitgrad_commentaries.learn]
    runs every schedule with the same loop, built on [`ig.minimize`][implicitgrad.minimize].
    The two of the paper are [`Unroll`][implicitgrad_commentaries.learn.Unroll] (Algorithm 1)
    and [`Implicit`][implicitgrad_commentaries.learn.Implicit] (Algorithm 2).
    """

    #: The name recorded in the history and the checkpoint metadata.
    name: ClassVar[str]
    student_lr: float

    @property
    @abc.abstractmethod
    def adjoint(self) -> ig.AbstractAdjoint:
        """The core object that differentiates the student's training."""

    @abc.abstractmethod
    def make_optimizer(self) -> ig.AbstractOptimizer:
        """The student's (differentiable) optimizer."""

    @abc.abstractmethod
    def draw(
        self, data: Dataset, batch_size: int, gen: torch.Generator, position: int
    ) -> tuple[list[tuple], tuple[torch.Tensor, torch.Tensor]]:
        """The training batches `(x, y, seed, progress)` of one meta-step, and the
        validation batch its outer loss is measured on (`position` counts the meta-steps
        since the student was re-initialized)."""

    @abc.abstractmethod
    def restart(self, meta_step: int, seed: int) -> int | None:
        """The seed to re-initialize the student with before `meta_step`, or `None` to
        continue from where the last meta-step left it."""

    def position(self, meta_step: int) -> int:
        """Meta-steps since the student was last re-initialized."""
        return 0


@dataclass(frozen=True)
class Unroll(Schedule):
    """Algorithm 1 of *Teaching with Commentaries*: backpropagation through training.

    Every meta-step re-initializes the student from the same initial weights
    $\\theta_0$, takes `inner_steps` differentiable optimizer steps on the commentary's
    training loss, and differentiates the student's plain validation loss after them with
    respect to $\\phi$, through [`ig.UnrollAdjoint`][implicitgrad.UnrollAdjoint]. Memory
    grows with `inner_steps` (`checkpoint=True` trades it for recomputation).

    **Arguments:**

    - `inner_steps`: $N$, the student steps per meta-step (default `20`).
    - `student_lr`: the student's learning rate (default `0.1`).
    - `optimizer`: `"sgd"` (with momentum 0.9, default) or `"adam"`; the paper uses Adam.
    - `checkpoint`: as in [`ig.UnrollAdjoint`][implicitgrad.UnrollAdjoint] (default `False`).
    """

    inner_steps: int = 20
    student_lr: float = 0.1
    optimizer: str = "sgd"
    checkpoint: bool | int = False

    name: ClassVar[str] = "unroll"

    def __post_init__(self) -> None:
        if not isinstance(self.inner_steps, int) or self.inner_steps < 1:
            raise InputError(
                f"`Unroll(inner_steps=...)` must be an int >= 1, got {self.inner_steps!r}."
            )
        if not (isinstance(self.student_lr, (int, float)) and 0 < self.student_lr < math.inf):
            raise InputError(
                f"`Unroll(student_lr=...)` must be a finite float > 0, got {self.student_lr!r}."
            )
        if self.optimizer not in ("sgd", "adam"):
            raise InputError(
                f"`Unroll(optimizer=...)` must be 'sgd' or 'adam', got {self.optimizer!r}."
            )

    @property
    def adjoint(self) -> ig.AbstractAdjoint:
        return ig.UnrollAdjoint(checkpoint=self.checkpoint)

    def make_optimizer(self) -> ig.AbstractOptimizer:
        """The differentiable student optimizer (`ig.SGD` or `ig.Adam`) for `ig.unroll`."""
        if self.optimizer == "adam":
            return ig.Adam(lr=self.student_lr)
        return ig.SGD(lr=self.student_lr, momentum=0.9)

    def draw(self, data, batch_size, gen, position):
        seeds = torch.randint(2**31 - 1, (self.inner_steps,), generator=gen).tolist()
        n = self.inner_steps
        batches = [(*_batch(data.train, batch_size, gen), s, k / n) for k, s in enumerate(seeds)]
        return batches, (data.val.x, data.val.y)

    def restart(self, meta_step: int, seed: int) -> int | None:
        return seed


@dataclass(frozen=True)
class Implicit(Schedule):
    """Algorithm 2 of *Teaching with Commentaries*: implicit differentiation during training.

    The student trains normally (SGD with momentum 0.9); each meta-step takes one student
    step on one training batch and differentiates the student's loss on one validation
    batch through [`ig.ImplicitAdjoint`][implicitgrad.ImplicitAdjoint], i.e.

    $$\\frac{\\mathrm{d}L_V}{\\mathrm{d}\\phi} \\approx -\\frac{\\partial^2 L_T}{\\partial\\phi
    \\,\\partial\\theta}\\, H^{-1} \\frac{\\partial L_V}{\\partial\\theta}$$

    at the student's new parameters, with any solver for $H^{-1}v$. The paper's estimator is
    `Neumann(terms=1, alpha=student_lr)` (the default). Every `student_steps` meta-steps the
    student is re-initialized, so that $\\phi$ sees every phase of training; the normalized
    iteration given to the commentary is the position inside that run.

    **Arguments:**

    - `solver`: an `ig.AbstractSolver` or a shorthand (`"cg"`, `"neumann"`, `"identity"`,
      `"exact"`, ...); `None` (default) is `ig.Neumann(terms=1, alpha=student_lr)`.
    - `student_lr`: the student's learning rate (default `0.1`).
    - `student_steps`: the length of one student run before re-initialization (default
      `500`).
    """

    solver: ig.AbstractSolver | str | None = None
    student_lr: float = 0.1
    student_steps: int = 500

    name: ClassVar[str] = "ift"

    def __post_init__(self) -> None:
        if not (isinstance(self.student_lr, (int, float)) and 0 < self.student_lr < math.inf):
            raise InputError(
                f"`Implicit(student_lr=...)` must be a finite float > 0, got {self.student_lr!r}."
            )
        if not isinstance(self.student_steps, int) or self.student_steps < 1:
            raise InputError(
                f"`Implicit(student_steps=...)` must be an int >= 1, got {self.student_steps!r}."
            )

    def resolved_solver(self) -> ig.AbstractSolver | str:
        """`solver`, with `None` replaced by the paper's one-term Neumann series."""
        return ig.Neumann(terms=1, alpha=self.student_lr) if self.solver is None else self.solver

    @property
    def adjoint(self) -> ig.AbstractAdjoint:
        # One student step per meta-step: θ is not stationary, by design of the algorithm.
        return ig.ImplicitAdjoint(self.resolved_solver(), stationarity_tol=None)

    def make_optimizer(self) -> ig.AbstractOptimizer:
        return ig.SGD(lr=self.student_lr, momentum=0.9)

    def draw(self, data, batch_size, gen, position):
        batch, val_batch = _batch(data.train, batch_size, gen), _batch(data.val, batch_size, gen)
        batch_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        return [(*batch, batch_seed, position / self.student_steps)], val_batch

    def restart(self, meta_step: int, seed: int) -> int | None:
        run, k = divmod(meta_step, self.student_steps)
        return seed + run if k == 0 else None

    def position(self, meta_step: int) -> int:
        return meta_step % self.student_steps


@dataclass
class LearnHistory:
    """What happened while learning a commentary.

    **Fields:**

    - `method`: `"unroll"` or `"ift"`.
    - `val_loss`: the student's validation loss at every meta-step.
    - `hypergrad_norm`: $\\lVert \\mathrm{d}L_V/\\mathrm{d}\\phi\\rVert$ at every meta-step
      (`nan` where the step was skipped).
    - `skipped`: meta-steps skipped because the linear solver failed (e.g. CG met negative
      curvature of a non-convex student), with the first error message in `first_error`.
    - `not_converged`: meta-steps whose iterative solve stopped before its tolerance (a
      `ConvergenceWarning`; one summary warning is issued at the end), with the first
      message in `first_warning`.
    - `diverged_at`: the meta-step after which $\\phi$ or the student's validation loss
      stopped being finite (learning stops there), or `None`.
    - `seconds`: wall-clock time.
    """

    method: str
    val_loss: list[float] = field(default_factory=list)
    hypergrad_norm: list[float] = field(default_factory=list)
    skipped: int = 0
    first_error: str | None = None
    not_converged: int = 0
    first_warning: str | None = None
    diverged_at: int | None = None
    seconds: float = 0.0

    def failure(self, steps: int, max_skipped: float = 0.5) -> str | None:
        """Why this run did not learn a usable commentary, or `None` when it did.

        A run fails when $\\phi$ became non-finite, or when more than `max_skipped` of its
        `steps` meta-steps were skipped because the linear solver failed.
        """
        if self.diverged_at is not None:
            return (
                "the student's validation loss or the commentary's parameters became NaN or "
                f"infinite at meta-step "
                f"{self.diverged_at + 1} of {steps} (the meta or student learning rate is "
                "too large for this problem)"
            )
        if self.skipped > max_skipped * steps:
            return (
                f"{self.skipped} of {steps} meta-steps failed and were skipped, so the "
                f"commentary is essentially unlearned; first failure: {self.first_error}"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "val_loss": self.val_loss,
            "hypergrad_norm": self.hypergrad_norm,
            "skipped": self.skipped,
            "first_error": self.first_error,
            "not_converged": self.not_converged,
            "first_warning": self.first_warning,
            "diverged_at": self.diverged_at,
            "seconds": self.seconds,
        }


def _batch(split: Split, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(len(split), (min(size, len(split)),), generator=gen)
    idx = idx.to(split.y.device)
    return split.x[idx], split.y[idx]


def _norm(tree: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.detach() ** 2).sum()) for t in tree.values()))


def _meta_step(opt: torch.optim.Optimizer, phi: dict[str, torch.Tensor], hg: dict) -> None:
    opt.zero_grad(set_to_none=True)
    for name, p in phi.items():
        p.grad = hg[name].to(p.dtype)
    opt.step()


def learn(
    commentary: AbstractCommentary,
    data: Dataset,
    method: Schedule | str | None = None,
    *,
    student: str = "mlp",
    steps: int = 200,
    meta_lr: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
    device: str | torch.device | None = None,
    data_parallel: ig.DataParallel | None = None,
    checkpoint: Callable[[LearnState], None] | None = None,
    checkpoint_every: int = 0,
    resume: LearnState | None = None,
    settings: dict[str, Any] | None = None,
) -> LearnHistory:
    """Fit the commentary's parameters $\\phi$ to a student's validation loss, in place.

    **Arguments:**

    - `commentary`: any [`AbstractCommentary`][implicitgrad_commentaries.AbstractCommentary]
      with `is_learnable`.
    - `data`: the [`Dataset`][implicitgrad_commentaries.data.Dataset]; the outer loss is the
      student's plain cross-entropy on its validation split.
    - `method`: a [`Schedule`][implicitgrad_commentaries.Schedule]:
      [`Unroll`][implicitgrad_commentaries.learn.Unroll] (Algorithm 1) or
      [`Implicit`][implicitgrad_commentaries.learn.Implicit] (Algorithm 2); `"unroll"` or
      `"ift"` for their defaults, or `None` for the commentary's `default_method`.
    - `student`: the student architecture used while learning (see
      [`make_student`][implicitgrad_commentaries.models.make_student]).
    - `steps`: meta-steps (outer updates of $\\phi$).
    - `meta_lr`: the Adam step on $\\phi$ (default: the commentary's `default_meta_lr`).
    - `batch_size`: training (and validation) batch size.
    - `seed`: seeds the student initialization, the batches and the commentary's randomness.
    - `callback`: called as `callback(step, val_loss)` after every meta-step (progress bars).
    - `device`: where the students, the commentary and the batches live (default: the
      device of `data`); the commentary is moved there in place.
    - `data_parallel`: an [`ig.DataParallel`][implicitgrad.DataParallel] to learn on
      every process of a `torch.distributed` group (e.g. under `torchrun`): every process
      draws the same global batches and trains on its contiguous slice of each (the batch
      size must be divisible by the number of processes); the hypergradient and the
      validation loss are averaged, so the commentary stays identical everywhere and equals
      the one-process result for commentaries whose loss is a mean of per-example terms
      (weighting; blending pairs the examples of each process's slice instead).
    - `checkpoint`: called as `checkpoint(state)` with a
      [`LearnState`][implicitgrad_commentaries.LearnState] after every
      `checkpoint_every`-th meta-step (steps $k, 2k, \\dots$ of the whole run, skipped steps
      included; not after the last meta-step, nor after the one where the run diverged).
      Save it with `state.save(folder)`; under `data_parallel` the state is the same on
      every process and the caller chooses which one saves.
    - `checkpoint_every`: $k$ (default `0`: never).
    - `resume`: a `LearnState` of this run (the same commentary and config, data set,
      schedule, student, batch size, seed and meta learning rate; the commentary object
      may be freshly built): continue after its step, with its parameters, optimizer
      states, random number generators and history. `steps` stays the total number of
      meta-steps and must exceed the state's step. The result is the same, bitwise on the
      same machine, as a run that was never interrupted; torch's global random number
      generators are restored too.
    - `settings`: JSON-serializable values stored in every `LearnState` (e.g. the command
      line's flags, to check them when the run is resumed).

    **Returns:**

    A [`LearnHistory`][implicitgrad_commentaries.learn.LearnHistory]; after `resume`, of
    the whole run.

    **Example:**

    ```python
    from implicitgrad_commentaries import BlendingCommentary, learn
    from implicitgrad_commentaries.data import load_digits_dataset
    data = load_digits_dataset()
    c = BlendingCommentary(data.spec)
    history = learn(c, data, "ift", steps=5)
    print(history.val_loss[-1])
    ```

    Resuming from the state saved after two meta-steps gives the same run:

    ```python
    from implicitgrad_commentaries import BlendingCommentary, learn
    from implicitgrad_commentaries.data import load_digits_dataset
    data = load_digits_dataset()
    states = []
    full = learn(BlendingCommentary(data.spec), data, "ift", steps=3,
                 checkpoint=states.append, checkpoint_every=2)
    resumed = learn(BlendingCommentary(data.spec), data, "ift", steps=3, resume=states[0])
    assert resumed.val_loss == full.val_loss
    ```
    """
    if not commentary.is_learnable:
        raise InputError(
            f"`learn(commentary=...)`: {type(commentary).__name__} with config "
            f"{commentary.config} is a fixed control and cannot be learned."
        )
    if commentary.spec != data.spec:
        raise InputError(
            f"`learn`: the commentary was built for {commentary.spec} but the data is "
            f"{data.spec}. Build the commentary with data.spec."
        )
    if method is None:
        method = commentary.default_method
    if method == "unroll":
        method = Unroll()
    elif method == "ift":
        method = Implicit()
    if not isinstance(method, Schedule):
        raise InputError(
            f"`learn(method=...)` must be Unroll(...), Implicit(...), 'unroll' or 'ift', got "
            f"{method!r}."
        )
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"`learn(steps=...)` must be an int >= 1, got {steps!r}.")
    _check_resume_arguments(checkpoint, checkpoint_every, resume, settings)
    if meta_lr is None:
        meta_lr = commentary.default_meta_lr
    run = _run_identity(commentary, method, student, batch_size, seed, meta_lr)
    if resume is not None:
        _check_resume(resume, run, steps)
    device = data.device if device is None else torch.device(device)
    data = data.to(device)
    commentary.to(device)
    # Batches are drawn on the CPU from a CPU generator, so that a seed gives the same
    # batches on every device.
    gen = torch.Generator().manual_seed(seed)
    phi = commentary.phi()
    meta_opt = torch.optim.Adam(phi.values(), lr=meta_lr)
    history = LearnHistory(method.name)
    commentary.train()
    step_fn = _Student(commentary, data, method, student, batch_size, seed, gen, data_parallel)
    first = 0
    if resume is not None:
        first, history = resume.step, _copy_history(resume.history)
        _restore(resume, commentary, meta_opt, gen, step_fn)
    start, earlier = time.perf_counter(), history.seconds
    for step in range(first, steps):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ig.ConvergenceWarning)
                val_loss, hg = step_fn(step)
            _collect(caught, history)
        except SolverError as err:
            history.skipped += 1
            history.first_error = history.first_error or str(err)
            history.val_loss.append(float("nan"))
            history.hypergrad_norm.append(float("nan"))
        else:
            _meta_step(meta_opt, phi, hg)
            history.val_loss.append(val_loss)
            history.hypergrad_norm.append(_norm(hg))
            if callback is not None:
                callback(step, val_loss)
            finite_phi = all(bool(torch.isfinite(p).all()) for p in phi.values())
            if not (finite_phi and math.isfinite(val_loss)):
                history.diverged_at = step
                break
        # None after the last meta-step: the run is complete, and the caller saves its result
        # (a state there could only be resumed to do nothing).
        due = checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps
        if checkpoint is not None and due:
            history.seconds = earlier + time.perf_counter() - start
            checkpoint(
                _capture(step + 1, history, commentary, meta_opt, gen, step_fn, run, settings)
            )
    history.seconds = earlier + time.perf_counter() - start
    if history.not_converged:
        warnings.warn(
            f"`learn`: the linear solve stopped before its tolerance in "
            f"{history.not_converged} of {steps} meta-steps (first: {history.first_warning}). "
            "The hypergradients are approximate; give the solver more iterations or damping.",
            ig.ConvergenceWarning,
            stacklevel=2,
        )
    return history


def _check_resume_arguments(
    checkpoint: Any, checkpoint_every: Any, resume: Any, settings: Any
) -> None:
    if checkpoint is not None and not callable(checkpoint):
        raise InputError(
            f"`learn(checkpoint=...)` must be a function of a LearnState (or None), got "
            f"{type(checkpoint).__name__} {checkpoint!r}."
        )
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int):
        raise InputError(
            f"`learn(checkpoint_every=...)` must be an int >= 0 (0: never), got "
            f"{checkpoint_every!r}."
        )
    if checkpoint_every < 0:
        raise InputError(
            f"`learn(checkpoint_every=...)` must be >= 0 (0: never), got {checkpoint_every}."
        )
    if checkpoint_every and checkpoint is None:
        raise InputError(
            f"`learn(checkpoint_every={checkpoint_every})` needs `checkpoint=`, the function "
            "that receives the LearnState (e.g. `lambda state: state.save(folder)`)."
        )
    if resume is not None and not isinstance(resume, LearnState):
        raise InputError(
            f"`learn(resume=...)` must be a LearnState (e.g. `LearnState.load(folder)`) or "
            f"None, got {type(resume).__name__}."
        )
    if settings is not None:
        if not isinstance(settings, dict):
            raise InputError(
                f"`learn(settings=...)` must be a dict (or None), got {type(settings).__name__}."
            )
        try:
            json.dumps(settings, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise InputError(
                f"`learn(settings=...)` must be JSON-serializable: {err}. Pass strings, "
                "numbers, booleans, None, lists and dicts with string keys."
            ) from err


def _run_identity(
    commentary: AbstractCommentary,
    method: Schedule,
    student: str,
    batch_size: int,
    seed: int,
    meta_lr: float,
) -> dict[str, Any]:
    """What a resumed run must share with the run that saved the state (JSON values)."""
    run = {
        "commentary": commentary.name,
        "config": commentary.config,
        "dataset": commentary.spec.to_json(),
        "method": repr(method),
        "student": student,
        "batch_size": batch_size,
        "seed": seed,
        "meta_lr": meta_lr,
    }
    return json.loads(json.dumps(run, default=repr))


def _check_resume(resume: LearnState, run: dict[str, Any], steps: int) -> None:
    def show(key: str, value: Any) -> str:
        return str(value) if key == "method" else repr(value)  # the repr of a schedule

    differ = [
        f"{key} {show(key, resume.run.get(key))} (saved) vs {show(key, value)} (this call)"
        for key, value in run.items()
        if resume.run.get(key) != value
    ]
    if differ:
        raise InputError(
            "`learn(resume=...)`: the state comes from another run: "
            + "; ".join(differ)
            + ". Call learn with the arguments of the saved run, or start without resume."
        )
    if resume.history.diverged_at is not None:
        raise InputError(
            f"`learn(resume=...)`: the saved run diverged at meta-step "
            f"{resume.history.diverged_at + 1}; there is nothing to continue. Start again "
            "with a smaller meta or student learning rate."
        )
    if resume.step >= steps:
        raise InputError(
            f"`learn(resume=..., steps={steps})`: the state has already completed "
            f"{resume.step} meta-steps. Pass steps > {resume.step} (the total number of "
            "meta-steps) to continue it."
        )


def _copy_history(history: LearnHistory) -> LearnHistory:
    return dataclasses.replace(
        history,
        val_loss=list(history.val_loss),
        hypergrad_norm=list(history.hypergrad_norm),
    )


def _capture(
    step: int,
    history: LearnHistory,
    commentary: AbstractCommentary,
    meta_opt: torch.optim.Optimizer,
    gen: torch.Generator,
    student: _Student,
    run: dict[str, Any],
    settings: dict[str, Any] | None,
) -> LearnState:
    rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return LearnState(
        step=step,
        history=_copy_history(history),
        commentary=_to_cpu(commentary.state_dict()),
        meta_optimizer=_to_cpu(meta_opt.state_dict()),
        batches=gen.get_state(),
        rng=rng,
        student=student.state(),
        run=run,
        settings=json.loads(json.dumps(settings or {})),
    )


def _restore(
    state: LearnState,
    commentary: AbstractCommentary,
    meta_opt: torch.optim.Optimizer,
    gen: torch.Generator,
    student: _Student,
) -> None:
    commentary.load_state_dict(state.commentary)
    meta_opt.load_state_dict(state.meta_optimizer)
    gen.set_state(state.batches)
    student.restore(state.student)
    # Last: rebuilding the student's initialization reseeds torch's global generator.
    torch.set_rng_state(state.rng["cpu"])
    cuda = state.rng.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def _collect(caught: list[warnings.WarningMessage], history: LearnHistory) -> None:
    """Count convergence warnings into the history (one summary at the end instead of one
    per meta-step) and pass every other warning on."""
    counted = False
    for w in caught:
        if issubclass(w.category, ig.ConvergenceWarning):
            # One count per meta-step, however many warnings its solve issued.
            history.not_converged += not counted
            counted = True
            history.first_warning = history.first_warning or str(w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def losses(
    commentary: AbstractCommentary,
    fn: Callable[..., torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    val_batch: tuple[torch.Tensor, torch.Tensor],
    progress: float,
    seed: int,
    *,
    l2: float = 0.0,
) -> tuple[Callable[[Any, Any], torch.Tensor], Callable[[Any, Any], torch.Tensor]]:
    """The bilevel pair $(L_T, L_V)$ of a commentary for one training and validation batch.

    `inner(θ, φ)` is the commentary's training loss of the student `fn(θ, x)` (plus
    $\\frac{l_2}{2}\\lVert\\theta\\rVert^2$); its randomness is re-seeded with `seed` on
    every call, so repeated calls agree. `outer(θ, φ)` is the validation cross-entropy of
    the student on `commentary.student_inputs(φ, x_val)` (the plain one for most
    commentaries). Both can be passed to `ig.hypergrad` or `ig.implicit`.
    """
    x, y = batch
    xv, yv = val_batch

    def inner(theta: Any, phi: Any) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        loss = commentary.loss(phi, lambda z: fn(theta, z), x, y, progress, g)
        if l2:
            loss = loss + 0.5 * l2 * sum((t**2).sum() for t in theta.values())
        return loss

    def outer(theta: Any, phi: Any) -> torch.Tensor:
        return F.cross_entropy(fn(theta, commentary.student_inputs(phi, xv)), yv)

    return inner, outer


def _train_loss(commentary: AbstractCommentary, fn: Callable[..., torch.Tensor]):
    """The student's loss on a batch `(x, y, seed, progress)`, reseeded on every call so
    that the commentary's randomness is the same each time a batch is revisited."""

    def train_loss(theta: Any, phi: Any, batch: tuple, step: int) -> torch.Tensor:
        x, y, s, progress = batch
        g = torch.Generator().manual_seed(s)
        return commentary.loss(phi, lambda z: fn(theta, z), x, y, progress, g)

    return train_loss


def meta_gradient(
    commentary: AbstractCommentary,
    fn: Callable[..., torch.Tensor],
    theta: dict[str, torch.Tensor],
    batches: list[tuple],
    val_batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: ig.AbstractOptimizer,
    adjoint: ig.AbstractAdjoint,
    optimizer_state: Any = None,
    data_parallel: ig.DataParallel | None = None,
) -> tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor], Any]:
    """One meta-step of any schedule: train the student `fn` from `theta` on `batches`
    (`(x, y, seed, progress)` each) with [`ig.minimize`][implicitgrad.minimize], and
    differentiate its validation cross-entropy on `val_batch` with respect to the
    commentary's parameters through `adjoint`. With `data_parallel` the batches are this
    process's slices; the returned loss and hypergradient are the global ones.

    **Returns:**

    `(validation loss, hypergradient keyed like commentary.phi(), trained student
    (detached), optimizer state after training (detached))`.
    """
    phi = {k: v.detach().requires_grad_(True) for k, v in commentary.phi().items()}
    theta_n, info = ig.minimize(
        _train_loss(commentary, fn),
        theta,
        phi,
        batches,
        optimizer,
        adjoint=adjoint,
        optimizer_state=optimizer_state,
        return_info=True,
        data_parallel=data_parallel,
    )
    xv, yv = val_batch[:2]
    loss = F.cross_entropy(fn(theta_n, commentary.student_inputs(phi, xv)), yv)
    if len(val_batch) > 2:  # a process's slice of unequal size: its share of the mean
        loss = loss * val_batch[2]
    grads = torch.autograd.grad(loss, list(phi.values()), allow_unused=True)
    hg = {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(phi.items(), grads)}
    if data_parallel is not None:
        loss, hg = _global(data_parallel, loss.detach(), phi, hg)
    trained = {k: v.detach() for k, v in theta_n.items()}
    state = torch.utils._pytree.tree_map(
        lambda x: x.detach() if isinstance(x, torch.Tensor) else x, info.state
    )
    return float(loss.detach()), hg, trained, state


def unrolled_hypergrad(
    commentary: AbstractCommentary,
    fn: Callable[..., torch.Tensor],
    theta0: dict[str, torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor, int]],
    optimizer: Any,
    val: Split,
) -> tuple[float, dict[str, torch.Tensor]]:
    """Algorithm 1 for one meta-step: $\\mathrm{d}L_V(\\theta_N(\\phi))/\\mathrm{d}\\phi$.

    Trains the student `fn` from `theta0` for one step per batch `(x, y, seed)` with
    `optimizer` (an `ig.AbstractOptimizer`), differentiating through the steps
    ([`ig.UnrollAdjoint`][implicitgrad.UnrollAdjoint]), and differentiates the validation
    cross-entropy on `val` back to the commentary's parameters.

    **Returns:**

    `(validation loss, hypergradient)`, the hypergradient keyed like `commentary.phi()`.
    """
    n = len(batches)
    batches = [(x, y, s, k / n) for k, (x, y, s) in enumerate(batches)]
    loss, hg, _, _ = meta_gradient(
        commentary, fn, theta0, batches, (val.x, val.y), optimizer, ig.UnrollAdjoint()
    )
    return loss, hg


def _global(
    dp: ig.DataParallel, loss: torch.Tensor, phi: dict[str, torch.Tensor], hg: dict
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean validation loss over processes and the global hypergradient."""
    import torch.distributed as dist

    for name, p in phi.items():
        p.grad = hg[name]
    dp.reduce_grads(phi)
    loss = loss.clone()
    dist.all_reduce(loss, group=dp.group)
    return loss / dp.world_size, {k: p.grad for k, p in phi.items()}


def _shard(dp: ig.DataParallel, batches: list[tuple], val_batch: tuple) -> tuple[list, tuple]:
    """This process's contiguous slice of every global batch; the validation slice
    carries its weight $W n_r / n$ when the slices are unequal."""
    import torch.distributed as dist

    world, rank = dp.world_size, dist.get_rank(dp.group)
    mine = []
    for x, y, *rest in batches:
        if x.shape[0] % world:
            raise InputError(
                f"`learn(data_parallel=...)`: a training batch of {x.shape[0]} examples "
                f"cannot be split evenly over {world} processes. Choose a batch size "
                f"divisible by {world}."
            )
        mine.append((x.tensor_split(world)[rank], y.tensor_split(world)[rank], *rest))
    xv, yv = val_batch
    xs, ys = xv.tensor_split(world)[rank], yv.tensor_split(world)[rank]
    if xv.shape[0] % world:
        return mine, (xs, ys, world * xs.shape[0] / xv.shape[0])
    return mine, (xs, ys)


class _Student:
    """The student of a `learn` run across meta-steps: the seed it was initialized with,
    the function and initial parameters of that initialization, and the parameters and
    optimizer state the next meta-step continues from."""

    def __init__(
        self,
        commentary: AbstractCommentary,
        data: Dataset,
        method: Schedule,
        arch: str,
        batch_size: int,
        seed: int,
        gen: torch.Generator,
        data_parallel: ig.DataParallel | None = None,
    ) -> None:
        self.commentary, self.data, self.method, self.arch = commentary, data, method, arch
        self.batch_size, self.seed, self.gen = batch_size, seed, gen
        self.data_parallel = data_parallel
        self.optimizer, self.adjoint = method.make_optimizer(), method.adjoint
        self.init_seed: int | None = None
        self.theta: dict[str, torch.Tensor] | None = None
        self.opt: Any = None

    def _initialize(self, seed: int) -> None:
        student = make_student(self.arch, self.data.spec, seed=seed).to(self.data.device)
        self.fn, theta0 = ig.make_functional(student, detach=True)
        self.theta0 = {k: v.detach() for k, v in theta0.items()}
        self.init_seed = seed

    def __call__(self, meta_step: int) -> tuple[float, dict]:
        restart = self.method.restart(meta_step, self.seed)
        if restart is not None:
            if restart != self.init_seed:
                self._initialize(restart)
            self.theta, self.opt = self.theta0, None
        method = self.method
        batches, val_batch = method.draw(
            self.data, self.batch_size, self.gen, method.position(meta_step)
        )
        if self.data_parallel is not None:
            batches, val_batch = _shard(self.data_parallel, batches, val_batch)
        val, hg, self.theta, self.opt = meta_gradient(
            self.commentary,
            self.fn,
            self.theta,
            batches,
            val_batch,
            self.optimizer,
            self.adjoint,
            self.opt,
            self.data_parallel,
        )
        return val, hg

    def state(self) -> dict[str, Any] | None:
        """`{"seed", "theta", "optimizer"}` on the CPU, or `None` before the first step."""
        if self.init_seed is None:
            return None
        return {
            "seed": self.init_seed,
            "theta": _to_cpu(self.theta),
            "optimizer": _to_cpu(self.opt),
        }

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        # The initialization is rebuilt from its seed: the schedule may restart from it.
        self._initialize(int(state["seed"]))
        device = self.data.device
        self.theta = to_device(state["theta"], device)
        self.opt = to_device(state["optimizer"], device)


def _to_cpu(tree: Any) -> Any:
    return torch.utils._pytree.tree_map(
        lambda t: t.detach().to("cpu", copy=True) if isinstance(t, torch.Tensor) else t, tree
    )

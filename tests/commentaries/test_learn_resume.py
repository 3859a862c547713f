"""A `learn` run checkpointed at step k and resumed from the saved `LearnState` in a
freshly built commentary equals the run that was never interrupted, bitwise (same machine,
same process): the commentary's parameters, the whole history (`seconds` aside) and
torch's global generator afterwards.

Covered: `Implicit` (the student persists across meta-steps; checkpoints before, at and
after a re-initialization), `Unroll` (SGD and Adam students, whose optimizer states are
stored as trees of named tuples), every built-in commentary, and a run whose CG solves
fail on a non-convex student, so that some meta-steps are skipped. Also: the save/load
round trip, damaged state folders (one `CheckpointError` line each), when the checkpoint
callback is called, and every invalid argument.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from commentary_helpers import make_tiny
from implicitgrad_commentaries import (
    AbstractCommentary,
    BlendingCommentary,
    MaskCommentary,
    WeightingCommentary,
)
from implicitgrad_commentaries.checkpoint import CheckpointError
from implicitgrad_commentaries.learning import Implicit, LearnHistory, LearnState, Unroll, learn

import implicitgrad as ig
from implicitgrad import InputError

DATA = make_tiny(n=24, shape=(1, 6, 6), classes=3, seed=3)


class _GlobalNoiseBlending(BlendingCommentary):
    """Blending whose loss is scaled by noise from torch's global generator (not the
    per-batch one the contract asks for): a resumed run must restore that generator."""

    def loss(self, phi, student, x, y, progress, generator=None):
        noise = 1 + 0.1 * torch.rand(())
        return noise * super().loss(phi, student, x, y, progress, generator)


BUILDERS: dict[str, Callable[[], AbstractCommentary]] = {
    "blending": lambda: BlendingCommentary(DATA.spec),
    "weighting": lambda: WeightingCommentary(DATA.spec, teacher="mlp", hidden=4),
    "masks": lambda: MaskCommentary(DATA.spec, width=2, init_sigma=3.0),
    "global-noise": lambda: _GlobalNoiseBlending(DATA.spec),
}


class _Interrupted(Exception):
    pass


def _build(kind: str, torch_seed: int) -> AbstractCommentary:
    torch.manual_seed(torch_seed)
    return BUILDERS[kind]()


def _history(history: LearnHistory) -> dict:
    """Every field but `seconds`, floats as exact hexadecimal strings (NaN included)."""
    out = history.to_json()
    out.pop("seconds")
    for key in ("val_loss", "hypergrad_norm"):
        out[key] = [float(v).hex() for v in out[key]]
    return out


def _assert_same_commentary(a: AbstractCommentary, b: AbstractCommentary) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def _check_resume_is_exact(
    kind: str, method: object, steps: int, k: int, folder: Path, **kw
) -> LearnHistory:
    """Run `steps` meta-steps straight; run them again, saving the state at step `k` and
    stopping there; resume from the saved folder in a commentary built with another seed
    (and another global generator state); compare."""
    reference = _build(kind, torch_seed=0)
    torch.manual_seed(100)
    full = learn(reference, DATA, method, steps=steps, **kw)
    rng_after = torch.get_rng_state()

    def save_and_stop(state: LearnState) -> None:
        state.save(folder)
        if state.step == k:
            raise _Interrupted

    interrupted = _build(kind, torch_seed=0)
    torch.manual_seed(100)
    with pytest.raises(_Interrupted):
        learn(
            interrupted,
            DATA,
            method,
            steps=steps,
            checkpoint=save_and_stop,
            checkpoint_every=k,
            **kw,
        )

    fresh = _build(kind, torch_seed=1)
    with torch.no_grad():  # some commentaries start from a constant: make sure it differs
        for p in fresh.parameters():
            p.add_(0.25)
    torch.manual_seed(7)
    state = LearnState.load(folder)
    assert state.step == k
    resumed = learn(fresh, DATA, method, steps=steps, resume=state, **kw)
    _assert_same_commentary(fresh, reference)
    assert _history(resumed) == _history(full)
    assert torch.equal(torch.get_rng_state(), rng_after)
    return full


# --------------------------------------------------------------------------------------------
# Exactness.


@pytest.mark.parametrize(
    "k",
    [2, 3, 4],
    ids=["before-reinit", "at-reinit", "after-reinit"],
)
def test_implicit_resumes_exactly_with_a_persistent_student(k: int, tmp_path: Path) -> None:
    # The student is re-initialized before meta-steps 0, 3 and 6: k = 2 saves a student in
    # the middle of its first run, k = 3 just before a restart, k = 4 one step into its
    # second run; every resumed part crosses a re-initialization.
    method = Implicit(student_steps=3)
    _check_resume_is_exact(
        "weighting", method, 7, k, tmp_path / "state", student="mlp", batch_size=8
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_unroll_resumes_exactly(optimizer: str, tmp_path: Path) -> None:
    method = Unroll(inner_steps=3, optimizer=optimizer)
    _check_resume_is_exact(
        "weighting", method, 4, 2, tmp_path / "state", student="linear", batch_size=8
    )


@pytest.mark.parametrize("kind", ["blending", "masks", "weighting"])
def test_every_builtin_commentary_resumes_exactly(kind: str, tmp_path: Path) -> None:
    # Each commentary's default schedule (blending and masks draw random permutations,
    # blending weights or mask centres from the per-batch generators).
    _check_resume_is_exact(
        kind, Implicit(student_steps=4), 5, 2, tmp_path / "state", student="linear", batch_size=8
    )


def test_global_random_numbers_are_restored(tmp_path: Path) -> None:
    _check_resume_is_exact(
        "global-noise",
        Implicit(student_steps=10),
        4,
        2,
        tmp_path / "state",
        student="linear",
        batch_size=8,
    )


def test_a_run_with_skipped_steps_resumes_exactly(tmp_path: Path) -> None:
    # CG with too little damping for the indefinite curvature of an MLP student breaks
    # down on most meta-steps of this problem (the first two succeed): those are skipped,
    # NaN in the history; the state at k = 3 holds one skipped step and its error.
    method = Implicit(solver=ig.CG(max_iter=20, damping=1.0), student_lr=0.5, student_steps=20)
    full = _check_resume_is_exact(
        "blending", method, 6, 3, tmp_path / "state", student="mlp", batch_size=8
    )
    assert 0 < full.skipped < 6 and full.first_error, "the run should skip some steps"


# --------------------------------------------------------------------------------------------
# The state and its folder.


def _states(steps: int = 5, every: int = 2, **kw) -> list[LearnState]:
    states: list[LearnState] = []
    learn(
        _build("blending", 0),
        DATA,
        Unroll(inner_steps=2, optimizer="adam"),
        steps=steps,
        student="linear",
        batch_size=8,
        checkpoint=states.append,
        checkpoint_every=every,
        **kw,
    )
    return states


def _same_tree(a, b) -> bool:
    la, sa = torch.utils._pytree.tree_flatten(a)
    lb, sb = torch.utils._pytree.tree_flatten(b)
    if sa != sb:
        return False
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(la, lb))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    state = _states(settings={"lr": 0.1, "flags": ["a", "b"], "none": None})[0]
    folder = state.save(tmp_path / "run.resume")
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.pt"]
    meta = json.loads((folder / "state.json").read_text())
    assert meta["step"] == 2 and meta["settings"] == state.settings
    loaded = LearnState.load(folder, device="cpu")
    assert loaded.step == state.step == 2
    assert _history(loaded.history) == _history(state.history)
    assert loaded.history.seconds == state.history.seconds
    assert loaded.settings == {"lr": 0.1, "flags": ["a", "b"], "none": None}
    assert loaded.run == state.run and loaded.run["seed"] == 0
    assert isinstance(loaded.student["optimizer"], ig.AdamState)
    for name in ("commentary", "meta_optimizer", "batches", "rng", "student"):
        assert _same_tree(getattr(loaded, name), getattr(state, name)), name
    # weights_only loading reads the file: plain containers only.
    raw = torch.load(folder / "state.pt", weights_only=True)
    assert raw["step"] == 2


def test_saving_again_replaces_the_folder(tmp_path: Path) -> None:
    first, second = _states()
    folder = tmp_path / "run.resume"
    first.save(folder)
    second.save(folder)
    assert LearnState.load(folder).step == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.resume"]


def test_the_callback_gets_states_at_every_kth_step() -> None:
    states = _states(steps=7, every=3)
    assert [s.step for s in states] == [3, 6]
    assert [len(s.history.val_loss) for s in states] == [3, 6]
    # Each state is a snapshot, not a view of the running loop.
    assert not torch.equal(states[0].commentary["matrix"], states[1].commentary["matrix"])
    # A resumed run goes on counting from the state's step.
    later: list[LearnState] = []
    learn(
        _build("blending", 1),
        DATA,
        Unroll(inner_steps=2, optimizer="adam"),
        steps=10,
        student="linear",
        batch_size=8,
        resume=states[0],
        checkpoint=later.append,
        checkpoint_every=3,
    )
    assert [s.step for s in later] == [6, 9]
    assert _history(later[0].history) == _history(states[1].history)


def test_no_state_after_the_step_that_diverged() -> None:
    states: list[LearnState] = []
    history = learn(
        _build("blending", 0),
        DATA,
        Unroll(inner_steps=2, student_lr=1e38),
        steps=3,
        student="linear",
        batch_size=8,
        checkpoint=states.append,
        checkpoint_every=1,
    )
    assert history.diverged_at == 0 and states == []


def test_checkpoint_every_zero_never_calls() -> None:
    calls: list[LearnState] = []
    learn(
        _build("blending", 0),
        DATA,
        "ift",
        steps=3,
        student="linear",
        batch_size=8,
        checkpoint=calls.append,
        checkpoint_every=0,
    )
    assert calls == []


def _flip(name: str) -> Callable[[Path], None]:
    def flip(folder: Path) -> None:
        raw = bytearray((folder / name).read_bytes())
        raw[len(raw) // 2] ^= 0x04
        (folder / name).write_bytes(bytes(raw))

    return flip


def _truncate(folder: Path) -> None:
    raw = (folder / "state.pt").read_bytes()
    (folder / "state.pt").write_bytes(raw[: len(raw) // 3])


def _edit_meta(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "state.json").read_text())
        change(meta)
        (folder / "state.json").write_text(json.dumps(meta))

    return edit


def _replace_payload(payload: object) -> Callable[[Path], None]:
    """A readable `state.pt` with a matching checksum that holds something else."""

    def replace(folder: Path) -> None:
        torch.save(payload, folder / "state.pt")
        _rechecksum(folder)

    return replace


def _replace_payload_field(name: str, value: object) -> Callable[[Path], None]:
    def replace(folder: Path) -> None:
        payload = torch.load(folder / "state.pt", weights_only=True)
        payload[name] = value
        _replace_payload(payload)(folder)

    return replace


def _rechecksum(folder: Path) -> None:
    digest = hashlib.sha256((folder / "state.pt").read_bytes()).hexdigest()
    _edit_meta(lambda m: m.update(state_sha256=digest))(folder)


def _truncate_with_checksum(folder: Path) -> None:
    _truncate(folder)
    _rechecksum(folder)


DAMAGE = {
    "truncated state.pt": (_truncate, "does not match the checksum"),
    "bit-flipped state.pt": (_flip("state.pt"), "does not match the checksum"),
    "bit-flipped state.json": (_flip("state.json"), "state.json"),
    "empty state.pt": (lambda f: (f / "state.pt").write_bytes(b""), "state.pt is empty"),
    "missing state.pt": (lambda f: (f / "state.pt").unlink(), "state.pt is missing"),
    "missing state.json": (lambda f: (f / "state.json").unlink(), "no state.json"),
    "invalid json": (lambda f: (f / "state.json").write_text("{oops"), "is not valid JSON"),
    "json list": (lambda f: (f / "state.json").write_text("[]"), "not an object"),
    "unknown format": (_edit_meta(lambda m: m.update(format=99)), "format 99"),
    "json step edited": (_edit_meta(lambda m: m.update(step=1)), "'step' of state.json"),
    "settings edited": (
        _edit_meta(lambda m: m.update(settings={"x": 1})),
        "'settings' of state.json",
    ),
    "truncated, checksum recomputed": (_truncate_with_checksum, "state.pt cannot be read"),
    "another kind of file": (_replace_payload({"a": 1}), "does not hold a learn state"),
    "a generator state edited": (
        _replace_payload_field("batches", torch.zeros(3)),
        "batches is not a generator state",
    ),
    "a student tree of another type": (
        _replace_payload_field("student", {"__tree__": "namedtuple:os:getcwd", "items": []}),
        "os.getcwd is not a named tuple",
    ),
    "a student tree naming a module not loaded": (
        _replace_payload_field(
            "student", {"__tree__": "namedtuple:antigravity:Thing", "items": []}
        ),
        "antigravity.Thing is not loaded",
    ),
    "a commentary's weights": (
        _replace_payload({"matrix": torch.zeros(3, 3)}),
        "does not hold a learn state",
    ),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _states()[0].save(tmp_path_factory.mktemp("saved") / "run.resume")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_state_is_one_checkpoint_error(damage: str, saved: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run.resume"
    shutil.copytree(saved, folder)
    change, words = DAMAGE[damage]
    change(folder)
    with pytest.raises(CheckpointError) as excinfo:
        LearnState.load(folder)
    message = str(excinfo.value)
    assert "\n" not in message and str(folder) in message, message
    assert words in message, message
    assert "start it again without resuming" in message or "Pass" in message, message
    assert "antigravity" not in sys.modules  # a state file never imports a module


@pytest.mark.parametrize("where", ["nowhere", "a-file"])
def test_a_missing_state_folder_is_one_checkpoint_error(where: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CheckpointError, match="learn state folder .* Pass a folder written"):
        LearnState.load(tmp_path / where)


# --------------------------------------------------------------------------------------------
# Invalid arguments.


def _learn(**kw) -> LearnHistory:
    args = dict(steps=4, student="linear", batch_size=8)
    return learn(
        _build("blending", 0), DATA, Unroll(inner_steps=2, optimizer="adam"), **(args | kw)
    )


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(checkpoint_every=-1), "learn(checkpoint_every=...)` must be >= 0"),
        (dict(checkpoint_every=True, checkpoint=print), "must be an int >= 0 (0: never), got True"),
        (dict(checkpoint_every=2.0, checkpoint=print), "must be an int >= 0 (0: never), got 2.0"),
        (dict(checkpoint_every=2), "learn(checkpoint_every=2)` needs `checkpoint=`"),
        (dict(checkpoint="folder", checkpoint_every=2), "learn(checkpoint=...)` must be a func"),
        (dict(resume="folder"), "learn(resume=...)` must be a LearnState"),
        (dict(settings=["a"]), "learn(settings=...)` must be a dict"),
        (dict(settings={"x": object()}), "learn(settings=...)` must be JSON-serializable"),
        (dict(settings={"x": float("nan")}), "learn(settings=...)` must be JSON-serializable"),
    ],
)
def test_invalid_arguments_are_input_errors(kw: dict, words: str) -> None:
    with pytest.raises(InputError) as excinfo:
        _learn(**kw)
    assert words in str(excinfo.value) and "\n" not in str(excinfo.value)


@pytest.fixture(scope="module")
def state_at_2() -> LearnState:
    return _states()[0]


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(seed=1), "seed 0 (saved) vs 1 (this call)"),
        (dict(batch_size=4), "batch_size 8 (saved) vs 4 (this call)"),
        (dict(student="mlp"), "student 'linear' (saved) vs 'mlp' (this call)"),
        (dict(meta_lr=1e-3), "meta_lr 0.05 (saved) vs 0.001 (this call)"),
        (dict(method=Unroll(inner_steps=3, optimizer="adam")), "method Unroll(inner_steps=2"),
        (dict(method="ift"), "(saved) vs Implicit(solver=None"),
        (dict(steps=2), "has already completed 2 meta-steps. Pass steps > 2"),
    ],
)
def test_resuming_another_run_is_an_input_error(
    kw: dict, words: str, state_at_2: LearnState
) -> None:
    method = kw.pop("method", Unroll(inner_steps=2, optimizer="adam"))
    args = dict(steps=4, student="linear", batch_size=8) | kw
    with pytest.raises(InputError) as excinfo:
        learn(_build("blending", 0), DATA, method, resume=state_at_2, **args)
    message = str(excinfo.value)
    assert "learn(resume=" in message and words in message and "\n" not in message, message


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (
            lambda: BlendingCommentary(DATA.spec, init=0.5),
            r"config \{'init': -1.0, .*\} \(saved\) vs",
        ),
        (lambda: _build("weighting", 0), r"commentary 'blending' \(saved\) vs 'weighting'"),
    ],
    ids=["config", "plugin"],
)
def test_resuming_with_another_commentary_is_an_input_error(
    build: Callable[[], AbstractCommentary], words: str, state_at_2: LearnState
) -> None:
    with pytest.raises(InputError, match=words):
        learn(
            build(),
            DATA,
            Unroll(inner_steps=2, optimizer="adam"),
            steps=4,
            student="linear",
            batch_size=8,
            resume=state_at_2,
        )


def test_the_state_holds_the_settings(state_at_2: LearnState) -> None:
    states = _states(settings={"steps": 4, "solver": "cg"})
    assert [s.settings for s in states] == [{"steps": 4, "solver": "cg"}] * 2
    assert state_at_2.settings == {}


def test_no_state_after_the_last_meta_step() -> None:
    # A state at the end could only be resumed to do nothing; the caller saves the result.
    assert [s.step for s in _states(steps=6, every=3)] == [3]

"""Learning a commentary (Algorithms 1 and 2) and resuming an interrupted run, reusing it
on fresh students, saving and loading it, and choosing the device."""

from .checkpoint import CheckpointError as CheckpointError
from .checkpoint import load_commentary as load_commentary
from .checkpoint import save_commentary as save_commentary
from .device import resolve_device as resolve_device
from .learner import Implicit as Implicit
from .learner import LearnHistory as LearnHistory
from .learner import Schedule as Schedule
from .learner import Unroll as Unroll
from .learner import learn as learn
from .learner import meta_gradient as meta_gradient
from .reuse import TrainConfig as TrainConfig
from .reuse import TrainResult as TrainResult
from .reuse import train_student as train_student
from .state import LearnState as LearnState

__all__ = [
    "CheckpointError",
    "load_commentary",
    "save_commentary",
    "resolve_device",
    "Implicit",
    "Schedule",
    "meta_gradient",
    "LearnHistory",
    "LearnState",
    "Unroll",
    "learn",
    "TrainConfig",
    "TrainResult",
    "train_student",
]

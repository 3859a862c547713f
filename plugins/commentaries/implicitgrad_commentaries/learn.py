"""Learning a commentary (old path of `learning.learner`)."""

from .learning.learner import METHODS as METHODS
from .learning.learner import Implicit as Implicit
from .learning.learner import LearnHistory as LearnHistory
from .learning.learner import Schedule as Schedule
from .learning.learner import Unroll as Unroll
from .learning.learner import learn as learn
from .learning.learner import losses as losses
from .learning.learner import meta_gradient as meta_gradient
from .learning.learner import unrolled_hypergrad as unrolled_hypergrad

__all__ = [
    "Unroll",
    "Implicit",
    "Schedule",
    "meta_gradient",
    "LearnHistory",
    "learn",
    "losses",
    "unrolled_hypergrad",
    "METHODS",
]

"""*Teaching with Commentaries* (Raghu et al., ICLR 2021) as implicitgrad plugins.

A commentary is learned meta-information that changes how a student trains. This package
provides the commentary contract
([`AbstractCommentary`][implicitgrad_commentaries.AbstractCommentary]),
two commentaries registered as implicitgrad plugins (`weighting`, `blending`), a learner
for their parameters (Algorithm 1 through `implicitgrad.unroll`, Algorithm 2 through
`implicitgrad.hypergrad` with any solver), a trainer that reuses a learned commentary on
fresh students, datasets, and the `commentaries` command line.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._base import AbstractCommentary as AbstractCommentary
from ._base import DataSpec as DataSpec
from .blending import BlendingCommentary as BlendingCommentary
from .checkpoint import load_commentary as load_commentary
from .checkpoint import save_commentary as save_commentary
from .learn import Implicit as Implicit
from .learn import LearnHistory as LearnHistory
from .learn import Unroll as Unroll
from .learn import learn as learn
from .masks import MaskCommentary as MaskCommentary
from .train import TrainConfig as TrainConfig
from .train import train_student as train_student
from .weighting import WeightingCommentary as WeightingCommentary

try:
    __version__ = _version("implicitgrad-commentaries")
except _PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "AbstractCommentary",
    "DataSpec",
    "WeightingCommentary",
    "BlendingCommentary",
    "MaskCommentary",
    "learn",
    "Unroll",
    "Implicit",
    "LearnHistory",
    "train_student",
    "TrainConfig",
    "save_commentary",
    "load_commentary",
]

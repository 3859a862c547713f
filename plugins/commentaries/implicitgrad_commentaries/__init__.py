"""*Teaching with Commentaries* (Raghu et al., ICLR 2021) as implicitgrad plugins.

A commentary is learned meta-information that changes how a student trains. The package
has five parts: `commentaries` (the contract and the built-in plugins), `datasets` (data
sets and readers), `learning` (learning, reusing, saving and loading a commentary),
`fewshot` (MAML, iMAML and their example-weighting teacher) and `cli` (the command
line). It provides the commentary contract
([`AbstractCommentary`][implicitgrad_commentaries.AbstractCommentary]),
three commentaries registered as implicitgrad plugins (`weighting`, `blending`, `masks`),
a learner for their parameters (Algorithm 1 through `implicitgrad.unroll`, Algorithm 2
through `implicitgrad.hypergrad` with any solver), a trainer that reuses a learned commentary on
fresh students, datasets, and the `commentaries` command line.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .commentaries.base import AbstractCommentary as AbstractCommentary
from .commentaries.base import DataSpec as DataSpec
from .commentaries.blending import BlendingCommentary as BlendingCommentary
from .commentaries.masks import MaskCommentary as MaskCommentary
from .commentaries.mixup import Mixup as Mixup
from .commentaries.weighting import WeightingCommentary as WeightingCommentary
from .datasets.episodes import ClassSplit as ClassSplit
from .datasets.episodes import EpisodicDataset as EpisodicDataset
from .datasets.episodes import Task as Task
from .datasets.episodes import TaskSampler as TaskSampler
from .datasets.fewshot import FEWSHOT_DATASETS as FEWSHOT_DATASETS
from .datasets.fewshot import load_fewshot_dataset as load_fewshot_dataset
from .datasets.fewshot import load_fewshot_digits as load_fewshot_digits
from .datasets.fewshot_readers import read_miniimagenet_pickle as read_miniimagenet_pickle
from .datasets.fewshot_readers import read_omniglot_folder as read_omniglot_folder
from .datasets.glyphs import make_glyphs as make_glyphs
from .fewshot import IMAML as IMAML
from .fewshot import MAML as MAML
from .fewshot import AbstractMetaLearner as AbstractMetaLearner
from .fewshot import Accuracy as Accuracy
from .fewshot import FewShotModel as FewShotModel
from .fewshot import FewShotNet as FewShotNet
from .fewshot import MetaHistory as MetaHistory
from .fewshot import Scratch as Scratch
from .fewshot import TaskBatch as TaskBatch
from .fewshot import evaluate as evaluate
from .fewshot import first_order as first_order
from .fewshot import load_fewshot as load_fewshot
from .fewshot import make_model as make_model
from .fewshot import make_teacher as make_teacher
from .fewshot import meta_train as meta_train
from .fewshot import save_fewshot as save_fewshot

# The module `learn` is imported before the function of that name is bound here, so that
# a later `import implicitgrad_commentaries.learn` does not replace the function.
from .learn import learn as learn  # noqa: E402, I001
from .learning.checkpoint import load_commentary as load_commentary
from .learning.checkpoint import save_commentary as save_commentary
from .learning.learner import Implicit as Implicit
from .learning.learner import LearnHistory as LearnHistory
from .learning.learner import Schedule as Schedule
from .learning.learner import Unroll as Unroll
from .learning.learner import meta_gradient as meta_gradient
from .learning.reuse import TrainConfig as TrainConfig
from .learning.reuse import train_student as train_student
from .learning.state import LearnState as LearnState

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
    "Mixup",
    "learn",
    "Unroll",
    "Implicit",
    "Schedule",
    "meta_gradient",
    "LearnHistory",
    "LearnState",
    "train_student",
    "TrainConfig",
    "save_commentary",
    "load_commentary",
    "Task",
    "ClassSplit",
    "EpisodicDataset",
    "TaskSampler",
    "FEWSHOT_DATASETS",
    "load_fewshot_dataset",
    "load_fewshot_digits",
    "make_glyphs",
    "read_miniimagenet_pickle",
    "read_omniglot_folder",
    "AbstractMetaLearner",
    "MAML",
    "IMAML",
    "Scratch",
    "first_order",
    "FewShotNet",
    "FewShotModel",
    "make_model",
    "TaskBatch",
    "make_teacher",
    "meta_train",
    "MetaHistory",
    "evaluate",
    "Accuracy",
    "save_fewshot",
    "load_fewshot",
]

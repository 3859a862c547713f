"""Few-shot learning with commentaries: MAML, MAML with an example-weighting teacher, iMAML.

Every inner loop runs through the core: MAML differentiates its SGD steps with
`ig.UnrollAdjoint` (second order, or first order through
[`first_order`][implicitgrad_commentaries.first_order]), iMAML differentiates the
stationarity of its proximally regularized inner problem with `ig.ImplicitAdjoint` and any
solver. The teacher is the plugin's `WeightingCommentary` over a task's labels.
"""

from .base import AbstractMetaLearner as AbstractMetaLearner
from .base import SupportLoss as SupportLoss
from .base import TaskBatch as TaskBatch
from .base import TaskLike as TaskLike
from .base import support_loss as support_loss
from .checkpoint import load_fewshot as load_fewshot
from .checkpoint import save_fewshot as save_fewshot
from .evaluation import Accuracy as Accuracy
from .evaluation import evaluate as evaluate
from .imaml import IMAML as IMAML
from .maml import MAML as MAML
from .maml import first_order as first_order
from .model import METHODS as METHODS
from .model import FewShotModel as FewShotModel
from .model import make_model as make_model
from .network import FewShotNet as FewShotNet
from .scratch import Scratch as Scratch
from .teacher import make_teacher as make_teacher
from .teacher import task_spec as task_spec
from .training import MetaHistory as MetaHistory
from .training import meta_train as meta_train

__all__ = [
    "AbstractMetaLearner",
    "TaskLike",
    "TaskBatch",
    "SupportLoss",
    "MAML",
    "IMAML",
    "Scratch",
    "first_order",
    "support_loss",
    "FewShotNet",
    "FewShotModel",
    "METHODS",
    "make_model",
    "make_teacher",
    "task_spec",
    "meta_train",
    "MetaHistory",
    "evaluate",
    "Accuracy",
    "save_fewshot",
    "load_fewshot",
]

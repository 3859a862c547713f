"""The commentaries: the contract, the three built-in plugins, the mixup baseline, their
student networks and the registry of installed plugins."""

from .base import AbstractCommentary as AbstractCommentary
from .base import DataSpec as DataSpec
from .base import Student as Student
from .blending import BlendingCommentary as BlendingCommentary
from .masks import MaskCommentary as MaskCommentary
from .mixup import Mixup as Mixup
from .weighting import WeightingCommentary as WeightingCommentary

__all__ = [
    "AbstractCommentary",
    "DataSpec",
    "Student",
    "BlendingCommentary",
    "MaskCommentary",
    "Mixup",
    "WeightingCommentary",
]

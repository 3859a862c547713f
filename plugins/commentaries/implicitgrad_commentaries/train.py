"""Reusing a commentary on fresh students (old path of `learning.reuse`)."""

from .learning.reuse import TrainConfig as TrainConfig
from .learning.reuse import TrainResult as TrainResult
from .learning.reuse import accuracy as accuracy
from .learning.reuse import compare as compare
from .learning.reuse import format_table as format_table
from .learning.reuse import summarize as summarize
from .learning.reuse import train_student as train_student

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train_student",
    "compare",
    "accuracy",
    "format_table",
    "summarize",
]

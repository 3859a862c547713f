"""The commentary contract (old path of `commentaries.base`)."""

from .commentaries.base import AbstractCommentary as AbstractCommentary
from .commentaries.base import DataSpec as DataSpec
from .commentaries.base import Student as Student

__all__ = [
    "AbstractCommentary",
    "DataSpec",
    "Student",
]

"""Student networks by name (old path of `commentaries.students`)."""

from .commentaries.students import STUDENTS as STUDENTS
from .commentaries.students import ConvFeatures as ConvFeatures
from .commentaries.students import make_student as make_student

__all__ = [
    "STUDENTS",
    "make_student",
    "ConvFeatures",
]

"""Saving and loading commentaries (old path of `learning.checkpoint`)."""

from .learning.checkpoint import CheckpointError as CheckpointError
from .learning.checkpoint import atomic_write as atomic_write
from .learning.checkpoint import check_compatible as check_compatible
from .learning.checkpoint import load_commentary as load_commentary
from .learning.checkpoint import read_metadata as read_metadata
from .learning.checkpoint import recover as recover
from .learning.checkpoint import save_commentary as save_commentary
from .learning.checkpoint import versions as versions

__all__ = [
    "CheckpointError",
    "save_commentary",
    "load_commentary",
    "read_metadata",
    "check_compatible",
    "atomic_write",
    "versions",
    "recover",
]

"""Blending commentaries (old path of `commentaries.blending`)."""

from .commentaries.blending import BLENDING_MODES as BLENDING_MODES
from .commentaries.blending import BlendingCommentary as BlendingCommentary

__all__ = [
    "BlendingCommentary",
    "BLENDING_MODES",
]

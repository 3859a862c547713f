"""Weighting commentaries (old path of `commentaries.weighting`)."""

from .commentaries.weighting import WeightingCommentary as WeightingCommentary

__all__ = [
    "WeightingCommentary",
]

"""Attention-mask commentaries (old path of `commentaries.masks`)."""

from .commentaries.masks import MASK_MODES as MASK_MODES
from .commentaries.masks import MASK_TEACHERS as MASK_TEACHERS
from .commentaries.masks import MaskCommentary as MaskCommentary
from .commentaries.masks import centre_distance as centre_distance
from .commentaries.masks import plot_masks as plot_masks

__all__ = [
    "MaskCommentary",
    "MASK_TEACHERS",
    "MASK_MODES",
    "centre_distance",
    "plot_masks",
]

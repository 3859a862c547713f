"""Canvas tasks for attention masks (old path of `datasets.canvas`)."""

from .datasets.canvas import MASK_DATASETS as MASK_DATASETS
from .datasets.canvas import PlacedSplit as PlacedSplit
from .datasets.canvas import load_cluttered as load_cluttered
from .datasets.canvas import load_mask_dataset as load_mask_dataset
from .datasets.canvas import load_spurious as load_spurious

__all__ = [
    "PlacedSplit",
    "MASK_DATASETS",
    "load_cluttered",
    "load_spurious",
    "load_mask_dataset",
]

"""Data sets: fixed splits of scikit-learn's digits, tasks built from them, and readers for
local CIFAR and MNIST files. Nothing is downloaded."""

from .canvas import MASK_DATASETS as MASK_DATASETS
from .canvas import PlacedSplit as PlacedSplit
from .canvas import load_cluttered as load_cluttered
from .canvas import load_mask_dataset as load_mask_dataset
from .canvas import load_spurious as load_spurious
from .digits import load_binary_digits as load_binary_digits
from .digits import load_digits_dataset as load_digits_dataset
from .readers import read_cifar as read_cifar
from .readers import read_mnist as read_mnist
from .registry import DATASETS as DATASETS
from .registry import load_dataset as load_dataset
from .splits import Dataset as Dataset
from .splits import Split as Split

__all__ = [
    "Split",
    "Dataset",
    "DATASETS",
    "load_dataset",
    "load_digits_dataset",
    "load_binary_digits",
    "read_cifar",
    "read_mnist",
    "PlacedSplit",
    "MASK_DATASETS",
    "load_cluttered",
    "load_spurious",
    "load_mask_dataset",
]

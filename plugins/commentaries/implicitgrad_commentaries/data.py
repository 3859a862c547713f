"""Data sets by name (old path of the `datasets` subpackage)."""

from .datasets import DATASETS as DATASETS
from .datasets import Dataset as Dataset
from .datasets import Split as Split
from .datasets import load_binary_digits as load_binary_digits
from .datasets import load_dataset as load_dataset
from .datasets import load_digits_dataset as load_digits_dataset
from .datasets import read_cifar as read_cifar
from .datasets import read_mnist as read_mnist

__all__ = [
    "Split",
    "Dataset",
    "DATASETS",
    "load_dataset",
    "load_digits_dataset",
    "load_binary_digits",
    "read_cifar",
    "read_mnist",
]

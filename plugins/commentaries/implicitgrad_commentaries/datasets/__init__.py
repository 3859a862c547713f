"""Data sets: fixed splits of scikit-learn's digits, tasks built from them, and readers for
local CIFAR and MNIST files; few-shot tasks (digits' class split, the synthetic glyphs, and
MiniImageNet and Omniglot readers). Nothing is downloaded."""

from .canvas import MASK_DATASETS as MASK_DATASETS
from .canvas import PlacedSplit as PlacedSplit
from .canvas import load_cluttered as load_cluttered
from .canvas import load_mask_dataset as load_mask_dataset
from .canvas import load_spurious as load_spurious
from .digits import load_binary_digits as load_binary_digits
from .digits import load_digits_dataset as load_digits_dataset
from .digits import load_noisy_digits as load_noisy_digits
from .episodes import ClassSplit as ClassSplit
from .episodes import EpisodicDataset as EpisodicDataset
from .episodes import Task as Task
from .episodes import TaskSampler as TaskSampler
from .fewshot import DIGITS_CLASS_SPLIT as DIGITS_CLASS_SPLIT
from .fewshot import FEWSHOT_DATASETS as FEWSHOT_DATASETS
from .fewshot import load_fewshot_dataset as load_fewshot_dataset
from .fewshot import load_fewshot_digits as load_fewshot_digits
from .fewshot_readers import read_miniimagenet_pickle as read_miniimagenet_pickle
from .fewshot_readers import read_omniglot_folder as read_omniglot_folder
from .glyphs import make_glyphs as make_glyphs
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
    "load_noisy_digits",
    "read_cifar",
    "read_mnist",
    "PlacedSplit",
    "MASK_DATASETS",
    "load_cluttered",
    "load_spurious",
    "load_mask_dataset",
    "Task",
    "ClassSplit",
    "EpisodicDataset",
    "TaskSampler",
    "DIGITS_CLASS_SPLIT",
    "FEWSHOT_DATASETS",
    "load_fewshot_dataset",
    "load_fewshot_digits",
    "make_glyphs",
    "read_miniimagenet_pickle",
    "read_omniglot_folder",
]

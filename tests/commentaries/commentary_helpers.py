"""Builders shared by the commentary plugin tests."""

from __future__ import annotations

import torch
from implicitgrad_commentaries import DataSpec
from implicitgrad_commentaries.data import Dataset, Split


def make_tiny(
    n: int = 24,
    shape: tuple[int, ...] = (1, 8, 8),
    classes: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    name: str = "tiny",
) -> Dataset:
    """A random, learnable dataset: class means plus noise, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(classes, *shape, generator=gen, dtype=torch.float64)

    def split(size: int) -> Split:
        y = torch.arange(size) % classes
        x = means[y] + 0.2 * torch.randn(size, *shape, generator=gen, dtype=torch.float64)
        return Split(x.clamp(0, 1).to(dtype), y)

    spec = DataSpec(name, shape, tuple(f"c{i}" for i in range(classes)))
    return Dataset(spec, split(n), split(n // 2), split(n // 2))

"""Fixed train/validation/test splits: the containers every data set returns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from ..commentaries.base import DataSpec

__all__ = ["Split", "Dataset", "stratified_split"]


@dataclass(frozen=True)
class Split:
    """Inputs `x` (float32, `(n, *input_shape)`, in $[0, 1]$) and labels `y` (int64, `(n,)`).

    A split with injected label noise also records which labels were replaced, as two
    keyword-only fields (both `None` for a clean split):

    - `noisy`: bool `(n,)`, `True` where `y` is not the example's original label;
    - `clean_y`: int64 `(n,)`, the original labels (equal to `y` where `noisy` is `False`).
    """

    x: torch.Tensor
    y: torch.Tensor
    noisy: torch.Tensor | None = field(default=None, kw_only=True)
    clean_y: torch.Tensor | None = field(default=None, kw_only=True)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: str | torch.device) -> Split:
        """The same split with every tensor field on `device` (subclasses included)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


@dataclass(frozen=True)
class Dataset:
    """Fixed train/validation/test splits with their `DataSpec`."""

    spec: DataSpec
    train: Split
    val: Split
    test: Split

    @property
    def device(self) -> torch.device:
        """The device the inputs are on."""
        return self.train.x.device

    def to(self, device: str | torch.device) -> Dataset:
        """The same data set with every split on `device`."""
        device = torch.device(device)
        if device == self.device:
            return self
        return Dataset(self.spec, self.train.to(device), self.val.to(device), self.test.to(device))


def stratified_split(
    x: np.ndarray, y: np.ndarray, fractions: tuple[float, float], seed: int
) -> tuple[Split, Split, Split]:
    """Stratified, seeded split into train / validation / test."""
    from sklearn.model_selection import train_test_split

    val_frac, test_frac = fractions
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_frac, random_state=seed, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_frac / (1 - test_frac), random_state=seed + 1, stratify=y_rest
    )

    def make(a: np.ndarray, b: np.ndarray) -> Split:
        return Split(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.int64))

    return make(x_train, y_train), make(x_val, y_val), make(x_test, y_test)

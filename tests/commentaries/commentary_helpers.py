"""Builders shared by the commentary plugin tests."""

from __future__ import annotations

import re
from pathlib import Path

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


PLUGIN_SRC = Path(__file__).resolve().parents[2] / "plugins" / "commentaries"


def declared_entry_points() -> dict[str, str]:
    """The entry points plugins/commentaries/pyproject.toml declares (a small parser:
    tomllib needs Python 3.11)."""
    text = (PLUGIN_SRC / "pyproject.toml").read_text()
    section = text.split('[project.entry-points."implicitgrad.commentaries"]', 1)[1]
    section = section.split("\n[", 1)[0]
    return dict(re.findall(r'^(\w+)\s*=\s*"([^"]+)"', section, flags=re.MULTILINE))


def write_dist_info(where: Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    """What pip writes to register entry points: a `.dist-info` folder."""
    info = where / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[implicitgrad.commentaries]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")

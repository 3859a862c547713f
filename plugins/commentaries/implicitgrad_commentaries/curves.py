"""Learning curves of students trained with and without a commentary (matplotlib, Agg
backend; the `plots` extra)."""

from __future__ import annotations

import io
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from .learning.checkpoint import atomic_write
from .learning.reuse import TrainResult

__all__ = ["plot_learning_curves"]


def plot_learning_curves(
    results: Mapping[str, Sequence[TrainResult]], path: str | os.PathLike[str], *, title: str
) -> Path:
    """Write a PNG of test accuracy against training step, one line per condition.

    Each line is the mean over seeds of the students' test accuracy at every step they
    were tested ([`TrainResult.curve`][implicitgrad_commentaries.train.TrainResult]), with
    a band of ± one standard deviation over seeds (none for a single seed).

    **Arguments:**

    - `results`: condition → one result per seed, as `implicitgrad_commentaries.train.compare`
      returns them.
    - `path`: the PNG file to write, replaced as a whole (its folder is created).
    - `title`: the figure's title; name the commentary, the student and the dataset.

    **Returns:**

    `path`, as a `Path`.

    **Example:**

    ```python
    import tempfile
    from implicitgrad_commentaries.curves import plot_learning_curves
    from implicitgrad_commentaries.train import TrainResult

    seed0 = TrainResult({1.0: 0.9}, 0.9, curve={5: 0.6, 10: 0.9})
    seed1 = TrainResult({1.0: 0.8}, 0.8, curve={5: 0.5, 10: 0.8})
    path = tempfile.mkdtemp() + "/curves.png"
    png = plot_learning_curves({"baseline": [seed0, seed1]}, path, title="toy")
    assert png.stat().st_size > 0
    ```
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in results.items():
        steps = sorted(set.intersection(*(set(r.curve) for r in runs)))
        points = [[100 * r.curve[s] for r in runs] for s in steps]
        mean = [statistics.fmean(p) for p in points]
        std = [statistics.stdev(p) if len(p) > 1 else 0.0 for p in points]
        (line,) = ax.plot(steps, mean, marker="." if len(steps) < 30 else None, label=label)
        low = [m - s for m, s in zip(mean, std)]
        high = [m + s for m, s in zip(mean, std)]
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    seeds = max(len(runs) for runs in results.values())
    ax.set_xlabel("training step")
    ax.set_ylabel(f"test accuracy (%), mean ± std over {seeds} seed{'s' * (seeds > 1)}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, png.getvalue())
    return Path(path)

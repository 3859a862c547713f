"""What a few-shot teacher learned: support images sorted by their weight."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .base import TaskLike
from .model import FewShotModel

__all__ = ["plot_support_weights"]


def plot_support_weights(
    model: FewShotModel, tasks: Sequence[TaskLike], path: str | Path, *, progress: float = 0.0
) -> Path:
    """Draw the support images of `tasks`, one row per task, sorted by the teacher's weight.

    Each image is titled with its weight divided by the mean weight of its support set
    (what the normalized teacher multiplies its loss by) and its label; the lowest-weighted
    examples are on the left. Needs matplotlib (the `plots` extra).

    **Arguments:**

    - `model`: a model with a teacher.
    - `tasks`: a few tasks (four to six rows read well).
    - `path`: the PNG to write.
    - `progress`: the normalized inner step the teacher is asked about (default `0.0`, the
      first step).

    **Returns:**

    The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if model.teacher is None:
        raise ValueError(f"`plot_support_weights`: the {model.method!r} model has no teacher.")
    rows = []
    with torch.no_grad():
        for task in tasks:
            w = model.teacher(task.support_x, task.support_y, progress)
            w = w / w.mean()
            order = torch.argsort(w)
            rows.append((task.support_x[order].cpu(), task.support_y[order], w[order]))
    n = rows[0][0].shape[0]
    fig, axes = plt.subplots(
        len(rows), n, figsize=(max(n * 0.75, 4), len(rows) * 1.0), squeeze=False
    )
    for r, (x, y, w) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(x[c].mean(0).numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(f"{float(w[c]):.2f} (y={int(y[c])})", fontsize=6)
            ax.axis("off")
    fig.suptitle(
        f"{model.method} on {model.dataset}: support images sorted by weight / mean weight "
        f"(lowest left), inner step {progress:.0%}",
        fontsize=7,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path

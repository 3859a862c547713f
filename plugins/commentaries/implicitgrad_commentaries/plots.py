"""Plots of learned commentaries (matplotlib, Agg backend; the `plots` extra)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from .commentaries.base import AbstractCommentary  # noqa: E402
from .datasets.splits import Dataset  # noqa: E402

__all__ = [
    "plot_commentary",
    "plot_weights",
    "plot_blending",
    "difficulty",
    "weights_over_training",
]


def difficulty(data: Dataset) -> np.ndarray:
    """Per-training-example difficulty: one minus the probability a cross-validated
    logistic regression gives the true label (0 easy, 1 hard)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    x = data.train.x.reshape(len(data.train), -1).numpy()
    y = data.train.y.numpy()
    clf = LogisticRegression(max_iter=500, C=0.1)
    proba = cross_val_predict(clf, x, y, cv=3, method="predict_proba")
    return 1.0 - proba[np.arange(len(y)), y]


@torch.no_grad()
def weights_over_training(
    commentary: AbstractCommentary, data: Dataset, points: int = 21
) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's weight of every training example at `points` normalized iterations.

    **Returns:**

    `(t, w)` with `t` of shape `(points,)` and `w` of shape `(points, n_train)`.
    """
    commentary.eval()
    ts = np.linspace(0.0, 1.0, points)
    w = np.stack([commentary(data.train.x, data.train.y, float(t)).numpy() for t in ts])
    return ts, w


def plot_weights(commentary: AbstractCommentary, data: Dataset, out: Path) -> Path:
    """Write `weights.png`: a weighting commentary's mean weight over training, by class and
    by example difficulty."""
    ts, w = weights_over_training(commentary, data)
    y = data.train.y.numpy()
    hard = difficulty(data)
    edges = np.quantile(hard, [1 / 3, 2 / 3])
    groups = {
        "easy third": hard <= edges[0],
        "middle third": (hard > edges[0]) & (hard <= edges[1]),
        "hardest third": hard > edges[1],
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c, name in enumerate(commentary.spec.classes):
        axes[0].plot(ts, w[:, y == c].mean(1), label=f"class {name}")
    axes[0].set(xlabel="normalized training iteration t", ylabel="mean weight", title="by class")
    axes[0].legend(fontsize=7, ncol=2)
    for label, mask in groups.items():
        axes[1].plot(ts, w[:, mask].mean(1), label=label)
    axes[1].set(
        xlabel="normalized training iteration t",
        ylabel="mean weight",
        title="by difficulty (logistic-regression confidence)",
    )
    axes[1].legend()
    normalized = bool(getattr(commentary, "config", {}).get("normalize", False))
    loss = "normalized loss Σ w·CE / Σ w" if normalized else "paper's loss mean(w·CE)"
    fig.suptitle(f"Learned example weights on {commentary.spec.name}, {loss}")
    fig.tight_layout()
    path = out / "weights.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_blending(commentary: AbstractCommentary, out: Path) -> Path:
    """Write `blending.png`: a heat map of a blending commentary's share $1 - \\lambda$."""
    lam = commentary.proportions().numpy()  # type: ignore[operator]
    names = commentary.spec.classes
    share = 1.0 - lam
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(share, cmap="viridis")
    ax.set_xticks(range(len(names)), names, fontsize=12)
    ax.set_yticks(range(len(names)), names, fontsize=12)
    ax.set_xlabel("class of the blended-in example j", fontsize=12)
    ax.set_ylabel("class of example i", fontsize=12)
    ax.set_title(f"Learned blending share 1 − λ on {commentary.spec.name}", fontsize=13)
    if len(names) <= 12:
        # Dark text on the light end of viridis, white on the dark end.
        light = share > share.min() + 0.6 * (share.max() - share.min())
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(
                    j,
                    i,
                    f"{share[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=10,
                    color="black" if light[i, j] else "white",
                )
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.ax.tick_params(labelsize=11)
    fig.tight_layout()
    path = out / "blending.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_commentary(
    commentary: AbstractCommentary, data: Dataset, out: str | os.PathLike[str]
) -> list[Path]:
    """Write PNG plots of a learned commentary into the folder `out`.

    The commentary draws itself ([`plot`][implicitgrad_commentaries.AbstractCommentary.plot]),
    on the CPU:

    - weighting: the mean weight over training by class and by example difficulty
      (`weights.png`);
    - blending: a heatmap of the learned blending share $1 - \\lambda$ for every class
      pair, with class names (`blending.png`);
    - masks: test images with their masks overlaid (`masks.png`).

    A plugin that does not override `plot` gets no plots (an empty list).

    **Returns:**

    The paths written.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return commentary.to("cpu").plot(data.to("cpu"), folder)

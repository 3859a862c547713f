"""Plots of learned commentaries (matplotlib, Agg backend; the `plots` extra)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from implicitgrad import InputError  # noqa: E402

from .commentaries.base import AbstractCommentary  # noqa: E402
from .datasets.splits import Dataset  # noqa: E402

__all__ = [
    "plot_commentary",
    "plot_weights",
    "plot_weight_extremes",
    "plot_blending",
    "difficulty",
    "weights_over_training",
    "mean_weights",
    "has_label_noise",
    "NoiseDetection",
    "noise_detection",
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
    by example difficulty, and, when the training labels carry injected noise
    (`data.train.noisy`), for the mislabeled and the correctly labeled examples."""
    ts, w = weights_over_training(commentary, data)
    y = data.train.y.numpy()
    hard = difficulty(data)
    edges = np.quantile(hard, [1 / 3, 2 / 3])
    groups = {
        "easy third": hard <= edges[0],
        "middle third": (hard > edges[0]) & (hard <= edges[1]),
        "hardest third": hard > edges[1],
    }
    noisy = data.train.noisy if has_label_noise(data) else None
    panels = 2 if noisy is None else 3
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
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
    if noisy is not None:
        flipped = noisy.numpy()
        axes[2].plot(ts, w[:, flipped].mean(1), "r", label=f"mislabeled ({int(flipped.sum())})")
        axes[2].plot(ts, w[:, ~flipped].mean(1), "k", label=f"correct ({int((~flipped).sum())})")
        axes[2].set(
            xlabel="normalized training iteration t",
            ylabel="mean weight",
            title="by label: mislabeled or correct",
        )
        axes[2].legend()
    fig.suptitle(f"Learned example weights on {commentary.spec.name}, {_loss_name(commentary)}")
    fig.tight_layout()
    path = out / "weights.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _loss_name(commentary: AbstractCommentary) -> str:
    normalized = bool(getattr(commentary, "config", {}).get("normalize", False))
    return "normalized loss Σ w·CE / Σ w" if normalized else "paper's loss mean(w·CE)"


@dataclass(frozen=True)
class NoiseDetection:
    """How well low teacher weights single out the mislabeled training examples.

    **Fields:**

    - `k`: how many of the lowest-weighted examples were counted.
    - `lowest_mislabeled`: how many of those `k` are mislabeled.
    - `expected`: how many a random choice of `k` would hold, `k` × the noise rate.
    - `mislabeled`: how many training examples are mislabeled in all.
    - `precision`: the fraction mislabeled among the `mislabeled` lowest-weighted examples
      (at that cut-off, precision and recall are the same number); the noise rate by chance.
    - `auc`: the area under the ROC curve of "low weight ⇒ mislabeled" over the whole
      training split, the probability that a mislabeled example has a lower weight than a
      correct one (ties count half); 0.5 by chance, 1 when every mislabeled example is below
      every correct one.
    """

    k: int
    lowest_mislabeled: int
    expected: float
    mislabeled: int
    precision: float
    auc: float

    def describe(self) -> str:
        """One line with the numbers, for listings and figure titles."""
        return (
            f"{self.lowest_mislabeled} of the {self.k} lowest-weighted are mislabeled "
            f"(chance {self.expected:.1f}); AUC of low weight for mislabeled {self.auc:.3f}; "
            f"the {self.mislabeled} lowest-weighted hold {self.precision:.0%} mislabeled"
        )


def noise_detection(weights: torch.Tensor, noisy: torch.Tensor, k: int = 16) -> NoiseDetection:
    """Score example weights as a detector of mislabeled examples.

    **Arguments:**

    - `weights`: one weight per training example, `(n,)`.
    - `noisy`: bool `(n,)`, `True` for a mislabeled example (a split's `noisy`).
    - `k`: how many of the lowest-weighted examples to count (default `16`).

    **Returns:**

    A [`NoiseDetection`][implicitgrad_commentaries.plots.NoiseDetection].

    **Example:**

    ```python
    import torch
    from implicitgrad_commentaries.plots import noise_detection
    w = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.7])
    noisy = torch.tensor([True, False, False, False, True])
    d = noise_detection(w, noisy, k=2)
    assert (d.lowest_mislabeled, d.expected) == (1, 0.8)
    assert abs(d.auc - 5 / 6) < 1e-12  # 0.1 is below all three correct, 0.7 below two
    ```
    """
    w = weights.detach().double().cpu()
    flipped = noisy.detach().bool().cpu()
    n, m = w.numel(), int(flipped.sum())
    if flipped.shape != w.shape or not 1 <= k <= n or m == 0 or m == n:
        raise InputError(
            f"`noise_detection`: needs one flag per weight, some mislabeled and some correct "
            f"examples and 1 <= k <= {n}; got {tuple(w.shape)} weights, "
            f"{tuple(flipped.shape)} flags ({m} mislabeled), k={k}. Pass the `noisy` flags "
            "of a split with label noise."
        )
    from sklearn.metrics import roc_auc_score

    order = torch.argsort(w, stable=True)
    auc = float(roc_auc_score(flipped.numpy(), -w.numpy()))
    return NoiseDetection(
        k=k,
        lowest_mislabeled=int(flipped[order[:k]].sum()),
        expected=k * m / n,
        mislabeled=m,
        precision=float(flipped[order[:m]].double().mean()),
        auc=auc,
    )


def has_label_noise(data: Dataset) -> bool:
    """Whether `data`'s training split records injected label noise with both mislabeled and
    correct examples (what [`noise_detection`][implicitgrad_commentaries.plots.noise_detection]
    needs)."""
    noisy = data.train.noisy
    return noisy is not None and 0 < int(noisy.sum()) < noisy.numel()


@torch.no_grad()
def mean_weights(commentary: AbstractCommentary, data: Dataset, points: int = 21) -> torch.Tensor:
    """Every training example's weight averaged over `points` evenly spaced $t \\in [0, 1]$."""
    commentary.eval()
    x, y = data.train.x, data.train.y
    ts = torch.linspace(0.0, 1.0, points).tolist()
    return torch.stack([commentary(x, y, t) for t in ts]).mean(0)


def plot_weight_extremes(
    commentary: AbstractCommentary, data: Dataset, out: Path, k: int = 16
) -> Path:
    """Write `weights-examples.png`: the `k` lowest- and the `k` highest-weighted training
    examples, each weight the teacher's mean over 21 evenly spaced $t \\in [0, 1]$.

    Each image is titled with its weight and its given label; where the training labels
    carry injected noise (`data.train.noisy`), a mislabeled example's title is red and
    also gives its true label, and the figure title gives the
    [`noise_detection`][implicitgrad_commentaries.plots.noise_detection] numbers.

    **Arguments:**

    - `commentary`: a weighting commentary (called as `commentary(x, y, t)`).
    - `data`: its dataset.
    - `out`: the existing folder to write into.
    - `k`: how many examples at each end (default `16`, drawn in rows of 8).

    **Returns:**

    The path of the PNG.
    """
    w = mean_weights(commentary, data)
    order = torch.argsort(w, stable=True)
    train = data.train
    flags = train.noisy if has_label_noise(data) else None
    k = min(k, len(train) // 2)
    cols = min(8, k)
    rows = -(-k // cols)
    fig = plt.figure(figsize=(1.15 * cols, 2 * (1.25 * rows + 0.45)))
    halves = fig.subfigures(2, 1)
    for half, picked, what in (
        (halves[0], order[:k], "lowest"),
        (halves[1], order.flip(0)[:k], "highest"),
    ):
        axes = half.subplots(rows, cols, squeeze=False)
        caption = f"the {k} {what} weights"
        if flags is not None:
            caption += f": {int(flags[picked].sum())} mislabeled"
        half.suptitle(caption, fontsize=9)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, i in zip(axes.flat, picked.tolist(), strict=False):
            image = train.x[i]
            if image.shape[0] == 3:
                ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
            else:
                ax.imshow(image.mean(0).numpy(), cmap="gray_r", vmin=0, vmax=1)
            label = commentary.spec.classes[int(train.y[i])]
            flipped = flags is not None and bool(flags[i])
            if flipped:
                assert train.clean_y is not None
                label += f" (true {commentary.spec.classes[int(train.clean_y[i])]})"
            ax.set_title(
                f"w={float(w[i]):.3g}\ny={label}", fontsize=6, color="red" if flipped else "black"
            )
    title = (
        f"{commentary.spec.name}: training examples by the teacher's mean weight over t ∈ [0, 1], "
        f"{_loss_name(commentary)}"
    )
    if flags is not None:
        rate = float(flags.double().mean())
        found = noise_detection(w, flags, k)
        title += (
            f"\n{rate:.0%} of labels flipped (red): {found.lowest_mislabeled} of the {k} lowest "
            f"mislabeled, {found.expected:.1f} by chance; AUC(low weight ⇒ mislabeled) "
            f"{found.auc:.3f}"
        )
    fig.suptitle(title, fontsize=8, y=1.0, va="bottom")
    path = out / "weights-examples.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
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

    - weighting: the mean weight over training by class, by example difficulty and, with
      injected label noise, for mislabeled and correct examples (`weights.png`), and the
      lowest- and highest-weighted training examples (`weights-examples.png`);
    - blending: a heatmap of the learned blending share $1 - \\lambda$ for every class
      pair, with class names (`blending.png`);
    - masks: test images with their masks overlaid (`masks.png`) and a grid of test
      canvases beside what the student sees through the mask (`masked-inputs.png`).

    A plugin that does not override `plot` gets no plots (an empty list).

    **Returns:**

    The paths written.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return commentary.to("cpu").plot(data.to("cpu"), folder)

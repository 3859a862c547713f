"""The picture of the synthetic glyph set on docs/fewshot.md.

```text
python docs/scripts/glyphs_figure.py            # writes docs/assets/fewshot/glyphs.png
```

Draws the first drawings of a few meta-training classes of `make_glyphs()` (seed 0, the
documented set), one class a row. Needs matplotlib (the plugin's `plots` extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from implicitgrad_commentaries import make_glyphs  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "assets" / "fewshot" / "glyphs.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=6, help="rows: glyph classes shown")
    parser.add_argument("--samples", type=int, default=10, help="columns: drawings per class")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    glyphs = make_glyphs()
    per_class = int((glyphs.y == 0).sum())
    classes = glyphs.classes("train")[: args.classes]
    fig, axes = plt.subplots(
        len(classes), args.samples, figsize=(0.75 * args.samples, 0.8 * len(classes)), squeeze=False
    )
    for row, c in enumerate(classes):
        for col in range(args.samples):
            ax = axes[row, col]
            ax.imshow(glyphs.x[c * per_class + col, 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"class {c}", rotation=0, ha="right", va="center", fontsize=8)
    n_classes = len(set(glyphs.y.tolist()))
    fig.suptitle(
        f"Synthetic glyphs (make_glyphs(), seed 0): {len(classes)} of {n_classes} classes, "
        f"{args.samples} of {per_class} drawings each",
        fontsize=9,
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

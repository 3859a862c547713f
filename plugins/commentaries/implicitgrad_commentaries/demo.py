"""Demo: learn a blending commentary on digits and reuse it on students of another architecture.

```text
python -m implicitgrad_commentaries.demo [--out DIR] [--seeds 3] [--device auto] [--quiet]
```

1. Learns the blending matrix $M$ on scikit-learn's digits with an MLP student, by implicit
   differentiation with the paper's estimator (one Neumann term, $\\alpha$ = the student's
   learning rate), and saves it to `DIR`.
2. Reloads it from disk and trains fresh convolutional students with it, against a
   baseline without blending, random blending proportions, the unlearned initial matrix
   ($M = -1$) and mixup ($\lambda \sim \mathrm{Beta}(1, 1)$, Zhang et al., 2018), over
   several seeds.
3. Prints the mean ± std test accuracy at fractions of training and writes the metrics as
   JSON and the heatmap of $M$ as PNG into `DIR`.

It takes about a minute on one idle CPU core, several when the cores are shared.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence

import torch

from .cli.main import main as cli_main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m implicitgrad_commentaries.demo")
    parser.add_argument("--out", help="folder for the commentary and metrics (default: temp)")
    parser.add_argument("--seeds", type=int, default=3, help="students per condition")
    parser.add_argument("--steps", type=int, default=1500, help="student training steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    device = ["--device", args.device]
    out = args.out or tempfile.mkdtemp(prefix="commentary-demo-")
    quiet = ["--quiet"] if args.quiet else []
    start = time.perf_counter()
    print("1. learning the blending commentary on digits (MLP student, IFT, Neumann K=1)")
    status = cli_main(
        [*quiet, "learn", "blending", "--dataset", "digits", "--method", "ift"]
        + ["--solver", "neumann", "--neumann-terms", "1", "--student", "mlp"]
        + ["--steps", "300", "--seed", "0", "--out", out, "--overwrite", *device]
    )
    if status:
        return status
    print(f"\n2. reusing it (reloaded from {out}) on fresh CNN students, {args.seeds} seeds")
    status = cli_main(
        [*quiet, "train", "--commentary", out, "--student", "cnn"]
        + ["--seeds", str(args.seeds), "--steps", str(args.steps), *device]
    )
    if status:
        return status
    try:
        cli_main([*quiet, "show", out])
    except ImportError:  # plots are optional
        pass
    print(f"\ndone in {time.perf_counter() - start:.0f}s; metrics and plots in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

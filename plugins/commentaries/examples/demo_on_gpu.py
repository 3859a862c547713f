"""Run the commentary demo on a GPU and print how long each part took.

```text
python plugins/commentaries/examples/demo_on_gpu.py [--device cuda] [--seeds 3] [--also-cpu]
```

Learns the blending commentary on digits, reuses it on fresh CNN students and compares,
exactly as `python -m implicitgrad_commentaries.demo`, with everything on `--device`;
`--also-cpu` runs it on the CPU as well, for the ratio. Prints one timing line per run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch
from implicitgrad_commentaries.demo import main as demo


def timed(device: str, seeds: int, steps: int) -> float:
    start = time.perf_counter()
    status = demo(
        ["--device", device, "--seeds", str(seeds), "--steps", str(steps), "--quiet"]
        + ["--out", tempfile.mkdtemp(prefix=f"demo-{device.replace(':', '')}-")]
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    if status:
        sys.exit(f"the demo failed on {device} (exit status {status})")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the GPU to run on (default: cuda)")
    parser.add_argument("--seeds", type=int, default=3, help="students per condition")
    parser.add_argument("--steps", type=int, default=1500, help="student training steps")
    parser.add_argument("--also-cpu", action="store_true", help="time the CPU run too")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here; run with --device cpu to time the CPU instead")
    timings = {args.device: timed(args.device, args.seeds, args.steps)}
    if args.also_cpu:
        timings["cpu"] = timed("cpu", args.seeds, args.steps)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    for device, seconds in timings.items():
        print(
            f"demo on {device} ({name if device != 'cpu' else 'CPU'}): {seconds:.1f} s "
            f"(torch {torch.__version__}, {args.seeds} seeds, {args.steps} student steps)"
        )


if __name__ == "__main__":
    main()

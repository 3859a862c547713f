"""Progress of a long command: a tqdm bar on a terminal, plain periodic lines otherwise.

A bar redraws itself with carriage returns, which a batch log (stderr sent to a file) shows
as one unreadable line, or not at all. When stderr is not a terminal the command prints a
line such as

```text
commentaries learn: meta-step 40/300 (13%), val_loss 0.512, 12s elapsed, ~78s left
```

after the first step, then at most once every `every` seconds, and after the last step.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .checks import number

__all__ = ["Progress", "add_progress_flag", "duration"]


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """`--progress-every SECONDS`, for a command that shows its progress."""
    parser.add_argument(
        "--progress-every",
        type=number(0.0, inclusive=True),
        default=30.0,
        metavar="SECONDS",
        help="when stderr is not a terminal: the least seconds between two progress lines "
        "(0: every step); on a terminal a progress bar is shown instead",
    )


def duration(seconds: float) -> str:
    """`12s`, `4m05s` or `2h03m`."""
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Counts `total` units of work and shows how far along it is, on stderr.

    **Arguments:**

    - `total`: the units of work of the whole run.
    - `prog`: the command's name, which starts every plain line (`commentaries learn`).
    - `unit`: what one unit is called (`meta-step`, `student`).
    - `quiet`: show nothing.
    - `every`: the least number of seconds between two plain lines (`0`: every unit).
    - `done`: units already done before this process started (a resumed run); the time
      left is estimated from the units this process did.
    """

    def __init__(
        self,
        total: int,
        prog: str,
        unit: str,
        *,
        quiet: bool = False,
        every: float = 30.0,
        done: int = 0,
    ) -> None:
        self.total, self.prog, self.unit, self.every = total, prog, unit, every
        self.done = self.start = done
        self.began = time.perf_counter()
        self.printed_at: float | None = None
        self.printed = done
        self.first: tuple[float, int] | None = None
        self.bar: Any = None
        self.plain = not quiet and not _is_terminal()
        if not quiet and not self.plain:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                desc=f"{prog.split()[-1]} {unit}s",
                leave=False,
                file=sys.stderr,
                mininterval=1.0,
            )

    def update(self, status: str = "", n: int = 1) -> None:
        """Count `n` more units; `status` says how things stand (`val_loss 0.512`)."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if status:
                self.bar.set_postfix_str(status, refresh=False)
        if not self.plain:
            return
        now = time.perf_counter()
        due = self.printed_at is None or now - self.printed_at >= self.every
        if due or self.done >= self.total:
            self._line(status, now)

    def close(self, status: str = "") -> None:
        """End the display; a plain display prints the last count if it has not yet."""
        if self.bar is not None:
            self.bar.close()
        if self.plain and self.printed != self.done:
            self._line(status, time.perf_counter())
        self.plain = False

    def _line(self, status: str, now: float) -> None:
        elapsed = now - self.began
        parts = [f"{self.unit} {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%)"]
        if status:
            parts.append(status)
        parts.append(f"{duration(elapsed)} elapsed")
        # The rate after the first unit leaves out the start-up (imports, first kernels).
        if self.first is None:
            self.first = (now, self.done)
        since, done_then = self.first
        ran, took = self.done - done_then, now - since
        if ran <= 0:
            ran, took = self.done - self.start, elapsed
        if self.done < self.total and ran > 0:
            parts.append(f"~{duration(took / ran * (self.total - self.done))} left")
        print(f"{self.prog}: {', '.join(parts)}", file=sys.stderr, flush=True)
        self.printed_at, self.printed = now, self.done


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False

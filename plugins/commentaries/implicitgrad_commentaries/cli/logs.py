"""Metrics written while a command runs: a CSV file, and TensorBoard scalars when asked for.

The CSV is written with the `csv` module and flushed after every row, so `tail -f` follows
a run. TensorBoard scalars go to `--log-dir` when it is given and `torch.utils.tensorboard`
imports (the `tensorboard` extra).
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "read_rows", "tensorboard_writer", "warn"]

TENSORBOARD_HINT = "pip install 'implicitgrad-commentaries[tensorboard]'"


def warn(prog: str, message: str) -> None:
    """One warning line on stderr."""
    print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)


def tensorboard_writer(prog: str) -> type | None:
    """`SummaryWriter`, or `None` with one warning line when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        warn(
            prog,
            f"TensorBoard scalars need the tensorboard package ({err}); install the extra: "
            f"{TENSORBOARD_HINT}. Writing only the CSV",
        )
        return None
    return SummaryWriter


class MetricsLog:
    """Rows of metrics, written to a CSV file as they come (and kept for the final save).

    **Arguments:**

    - `path`: the CSV file (replaced; its folder is created).
    - `fields`: the column names.
    - `rows`: rows to start with (a resumed run's earlier rows), written first.
    - `writer`: a `SummaryWriter` class, to also write TensorBoard scalars to `tb_dir`.
    - `tb_dir`: the TensorBoard folder.
    - `purge_step`: TensorBoard hides the scalars of earlier runs in `tb_dir` from this step
      on (a resumed run's first new step).
    """

    def __init__(
        self,
        path: Path,
        fields: Sequence[str],
        *,
        rows: Iterable[Mapping[str, Any]] = (),
        writer: type | None = None,
        tb_dir: Path | None = None,
        purge_step: int | None = None,
    ) -> None:
        self.path, self.fields = path, list(fields)
        self.rows: list[dict[str, Any]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w", newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.file, self.fields, lineterminator="\n")
        self.csv.writeheader()
        self.tb = None
        if writer is not None and tb_dir is not None:
            self.tb = writer(log_dir=str(tb_dir), purge_step=purge_step)
        for row in rows:
            self._csv_row(row)
        self.file.flush()

    def write(self, row: Mapping[str, Any], scalars: Mapping[str, float] = {}, step: int = 0):
        """Append `row` to the CSV (flushed), and `scalars` (tag → value) at `step` to
        TensorBoard."""
        self._csv_row(row)
        self.file.flush()
        if self.tb is not None:
            for tag, value in scalars.items():
                self.tb.add_scalar(tag, value, step)

    def _csv_row(self, row: Mapping[str, Any]) -> None:
        row = {k: row[k] for k in self.fields}
        self.rows.append(row)
        self.csv.writerow(row)

    def text(self) -> str:
        """The whole CSV as text (for a copy in an output folder)."""
        out = io.StringIO()
        writer = csv.DictWriter(out, self.fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV written by `MetricsLog` (empty when there is none)."""
    try:
        with path.open(newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []

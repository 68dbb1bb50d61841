"""Training progress for people: a live line on a terminal, plain lines in logs and pipes."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Epoch, samples/s, loss and accuracy; at most one plain line a second when not on a TTY."""

    def __init__(self, epochs: int, stream: Any = None) -> None:
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.live = None
        self.last_line = 0.0
        if self.stream.isatty():
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self.live = RichProgress(
                TextColumn("epoch {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self.task = self.live.add_task("train", total=epochs, status="starting")
            self.live.start()

    def epoch(self, record: dict[str, Any]) -> None:
        text = describe(record)
        if self.live is not None:
            self.live.update(self.task, completed=record["epoch"], status=text)
            return
        now = time.monotonic()
        if now - self.last_line >= 1.0 or record["epoch"] in (1, self.epochs):
            self.last_line = now
            print(f"epoch {record['epoch']}/{self.epochs}  {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def describe(record: dict[str, Any]) -> str:
    text = (
        f"loss {record['loss']:.4f}  acc {record['accuracy']:.1%}  "
        f"last-{200} {record['recent_accuracy']:.1%}  {record['samples_per_s']:.0f} samples/s"
    )
    if "holdout_accuracy" in record:
        text += f"  held-out {record['holdout_accuracy']:.1%}"
    return text

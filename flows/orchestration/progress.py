"""Progress of a run: rows done per vendor, for the terminal bars and the Prefect artifact."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


class RunProgress:
    """Thread-safe per-vendor counters; draws a bar per vendor when stderr is a terminal."""

    def __init__(self, totals: Mapping[str, int], *, show_bars: bool | None = None) -> None:
        self.totals = dict(totals)
        self.done = {vendor: 0 for vendor in totals}
        self._lock = threading.Lock()
        show = sys.stderr.isatty() if show_bars is None else show_bars
        self._bars: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        if show and self.totals:
            self._bars = Progress(
                TextColumn("{task.description:<11}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8} rows/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            for vendor, total in self.totals.items():
                self._tasks[vendor] = self._bars.add_task(vendor, total=total, rate="-")
            self._bars.start()

    def advance(self, vendor: str, rows: int = 1) -> None:
        with self._lock:
            self.done[vendor] += rows
        if self._bars is not None:
            task_id = self._tasks[vendor]
            self._bars.advance(task_id, rows)
            speed = self._bars.tasks[task_id].speed
            self._bars.update(task_id, rate=f"{speed:,.0f}" if speed else "-")

    @property
    def fraction(self) -> float:
        total = sum(self.totals.values())
        return 1.0 if total == 0 else sum(self.done.values()) / total

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

"""Rich progress of an EM run on stderr (lap, step, ETA); silent off a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["Progress"]


class Progress:
    """Two bars: completed laps, and the steps of the current E-step or M-step.

    Parameters
    ----------
    total_laps
        Laps planned for the run.
    enabled
        Force on or off; None shows it only when stderr is a terminal.
    """

    def __init__(self, total_laps: int, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.laps = self.bar.add_task("EM laps", total=total_laps)
            self.steps = self.bar.add_task("", total=1)

    def __enter__(self) -> Progress:
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def lap_done(self, completed: int) -> None:
        if self.bar:
            self.bar.update(self.laps, completed=completed)

    def start(self, description: str, total: int) -> Callable[..., None]:
        """Reset the step bar; return the callback that advances it by one."""
        if not self.bar:
            return lambda *a: None
        self.bar.reset(self.steps, total=total, description=description)
        return lambda *a: self.bar.advance(self.steps)

    def log(self, message: str) -> None:
        if self.bar:
            self.bar.console.log(message)

"""The rich progress bar the commands show on stderr (only on a terminal)."""

from __future__ import annotations

from typing import Any


def stderr_bar() -> Any:
    """A started, transient ``rich.progress.Progress`` on stderr: label, bar, N/M, ETA.

    rich is imported here, on first use, so that commands run off a terminal (batch jobs,
    pipes) never pay for it. The caller checks ``sys.stderr.isatty()`` first.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    bar.start()
    return bar

"""The ``--threads`` and ``--device`` options shared by the commands that run networks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from ..errors import UsageError

__all__ = ["threads_option", "set_threads", "device_option"]


def threads_option(default_one: bool) -> Callable[[Any], Any]:
    """A click ``--threads`` option; ``default_one`` documents the command's default."""
    default = "1" if default_one else "torch's own (all cores)"
    return click.option(
        "--threads",
        type=int,
        default=None,
        help=f"Torch CPU threads (default: {default}; torch's own when OMP_NUM_THREADS is set).",
    )


def set_threads(threads: int | None, *, default_one: bool) -> None:
    """Set torch's CPU thread count from ``--threads``.

    ``default_one`` makes one thread the default when neither ``--threads`` nor
    ``OMP_NUM_THREADS`` is given. ``separate`` uses it: a cutout's networks are small
    (48x48 U-Nets), so a second thread gains little, and on a shared machine OpenMP
    threads that spin-wait for a busy core are catastrophic (the README command took
    156 s with torch's default 2 threads and 7 s with one on a 2-core CPU while three
    other jobs ran; see docs/user-guide.md); scale out with ``--shard`` instead.
    Training (``fit``) and ``evaluate`` keep torch's default, which uses an idle
    machine's cores.
    """
    import torch

    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    elif default_one and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def device_option(
    help_text: str = "Torch device: auto, cpu, cuda, cuda:N.",
) -> Callable[[Any], Any]:
    """The ``--device`` option of every command that runs networks, one default: ``auto``
    (CUDA when present, else the CPU)."""
    return click.option("--device", default="auto", show_default=True, help=help_text)

"""Options of a separation run (:class:`SeparateConfig`) and the torch device it asks for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError
from ..freeform import FreeformConfig
from ..io.read import ReadOptions

__all__ = ["SeparateConfig", "resolve_device"]


@dataclass(frozen=True)
class SeparateConfig:
    """Options of a separation run (the CLI's flags).

    Attributes
    ----------
    sampler
        Posterior sampler settings passed to the prior
        (:class:`galprism.diffusion.SamplerConfig`; its defaults are the CLI's).
    batch_size
        Cutouts per call of the sampler.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``... or ``"auto"``.
    seed
        Run seed; each cutout's seed derives from it and the file name.
    center, center_radec
        Crop center in pixels ``(x, y)`` (0-based) or degrees ``(ra, dec)``; default the
        image center.
    read
        Sidecar files and overrides for reading inputs.
    output_dir, output
        Folder for ``<stem>.galprism.fits`` files, or one output file (single input).
    overwrite, skip_existing
        What to do with existing outputs (default: report an error for that input).
    shard
        ``(I, N)``: process only the inputs of shard I of N.
    command_line
        Recorded in the outputs' HISTORY (default: ``sys.argv``).
    support
        Source name -> radius in prior pixels of the disk around the cutout center outside
        which that source is zero, or ``"auto:R"`` for an adaptive disk of at most R
        (:mod:`galprism.support`); ``None`` uses the prior's own (``prior.json``), ``{}``
        none.
    freeform
        When sources the priors cannot draw (too bright, or centered beyond the grid) get
        a free-form component integrated out of the likelihood (:mod:`galprism.freeform`).
    """

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    batch_size: int = 4
    device: str = "cpu"
    seed: int = 0
    center: tuple[float, float] | None = None
    center_radec: tuple[float, float] | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    output_dir: Path = Path(".")
    output: Path | None = None
    overwrite: bool = False
    skip_existing: bool = False
    shard: tuple[int, int] | None = None
    command_line: str | None = None
    support: dict[str, float | str] | None = None
    freeform: FreeformConfig = field(default_factory=FreeformConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.sampler, SamplerConfig):
            raise ConfigError(
                f"separate: sampler must be a SamplerConfig, got {type(self.sampler).__name__}"
            )
        if isinstance(self.batch_size, bool) or int(self.batch_size) < 1:
            raise ConfigError(f"separate: batch_size must be at least 1, got {self.batch_size}")
        if self.overwrite and self.skip_existing:
            raise ConfigError("separate: overwrite and skip_existing exclude each other")
        if self.center is not None and self.center_radec is not None:
            raise ConfigError("separate: center and center_radec exclude each other")


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; others are checked.

    Raises
    ------
    ConfigError
        If CUDA is requested but not available, or ``device`` is not a torch device.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device}: CUDA is not available on this machine")
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r}: not a torch device") from exc
    return device

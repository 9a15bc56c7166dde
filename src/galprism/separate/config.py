"""Options of a separation run (:class:`SeparateConfig`) and the torch device it asks for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError
from ..freeform import FreeformConfig
from ..io.read import ReadOptions

__all__ = ["PRECISIONS", "SeparateConfig", "resolve_device", "resolve_precision"]

#: Arithmetic of the prior networks' forward passes (:mod:`galprism.separate.precision`):
#: ``float32``; ``bf16``, autocast to bfloat16 (CUDA or CPU); ``tf32``, float32 tensors with
#: TensorFloat-32 matrix products (CUDA only). The likelihood, the conjugate-gradient solve
#: and the operators stay float32 in every case.
PRECISIONS = ("float32", "bf16", "tf32")


#: Output file formats of :class:`SeparateConfig` (``hdf5``: scene mode only).
OUTPUT_FORMATS = ("fits", "hdf5")


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
    precision
        One of :data:`PRECISIONS` for the prior networks, or ``None``: ``"bf16"`` on a
        CUDA device, ``"float32"`` on the CPU (:func:`resolve_precision`).
    flat_memory
        Give large tensors their own memory mappings for the run (glibc's mmap threshold
        fixed, :func:`galprism._memory.keep_large_allocations_mapped`), so that the heap
        does not fragment and the peak memory does not creep up with the number of
        inputs; each large tensor then costs fresh pages, which took 11-16 % more CPU
        time at 1 sample and 4 steps and about 65 % more at the defaults on a 2-core machine.
    output_format
        ``"fits"`` (``<stem>.galprism.fits``) or, in scene mode, ``"hdf5"``
        (``<stem>.galprism.h5``, the same content for fields of thousands of sources); the
        ECSV catalogue is written beside either.
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
    precision: str | None = None
    flat_memory: bool = False
    output_format: str = "fits"

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
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(
                f"separate: output_format must be one of {', '.join(OUTPUT_FORMATS)}, got "
                f"{self.output_format!r}"
            )
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(
                f"separate: precision must be one of {', '.join(PRECISIONS)}, "
                f"got {self.precision!r}"
            )


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


def resolve_precision(precision: str | None, device: str, jacobian: str = "vjp") -> str:
    """The network precision a run uses on a resolved ``device``.

    ``None`` -> ``"bf16"`` on CUDA, where bfloat16 matrix products are several times
    faster than float32 ones, and ``"float32"`` elsewhere, where CPU bfloat16 is no faster
    and float32 keeps results identical to a float32 run. With ``jacobian="difference"``
    (:class:`~galprism.diffusion.SamplerConfig`) the default is ``"float32"`` everywhere:
    a forward difference of the network's input (step ``FD_STEP``, 3e-3) drowns in
    bfloat16's rounding (about 2e-3 relative) and is spoilt by TF32's (about 5e-4).

    Raises
    ------
    ConfigError
        If ``precision`` is not one of :data:`PRECISIONS`, is ``"tf32"`` on a device
        other than CUDA, or is not ``"float32"`` with a forward-difference Jacobian.
    """
    on_cuda = torch.device(device).type == "cuda"
    if precision is None:
        return "bf16" if on_cuda and jacobian != "difference" else "float32"
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: not one of {', '.join(PRECISIONS)}")
    if precision == "tf32" and not on_cuda:
        raise ConfigError(f"precision tf32: TensorFloat-32 is a CUDA mode, device is {device}")
    if precision != "float32" and jacobian == "difference":
        raise ConfigError(
            f"precision {precision}: the forward-difference Jacobian needs float32 networks "
            "(its step is as small as the rounding)"
        )
    return precision

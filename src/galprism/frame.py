"""The grid a prior lives on and the flux convention of its pixel values.

A :class:`Frame` says what one source image of a prior is: its shape ``(C, H, W)`` (or
``(D,)`` for sources that are not images), the names of its bands, the angular size of a
pixel, and what a pixel value means (AB zero point, unit, and the data units per
normalised unit the networks work in). A prior folder records it once, in ``prior.json``;
the pipeline reads every grid and flux fact from it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["Frame"]


@dataclass(frozen=True)
class Frame:
    """A prior's grid and flux convention.

    Attributes
    ----------
    shape
        ``(C, H, W)`` of one source image, or ``(D,)`` for vector sources.
    bands
        Band names, one per channel ``C``, or None when unnamed.
    pixel_scale
        Arcseconds per pixel of the grid, or None when unknown (or not an image).
    zeropoint
        AB zero point of the pixel values, or None when unknown.
    bunit
        Unit of the pixel values (the ``BUNIT`` keyword), or None.
    flux_scale
        Data units per normalised prior unit (> 0).

    Raises
    ------
    ConfigError
        If a fact is out of range or the facts disagree (bands against channels, a pixel
        scale for a vector source).
    """

    shape: tuple[int, ...]
    bands: tuple[str, ...] | None = None
    pixel_scale: float | None = None
    zeropoint: float | None = None
    bunit: str | None = None
    flux_scale: float = 1.0

    def __post_init__(self) -> None:
        try:
            shape = tuple(operator.index(s) for s in self.shape)
        except TypeError:
            shape = ()
        if len(shape) not in (1, 3) or not all(s > 0 for s in shape):
            raise ConfigError(
                f"frame: shape must be (C, H, W) or (D,) of positive integers, got {self.shape!r}"
            )
        object.__setattr__(self, "shape", shape)
        if self.bands is not None:
            bands = tuple(self.bands)
            if len(shape) != 3 or len(bands) != shape[0]:
                raise ConfigError(f"frame: {len(bands)} band name(s) for shape {shape}")
            if not all(isinstance(b, str) and b for b in bands) or len(set(bands)) != len(bands):
                raise ConfigError(f"frame: band names must be distinct strings, got {bands!r}")
            object.__setattr__(self, "bands", bands)
        if self.pixel_scale is not None:
            if len(shape) != 3:
                raise ConfigError(f"frame: a pixel scale needs an image shape, got {shape}")
            if not _positive(self.pixel_scale):
                raise ConfigError(f"frame: pixel_scale must be > 0, got {self.pixel_scale!r}")
            object.__setattr__(self, "pixel_scale", float(self.pixel_scale))
        if self.zeropoint is not None:
            if not _finite(self.zeropoint):
                raise ConfigError(f"frame: zeropoint must be finite, got {self.zeropoint!r}")
            object.__setattr__(self, "zeropoint", float(self.zeropoint))
        if self.bunit is not None and not (isinstance(self.bunit, str) and self.bunit.strip()):
            raise ConfigError(f"frame: bunit must be a non-empty string, got {self.bunit!r}")
        if not _positive(self.flux_scale):
            raise ConfigError(f"frame: flux_scale must be > 0, got {self.flux_scale!r}")
        object.__setattr__(self, "flux_scale", float(self.flux_scale))

    @property
    def ab_zeropoint(self) -> float | None:
        """The AB zero point of the values: ``zeropoint``, else that of a flux ``bunit``."""
        if self.zeropoint is not None:
            return self.zeropoint
        from .io.flux import zeropoint_of_unit  # local: astropy units only when asked

        return zeropoint_of_unit(self.bunit)

    @property
    def is_image(self) -> bool:
        """Whether sources are images ``(C, H, W)``."""
        return len(self.shape) == 3

    def to_json(self) -> dict[str, Any]:
        """The ``frame`` entry of ``prior.json``."""
        return {
            "shape": list(self.shape),
            "bands": None if self.bands is None else list(self.bands),
            "pixel_scale": self.pixel_scale,
            "zeropoint": self.zeropoint,
            "bunit": self.bunit,
            "flux_scale": self.flux_scale,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "frame") -> Frame:
        """Inverse of :meth:`to_json`; ``where`` names the file in errors.

        Raises
        ------
        ConfigError
            Not a mapping, unknown or missing keys, or values :class:`Frame` refuses.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: frame must be a mapping, got {type(data).__name__}")
        known = {"shape", "bands", "pixel_scale", "zeropoint", "bunit", "flux_scale"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown frame entries {unknown}")
        if "shape" not in data or not isinstance(data["shape"], Sequence):
            raise ConfigError(f"{where}: frame has no shape list")
        try:
            return cls(
                shape=tuple(data["shape"]),
                bands=None if data.get("bands") is None else tuple(data["bands"]),
                pixel_scale=data.get("pixel_scale"),
                zeropoint=data.get("zeropoint"),
                bunit=data.get("bunit"),
                flux_scale=data.get("flux_scale", 1.0),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _finite(value) and value > 0

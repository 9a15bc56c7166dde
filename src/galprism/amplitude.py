"""Normalised sources: a source's prior over its shape, its flux measured on the data.

A diffusion prior learns the distribution it is shown. Learned on galaxies as they come
(fluxes spanning several decades), it sees the bright ones rarely and, in the prior's
units, at values above its largest noise level: it draws no bright galaxy, and a bright
galaxy scaled down to a typical one has a faint galaxy's blurred shape. A *normalised*
source is learned instead as ``x = g / a``: ``g`` its light and ``a`` its **amplitude**,
a flux measured on the observation itself, folded into the observation operator
(``A_i a_i``, still linear in ``x``). Every galaxy then reaches the network at a flux
of order one, and the bright ones, whose shapes the data show best, teach it the most.

The amplitude is the light within an aperture around the source's position, measured
the same way when the prior is learned (``galprism fit``) and when it is used
(``galprism separate``, cutouts and scenes), and recorded in the prior's ``prior.json``::

    "amplitude": {"galaxy": {"radius": 6.0, "floor": 3.0}}

``a = max(F, floor * sigma_F)``: ``F`` the sum of the data over the aperture (all bands,
masked pixels made up by the aperture's valid fraction) and ``sigma_F`` its noise. The
floor keeps a source at or below the noise from being divided by a flux that is mostly
noise; it and the aperture radius are in the data's own units and pixels, so the answer
does not depend on the zero point. The amplitude is a fixed scale, not an estimate the
posterior trusts: the posterior's flux is ``a`` times the flux of ``x``, whose draws
carry the uncertainty. No library measures this on batched tensors inside a sampler
(photutils' ``CircularAperture`` works on one image at a time in NumPy), hence this
short function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, ShapeError

__all__ = ["Amplitude", "check_amplitude"]


@dataclass(frozen=True)
class Amplitude:
    """How a normalised source's amplitude is measured on the data.

    Parameters
    ----------
    radius
        Aperture radius in prior pixels (on an observation ``f`` times coarser,
        ``radius / f`` of its pixels).
    floor
        The amplitude is at least ``floor`` times the aperture flux's noise.
    """

    radius: float
    floor: float = 3.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ConfigError(f"amplitude: radius must be > 0 prior pixels, got {self.radius!r}")
        if not (math.isfinite(self.floor) and self.floor > 0):
            raise ConfigError(f"amplitude: floor must be > 0, got {self.floor!r}")

    def to_json(self) -> dict[str, float]:
        return {"radius": float(self.radius), "floor": float(self.floor)}

    @classmethod
    def from_json(cls, value: Any, where: str) -> Amplitude:
        """Parse ``{"radius": R, "floor": K}`` (``floor`` optional).

        Raises
        ------
        ConfigError
            Naming ``where`` on a missing radius, an unknown key or a bad value.
        """
        if isinstance(value, Amplitude):
            return value
        if not isinstance(value, Mapping) or "radius" not in value:
            raise ConfigError(f"{where}: amplitude must be a table with a radius, got {value!r}")
        unknown = sorted(set(value) - {"radius", "floor"})
        if unknown:
            raise ConfigError(f"{where}: amplitude has unknown setting {unknown[0]!r}")
        try:
            return cls(float(value["radius"]), float(value.get("floor", 3.0)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: amplitude {value!r}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def measure(
        self,
        y: Tensor,
        noise_var: Tensor,
        valid: Tensor | None = None,
        centers: Tensor | None = None,
        *,
        grid_factor: int = 1,
        owned: Tensor | None = None,
    ) -> Tensor:
        """The amplitude of the source at ``centers`` of each observation, ``(N,)`` float64.

        Parameters
        ----------
        y, noise_var
            ``(N, C, h, w)`` data and noise variance in the prior's units.
        valid
            ``(N, C, h, w)`` or ``(N, h, w)`` observed pixels (all when None).
        centers
            ``(N, 2)`` ``(x, y)`` source positions in pixels of ``y``; by default the
            grid center ``((w - 1) / 2, (h - 1) / 2)``, where a cutout's source is.
        grid_factor
            Observation pixel / prior pixel.
        owned
            ``(N, h, w)`` pixels that count for each observation's source (e.g. those
            nearer to it than to another source of its blend); all when None.
        """
        if y.ndim != 4 or noise_var.shape != y.shape:
            raise ShapeError(
                f"amplitude: data must be (N, C, h, w) with a variance of the same shape, got "
                f"{tuple(y.shape)} and {tuple(noise_var.shape)}"
            )
        n, c, h, w = y.shape
        y64, var64 = y.to(torch.float64), noise_var.to(torch.float64)
        ok = torch.ones_like(y64, dtype=torch.bool) if valid is None else valid.to(torch.bool)
        if ok.ndim == 3:
            ok = ok[:, None].expand(n, c, h, w)
        if centers is None:
            centers = torch.tensor([[(w - 1) / 2, (h - 1) / 2]], dtype=torch.float64).expand(n, 2)
        centers = torch.as_tensor(centers, dtype=torch.float64, device=y.device)
        yy = torch.arange(h, dtype=torch.float64, device=y.device)[None, :, None]
        xx = torch.arange(w, dtype=torch.float64, device=y.device)[None, None, :]
        r = torch.hypot(xx - centers[:, 0, None, None], yy - centers[:, 1, None, None])
        aperture = r <= self.radius / grid_factor  # (N, h, w)
        if owned is not None:
            aperture = aperture & owned.to(torch.bool)
        inside = aperture[:, None].expand(n, c, h, w)
        used = inside & ok & torch.isfinite(y64) & torch.isfinite(var64)
        n_ap = inside.flatten(1).sum(1).to(torch.float64)
        n_ok = used.flatten(1).sum(1).to(torch.float64)
        zero = torch.zeros((), dtype=torch.float64, device=y.device)
        flux = torch.where(used, y64, zero).flatten(1).sum(1)
        var = torch.where(used, var64, zero).flatten(1).sum(1)
        # Masked pixels of the aperture are made up by its valid fraction; an aperture with
        # none valid gets the floor of the observation's typical noise.
        fill = n_ap / n_ok.clamp(min=1)
        flux, var = flux * fill, var * fill**2
        whole = ok & torch.isfinite(var64)
        typical = torch.where(whole, var64, zero).flatten(1).sum(1) / whole.flatten(1).sum(1).clamp(
            min=1
        )
        var = torch.where(n_ok > 0, var, typical * n_ap.clamp(min=1))
        flux = torch.where(n_ok > 0, flux, zero)
        amp = torch.maximum(flux, self.floor * var.sqrt())
        if not (torch.isfinite(amp).all() and (amp > 0).all()):
            raise ShapeError("amplitude: the noise is zero or not finite where it is measured")
        return amp

    def __str__(self) -> str:
        return f"aperture {self.radius:g} px, floor {self.floor:g} sigma"


def check_amplitude(value: Any, sources: Sequence[str], where: str) -> dict[str, Amplitude]:
    """``{source: Amplitude}`` from a prior's or fit file's ``amplitude`` table.

    Raises
    ------
    ConfigError
        On a source not in ``sources`` or a bad setting, naming ``where``.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: amplitude must map source names to settings, got {value!r}")
    out = {}
    for name, spec in value.items():
        if name not in sources:
            raise ConfigError(
                f"{where}: amplitude names source {name!r}, but the sources are "
                f"{', '.join(sources)}"
            )
        out[str(name)] = Amplitude.from_json(spec, f"{where}, {name!r}")
    return out

"""Photometric zero points: putting cutouts on the flux scale a prior learned.

A prior is trained on data with one AB zero point ``zp`` (``mag = -2.5 log10(flux) + zp``)
or flux unit. An input's own zero point comes, in this order, from ``zeropoint``, the
header keywords in :data:`ZEROPOINT_KEYS`, a ``BUNIT`` that is a flux density (``nJy``
is AB 31.4, ``uJy`` 23.9, ``nanomaggy`` 22.5; astropy's units do the conversion), or the
HST ``PHOTFLAM``/``PHOTPLAM`` pair. A cube may give one zero point per band with numbered
keywords, ``MAGZERO1`` ... ``MAGZEROn`` (or the numbered form of any key in
:data:`ZEROPOINT_KEYS`, band ``i`` of the cube being keyword ``i + 1``, as with
``FILTERn``); they take precedence over a single value (:func:`header_band_zeropoints`).
Converting flux from zero point ``zp_in`` to
``zp_prior`` multiplies it by ``10**(0.4 (zp_prior - zp_in))`` and the variance by the
square of that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import astropy.units as u
from astropy.io import fits

__all__ = [
    "ZEROPOINT_KEYS",
    "Zeropoint",
    "zeropoint_of_unit",
    "header_zeropoint",
    "header_band_zeropoints",
    "flux_factor",
    "noise_matched_zeropoint",
]

#: header keywords that hold an AB zero point, in order of preference
ZEROPOINT_KEYS: tuple[str, ...] = ("MAGZERO", "MAGZPT", "ZP", "MAGZP", "ZEROPNT", "PHOTZP")


@dataclass(frozen=True)
class Zeropoint:
    """An AB zero point and where it came from (for logs and output headers)."""

    value: float
    source: str


def zeropoint_of_unit(bunit: str | None) -> float | None:
    """AB zero point of a flux-density unit, or None when ``bunit`` is not one.

    Parameters
    ----------
    bunit
        A ``BUNIT`` string such as ``"nJy"``, ``"uJy"``, ``"nanomaggy"`` (a trailing
        ``/pix`` is ignored: cutout pixels are fluxes per pixel anyway).

    Returns
    -------
    float or None
        ``zp`` such that ``mag_AB = -2.5 log10(value) + zp``.
    """
    if not bunit or not str(bunit).strip():
        return None
    try:
        unit = u.Unit(str(bunit).strip(), parse_strict="silent")
    except (ValueError, TypeError):
        return None
    if isinstance(unit, u.UnrecognizedUnit):
        return None
    if u.pix in unit.bases:
        unit = unit * u.pix ** -dict(zip(unit.bases, unit.powers, strict=True))[u.pix]
    try:
        jy = float(unit.to(u.Jy))
    except u.UnitConversionError:
        try:
            return -2.5 * math.log10(float(unit.to(u.mgy)))
        except u.UnitConversionError:
            return None
    # 3631 Jy is AB magnitude zero: mag = -2.5 log10(F jy / 3631).
    return 2.5 * math.log10(3631.0) - 2.5 * math.log10(jy)


def header_zeropoint(*headers: fits.Header | None) -> Zeropoint | None:
    """Zero point recorded in the first header that has one.

    Parameters
    ----------
    headers
        Headers to search in order (e.g. the image HDU's, then the primary's).

    Returns
    -------
    Zeropoint or None
    """
    hs = [h for h in headers if h is not None]
    for h in hs:
        for key in ZEROPOINT_KEYS:
            value = h.get(key)
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                return Zeropoint(float(value), f"header {key}")
    for h in hs:
        bunit = h.get("BUNIT")
        zp = zeropoint_of_unit(bunit) if isinstance(bunit, str) else None
        if zp is not None:
            return Zeropoint(zp, f"BUNIT {bunit.strip()}")
    for h in hs:
        photflam, photplam = h.get("PHOTFLAM"), h.get("PHOTPLAM")
        if (
            isinstance(photflam, (int, float))
            and isinstance(photplam, (int, float))
            and photflam > 0
            and photplam > 0
        ):
            # STScI's AB zero point of an HST image in electrons/s.
            zp = -2.5 * math.log10(photflam) - 5 * math.log10(photplam) - 2.408
            return Zeropoint(zp, "header PHOTFLAM/PHOTPLAM")
    return None


def header_band_zeropoints(n_bands: int, *headers: fits.Header | None) -> list[Zeropoint] | None:
    """One zero point per band of a cube from numbered keywords, or None when none has them.

    The first header and key of :data:`ZEROPOINT_KEYS` (in that order) for which
    ``KEY1`` ... ``KEYn`` are all finite numbers gives the zero points, ``KEYi`` being
    band ``i - 1``'s.

    Parameters
    ----------
    n_bands
        Number of bands of the cube.
    headers
        Headers to search in order (the image HDU's, then the primary's).
    """
    if n_bands < 1:
        return None
    for h in headers:
        if h is None:
            continue
        for key in ZEROPOINT_KEYS:
            values = [h.get(f"{key}{i + 1}") for i in range(n_bands)]
            if all(_is_finite_number(v) for v in values):
                return [Zeropoint(float(v), f"header {key}{i + 1}") for i, v in enumerate(values)]
    return None


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def noise_matched_zeropoint(
    sigma: float, reference_sigma: float, reference_zeropoint: float
) -> float:
    """Zero point that gives noise ``sigma`` the level ``reference_sigma`` has at
    ``reference_zeropoint``.

    The guess for an image without a zero point whose depth is like the reference data's
    (a prior's training data): ``reference_zeropoint + 2.5 log10(sigma / reference_sigma)``.
    """
    return reference_zeropoint + 2.5 * math.log10(sigma / reference_sigma)


def flux_factor(zp_from: float, zp_to: float) -> float:
    """Factor that converts fluxes on zero point ``zp_from`` to zero point ``zp_to``."""
    return 10.0 ** (0.4 * (zp_to - zp_from))

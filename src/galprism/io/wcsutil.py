"""Celestial WCS bookkeeping for crops, finer prior grids and output cubes.

astropy's :meth:`~astropy.wcs.WCS.slice` shifts a WCS for a crop but refuses negative
starts (needed when a cutout is padded) and cannot make a grid finer, so both are done
here, on the same parameters it updates: ``CRPIX``, the linear matrix, and the SIP
polynomial (whose coefficients are in pixel units and scale with the pixel size).
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning, Sip
from astropy.wcs.utils import proj_plane_pixel_scales

from ..errors import InputError

__all__ = [
    "celestial_wcs",
    "pixel_scale_arcsec",
    "shift_wcs",
    "refine_wcs",
    "image_header",
]


def celestial_wcs(header: fits.Header, what: str) -> WCS | None:
    """The celestial part of a header's WCS, or None when it has none.

    Parameters
    ----------
    header
        Image header (2-D, or 3-D with bands first: the band axis is dropped).
    what
        How the image is named in messages.

    Raises
    ------
    InputError
        If the header has celestial keywords that astropy cannot interpret.
    """
    with warnings.catch_warnings():
        # Non-standard but harmless keywords (e.g. RADECSYS) are fixed up silently.
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header, naxis=[1, 2] if header.get("NAXIS", 2) >= 2 else None, relax=True)
        except Exception as exc:  # astropy raises many types for a broken WCS
            raise InputError(f"{what}: invalid WCS in header ({str(exc).splitlines()[0]})") from exc
    if not w.has_celestial:
        return None
    cel = w.celestial
    if cel.naxis != 2:
        return None
    return cel


def pixel_scale_arcsec(wcs: WCS, what: str, *, tolerance: float = 0.01) -> float:
    """Pixel scale (arcsec per pixel) of a celestial WCS with square pixels.

    Raises
    ------
    InputError
        If the two axes differ by more than ``tolerance`` (relative): the prior grid has
        square pixels; give a pixel scale explicitly to override.
    """
    sx, sy = (float(s) * 3600.0 for s in proj_plane_pixel_scales(wcs))
    if not (np.isfinite(sx) and np.isfinite(sy)) or sx <= 0 or sy <= 0:
        raise InputError(f"{what}: WCS gives an unusable pixel scale ({sx}, {sy}) arcsec")
    if abs(sx - sy) > tolerance * max(sx, sy):
        raise InputError(
            f"{what}: pixels are not square ({sx:.5g} x {sy:.5g} arcsec); "
            "give a pixel scale explicitly to override"
        )
    return float(np.sqrt(sx * sy))


def shift_wcs(wcs: WCS, x0: int, y0: int) -> WCS:
    """WCS of the sub-array starting at pixel ``(x0, y0)`` (either may be negative).

    Pixel ``(i, j)`` of the result is pixel ``(i + x0, j + y0)`` of ``wcs``.
    """
    new = wcs.deepcopy()
    offset = np.array([x0, y0], dtype=float)
    new.wcs.crpix = new.wcs.crpix - offset
    if new.sip is not None:
        new.sip = Sip(
            wcs.sip.a, wcs.sip.b, wcs.sip.ap, wcs.sip.bp, np.asarray(wcs.sip.crpix) - offset
        )
    for table in (new.cpdis1, new.cpdis2, new.det2im1, new.det2im2):
        if table is not None:
            table.crval = tuple(np.asarray(table.crval, float) - offset)
    return new


def refine_wcs(wcs: WCS, factor: int) -> WCS:
    """WCS of a grid ``factor`` times finer covering the same sky.

    Fine pixel ``q`` (0-based) is centered on coarse pixel ``(q + 0.5) / factor - 0.5``:
    each coarse pixel is split into ``factor x factor`` fine ones, exactly the blocks that
    :class:`galprism.operators.Downsample` sums.

    Raises
    ------
    InputError
        If the WCS uses lookup-table distortions (their tables are in coarse pixels and
        resampling them is not supported).
    """
    f = int(factor)
    if f == 1:
        return wcs.deepcopy()
    if any(t is not None for t in (wcs.cpdis1, wcs.cpdis2, wcs.det2im1, wcs.det2im2)):
        raise InputError(
            "WCS with lookup-table distortions cannot be refined to the prior's finer grid"
        )
    new = wcs.deepcopy()
    # 1-based FITS pixel p (coarse) and q (fine) with p = (q - 0.5) / f + 0.5.
    new.wcs.crpix = f * (wcs.wcs.crpix - 0.5) + 0.5
    if new.wcs.has_cd():
        new.wcs.cd = wcs.wcs.cd / f
    else:
        new.wcs.cdelt = wcs.wcs.cdelt / f
    if wcs.sip is not None:
        new.sip = Sip(
            _scale_sip(wcs.sip.a, f),
            _scale_sip(wcs.sip.b, f),
            _scale_sip(wcs.sip.ap, f),
            _scale_sip(wcs.sip.bp, f),
            new.wcs.crpix,
        )
    return new


def _scale_sip(coeffs: np.ndarray | None, f: int) -> np.ndarray | None:
    # With u_coarse = u_fine / f, the correction f * A(u_f / f, v_f / f) in fine pixels
    # has coefficients A_pq * f ** (1 - p - q).
    if coeffs is None:
        return None
    c = np.asarray(coeffs, dtype=float)
    p, q = np.indices(c.shape)
    return c * float(f) ** (1 - p - q)


def image_header(
    wcs: WCS | None,
    leading: tuple[tuple[str, int], ...] = (),
) -> fits.Header:
    """Header cards for an image whose two last (numpy) axes are the celestial ones.

    Parameters
    ----------
    wcs
        Celestial WCS of the image plane, or None (no WCS cards).
    leading
        Extra numpy-leading axes as ``(CTYPE, length)``, outermost first, e.g.
        ``(("SAMPLE", 8), ("BAND", 5))`` for a ``(8, 5, ny, nx)`` cube. Each becomes a
        linear FITS axis with value 0 at the first pixel, so that pixel ``k`` along it is
        sample (or band) number ``k`` (0-based). A WCS with SIP or lookup-table
        distortions keeps only its two celestial axes (``WCSAXES = 2``), because astropy
        refuses such distortions in a WCS of more than two axes.
    """
    if wcs is None:
        return fits.Header()
    n_extra = len(leading)
    if n_extra == 0:
        return wcs.to_header(relax=True)
    if wcs.sip is not None or any(
        t is not None for t in (wcs.cpdis1, wcs.cpdis2, wcs.det2im1, wcs.det2im2)
    ):
        # astropy (and WCSLIB's distortion papers) only accept SIP or lookup-table
        # distortions in a 2-D WCS: keep the exact celestial WCS (WCSAXES = 2, valid
        # for any NAXIS) rather than a SAMPLE axis that would make the header unreadable.
        return wcs.to_header(relax=True)
    full = wcs.sub([1, 2] + [0] * n_extra)
    # FITS axis 3 is the innermost numpy leading axis.
    for k, (ctype, _) in enumerate(reversed(leading)):
        ax = 2 + k
        full.wcs.ctype[ax] = ctype
        full.wcs.crpix[ax] = 1.0
        full.wcs.crval[ax] = 0.0
        if full.wcs.has_cd():
            cd = full.wcs.cd.copy()
            cd[ax, ax] = 1.0
            full.wcs.cd = cd
        else:
            full.wcs.cdelt[ax] = 1.0
    return full.to_header(relax=True)

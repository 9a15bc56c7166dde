"""Source catalogues: read a user's list of sources, check it, write it back.

A catalogue is an astropy :class:`~astropy.table.Table` with one row per source and the
columns

``id``
    Integer, unique. Numbered ``1..N`` in file order when the file has no id column.
``x``, ``y``
    Position in pixels of the image, **0-based**: the center of the first pixel is
    ``(0, 0)`` and pixel ``i`` covers ``[i - 0.5, i + 0.5]`` (astropy's and photutils'
    convention; FITS ``CRPIX`` and DS9 count from 1, so subtract 1 from those). Read from
    ``x``/``y`` or ``xcentroid``/``ycentroid`` (any letter case), or computed from
    ``ra``/``dec`` with the image's WCS.
``ra``, ``dec``
    Degrees (ICRS or whatever frame the image's WCS uses), when the file gives them or
    the image has a celestial WCS. A column with an angular unit is converted to degrees;
    one without a unit is taken as degrees.
``kind``
    ``"galaxy"`` or ``"star"`` (any letter case in the file); ``"galaxy"`` when absent.

Any other column is kept as it is, with its unit. When both pixel and sky positions are
given and the image has a WCS, they must agree to ``match_tolerance`` pixels.

Files are ECSV (``.ecsv``) or FITS tables (``.fits``, ``.fit``, ``.fts``, optionally
gzipped; the HDU named ``CATALOG`` if there is one, else the first table HDU).
:func:`write_catalog` writes ECSV and :func:`catalog_hdu` the FITS table that
:func:`read_catalog` reads back with every column and unit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.table import Column, MaskedColumn, Table
from astropy.wcs import WCS

from ..atomic import atomic_path
from ..errors import InputError

__all__ = [
    "KINDS",
    "CATALOG_EXTNAME",
    "read_catalog",
    "normalize_catalog",
    "write_catalog",
    "catalog_hdu",
    "catalog_path_for",
]

#: the source kinds a catalogue may name
KINDS = ("galaxy", "star")
#: EXTNAME of the catalogue's binary table in galprism's FITS outputs
CATALOG_EXTNAME = "CATALOG"

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
_PIXEL_ALIASES = (("x", "y"), ("xcentroid", "ycentroid"))


def _fits_table_hdu(hdul: fits.HDUList, name: str) -> fits.BinTableHDU | fits.TableHDU:
    tables = [h for h in hdul if isinstance(h, fits.BinTableHDU | fits.TableHDU)]
    if not tables:
        raise InputError(f"{name}: FITS file has no table HDU")
    named = [h for h in tables if h.name.upper() == CATALOG_EXTNAME]
    return named[0] if named else tables[0]


def _read_table(path: Path) -> Table:
    name = str(path)
    if not path.is_file():
        raise InputError(f"{name}: catalogue file not found")
    lower = path.name.lower()
    if lower.endswith(_FITS_SUFFIXES):
        is_fits = True
    elif lower.endswith(".ecsv"):
        is_fits = False
    else:  # unknown suffix: FITS files announce themselves in their first bytes
        with open(path, "rb") as fh:
            is_fits = fh.read(6) == b"SIMPLE"
    try:
        if is_fits:
            with fits.open(path, memmap=False) as hdul:
                return Table.read(_fits_table_hdu(hdul, name))
        return Table.read(path, format="ascii.ecsv")
    except InputError:
        raise
    except Exception as exc:  # astropy raises many types for a malformed file
        what = "FITS table" if is_fits else "ECSV table"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{name}: cannot be read as an {what} ({detail})") from exc


def read_catalog(
    path: str | os.PathLike,
    *,
    shape: Sequence[int],
    wcs: WCS | None = None,
    match_tolerance: float = 1.0,
) -> Table:
    """Read and check a source catalogue for an image.

    Parameters
    ----------
    path
        ECSV or FITS table file (see the module documentation for its columns).
    shape
        The image's shape; its last two entries are ``(H, W)``.
    wcs
        The image's celestial WCS, needed when positions are given as ``ra``/``dec``.
    match_tolerance
        Largest allowed distance, in pixels, between a source's ``x``/``y`` and its
        ``ra``/``dec`` converted with ``wcs`` when a file gives both.

    Returns
    -------
    astropy.table.Table
        The checked catalogue, columns ``id, x, y, [ra, dec,] kind`` then the file's
        other columns; the file is not modified.

    Raises
    ------
    InputError
        One line naming the file and the problem: unreadable file, no rows, missing or
        ambiguous position columns, non-numeric, empty or NaN positions, positions outside
        the image, duplicate or non-integer ids, unknown kinds, ``ra``/``dec`` without a
        celestial WCS, pixel and sky positions that disagree.
    """
    path = Path(path)
    return normalize_catalog(
        _read_table(path), str(path), shape=shape, wcs=wcs, match_tolerance=match_tolerance
    )


def _find(table: Table, name: str) -> str | None:
    """The table's column called ``name`` in any letter case (None if none)."""
    hits = [c for c in table.colnames if c.lower() == name]
    return hits[0] if hits else None


def _values(table: Table, col: str, name: str) -> np.ndarray:
    """A numeric column as float64; empty (masked) entries become NaN.

    astropy masks NaN when it reads a FITS table, so an empty entry and a NaN are the
    same problem, reported by the caller's finiteness check.
    """
    column = table[col]
    if column.ndim != 1 or column.dtype.kind not in "iuf":
        raise InputError(f"{name}: column {col!r} must hold one number per source")
    return np.ma.filled(np.ma.asarray(column, dtype=np.float64), np.nan)


def _ids(table: Table, name: str) -> np.ndarray:
    col = _find(table, "id")
    n = len(table)
    if col is None:
        return np.arange(1, n + 1, dtype=np.int64)
    column = table[col]
    if np.ma.getmaskarray(column).any():
        raise InputError(f"{name}: column {col!r} has empty entries")
    values = np.asarray(column)
    if values.ndim != 1 or values.dtype.kind not in "iuf":
        raise InputError(f"{name}: column {col!r} must hold integer source ids")
    if values.dtype.kind == "f" and not (np.isfinite(values).all() and (values % 1 == 0).all()):
        raise InputError(f"{name}: column {col!r} holds non-integer ids")
    ids = values.astype(np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise InputError(f"{name}: duplicate source id {dup[0]} ({counts[counts > 1][0]} rows)")
    return ids


def _kinds(table: Table, name: str) -> np.ndarray:
    col = _find(table, "kind")
    if col is None:
        return np.full(len(table), "galaxy")
    column = table[col]
    if np.ma.getmaskarray(column).any():
        raise InputError(f"{name}: column {col!r} has empty entries")
    kinds = np.char.lower(np.char.strip(np.asarray(column).astype(str)))
    bad = sorted(set(kinds.tolist()) - set(KINDS))
    if bad:
        raise InputError(f"{name}: column {col!r} has kind {bad[0]!r}; expected one of {KINDS}")
    return kinds.astype(f"<U{max(len(k) for k in KINDS)}")


def _degrees(table: Table, col: str, name: str) -> np.ndarray:
    values = _values(table, col, name)
    unit = table[col].unit
    if unit is None:
        return values
    try:
        return (values * u.Unit(unit)).to_value(u.deg)
    except u.UnitConversionError as exc:
        raise InputError(f"{name}: column {col!r} has unit {unit}, not an angle") from exc


def _pixel_columns(table: Table, name: str) -> tuple[str, str] | None:
    found = []
    for cx, cy in _PIXEL_ALIASES:
        hx, hy = _find(table, cx), _find(table, cy)
        if (hx is None) != (hy is None):
            missing = cy if hy is None else cx
            raise InputError(f"{name}: has column {hx or hy!r} but no {missing!r} column")
        if hx is not None and hy is not None:
            found.append((hx, hy))
    if len(found) > 1:
        raise InputError(
            f"{name}: positions given twice ({found[0][0]}/{found[0][1]} and "
            f"{found[1][0]}/{found[1][1]}); keep one pair"
        )
    return found[0] if found else None


def normalize_catalog(
    table: Table,
    name: str,
    *,
    shape: Sequence[int],
    wcs: WCS | None = None,
    match_tolerance: float = 1.0,
) -> Table:
    """Check a catalogue table and bring it to the standard columns (see :func:`read_catalog`).

    Parameters
    ----------
    table
        The catalogue as read (not modified).
    name
        How the catalogue is named in error messages (its file).
    shape, wcs, match_tolerance
        As for :func:`read_catalog`.

    Returns
    -------
    astropy.table.Table
        A new table.
    """
    if len(table) == 0:
        raise InputError(f"{name}: catalogue has no sources")
    h, w = (int(s) for s in tuple(shape)[-2:])
    ids = _ids(table, name)
    kinds = _kinds(table, name)
    pix = _pixel_columns(table, name)
    ra_col, dec_col = _find(table, "ra"), _find(table, "dec")
    if (ra_col is None) != (dec_col is None):
        raise InputError(f"{name}: has column {ra_col or dec_col!r} but not its partner ra/dec")
    has_sky = ra_col is not None
    if pix is None and not has_sky:
        raise InputError(
            f"{name}: no position columns; expected x/y or xcentroid/ycentroid (0-based "
            "pixels) or ra/dec (degrees)"
        )
    if has_sky and wcs is None and pix is None:
        raise InputError(
            f"{name}: positions are given as ra/dec but the image has no celestial WCS; "
            "give x/y pixel positions"
        )
    if wcs is not None and not wcs.has_celestial:
        raise InputError(f"{name}: the image's WCS is not celestial; give x/y pixel positions")
    if wcs is not None:
        wcs = wcs.celestial  # a cube's WCS also has a band axis, which positions do not use

    ra = dec = None
    if has_sky:
        ra = _degrees(table, ra_col, name)
        dec = _degrees(table, dec_col, name)
        bad = ~(np.isfinite(ra) & np.isfinite(dec))
        if bad.any():
            raise InputError(f"{name}: source id {ids[bad][0]} has a NaN, infinite or empty ra/dec")
    if pix is not None:
        for col in pix:
            unit = table[col].unit
            if unit is not None and u.Unit(unit) != u.pix:
                raise InputError(f"{name}: column {col!r} has unit {unit}; expected pixels")
        x = _values(table, pix[0], name)
        y = _values(table, pix[1], name)
        bad = ~(np.isfinite(x) & np.isfinite(y))
        if bad.any():
            raise InputError(f"{name}: source id {ids[bad][0]} has a NaN, infinite or empty x/y")
    else:
        x, y = (np.asarray(v, dtype=np.float64) for v in wcs.world_to_pixel_values(ra, dec))
        bad = ~(np.isfinite(x) & np.isfinite(y))
        if bad.any():
            raise InputError(
                f"{name}: source id {ids[bad][0]} at ra/dec ({ra[bad][0]:.6f}, {dec[bad][0]:.6f})"
                " has no pixel position in the image's WCS"
            )
    if wcs is not None:
        sky_x, sky_y = wcs.world_to_pixel_values(ra, dec) if has_sky else (x, y)
        dist = np.hypot(np.asarray(sky_x) - x, np.asarray(sky_y) - y)
        if has_sky and pix is not None and (~(dist <= match_tolerance)).any():
            k = int(np.argmax(np.where(np.isfinite(dist), dist, np.inf)))
            raise InputError(
                f"{name}: source id {ids[k]}: x/y and ra/dec are {dist[k]:.3g} px apart in the "
                f"image's WCS (tolerance {match_tolerance:g} px)"
            )
        if not has_sky:
            ra, dec = (np.asarray(v, dtype=np.float64) for v in wcs.pixel_to_world_values(x, y))
    outside = (x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5)
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"{name}: source id {ids[k]} at x, y = {x[k]:.6g}, {y[k]:.6g} is outside the "
            f"{w}x{h}-pixel image (0-based pixels, valid -0.5 to {w - 0.5:g} / {h - 0.5:g})"
        )

    out = Table()
    out["id"] = Column(ids, description="source id")
    out["x"] = Column(x, unit=u.pix, description="0-based pixel column of the source center")
    out["y"] = Column(y, unit=u.pix, description="0-based pixel row of the source center")
    if ra is not None:
        out["ra"] = Column(ra, unit=u.deg, description="right ascension")
        out["dec"] = Column(dec, unit=u.deg, description="declination")
    out["kind"] = Column(kinds, description="galaxy or star")
    used = {c for c in (pix or ()) if c is not None} | {ra_col, dec_col}
    used |= {_find(table, "id"), _find(table, "kind")}
    for col in table.colnames:
        if col not in used:
            if col in out.colnames:
                raise InputError(f"{name}: column {col!r} clashes with a standard column name")
            out[col] = table[col].copy()
    out.meta.update(table.meta)
    return out


def catalog_path_for(fits_path: str | os.PathLike) -> Path:
    """Where the ECSV catalogue of an output FITS (or HDF5) file goes: ``<stem>.catalog.ecsv``
    beside it."""
    p = Path(fits_path)
    name = p.name
    for suffix in (*_FITS_SUFFIXES, ".h5"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(f"{name}.catalog.ecsv")


def write_catalog(table: Table, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a catalogue as ECSV, atomically (every column, unit and description kept).

    Raises
    ------
    GalprismError
        If ``path`` exists and ``overwrite`` is false, or it cannot be written.
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    return path


def catalog_hdu(table: Table, name: str = CATALOG_EXTNAME) -> fits.BinTableHDU:
    """The catalogue as a FITS binary table HDU named ``name`` (units in ``TUNITn``)."""
    plain = Table(table, copy=True)
    for col in plain.colnames:
        if isinstance(plain[col], MaskedColumn) and not plain[col].mask.any():
            plain[col] = Column(plain[col])  # FITS has no null for floats: keep plain arrays
    hdu = fits.table_to_hdu(plain)
    hdu.name = name
    return hdu

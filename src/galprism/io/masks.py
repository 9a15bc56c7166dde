"""Bit masks: which pixels of a cutout are unusable.

Convention: a mask HDU (``MASK``, ``DQ``) or ``mask`` file holds integer flags where a
non-zero selected bit marks a *bad* pixel (HST ``DQ``, LSST/HSC ``MASK`` planes). Which
bits count is chosen with ``mask_bits``:

* names (``BAD,SAT,CR``) are looked up in the mask header's ``MP_<NAME> = <bit index>``
  keywords, the LSST/HSC convention;
* numbers are bit *values* (``4096``, ``0x1000``, ``5`` = bits 1 and 4), the HST ``DQ``
  convention;
* ``all`` selects every bit and ``none`` ignores the mask.

Without ``mask_bits`` a mask with ``MP_*`` keywords uses the planes that LSST's
deblender (scarlet) ignores by default, :data:`DEFAULT_BAD_PLANES`, so that planes like
``DETECTED`` do not hide the very galaxy being deblended; a mask without them uses every
bit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from astropy.io import fits

from ..errors import InputError

__all__ = ["DEFAULT_BAD_PLANES", "mask_planes", "parse_mask_bits", "bad_pixels", "ALL_BITS"]

#: planes treated as bad when the mask names its planes and no mask bits are given
DEFAULT_BAD_PLANES: tuple[str, ...] = ("BAD", "SAT", "CR", "NO_DATA", "SUSPECT", "EDGE")
#: every bit: ``value & ALL_BITS != 0`` is ``value != 0``
ALL_BITS = -1


def mask_planes(header: fits.Header) -> dict[str, int]:
    """The ``MP_<NAME> = <bit index>`` plane definitions of a mask header.

    Parameters
    ----------
    header
        Header of the mask HDU.

    Returns
    -------
    dict
        Upper-case plane name -> bit index (0-based); empty when the header has none.
    """
    planes: dict[str, int] = {}
    for key, value in header.items():
        if (
            key.upper().startswith("MP_")
            and isinstance(value, (int, np.integer))
            and not isinstance(value, bool)
        ):
            planes[key[3:].upper()] = int(value)
    return planes


def parse_mask_bits(spec: str | None, planes: Mapping[str, int], what: str) -> int:
    """Turn a mask-bits specification into the integer of bits that mark a bad pixel.

    Parameters
    ----------
    spec
        Comma-separated plane names and/or bit values, ``all``, ``none``, or None for the
        default (see the module docstring).
    planes
        The mask's plane definitions from :func:`mask_planes`.
    what
        How the mask is named in messages.

    Returns
    -------
    int
        Bits to test (:data:`ALL_BITS` for every bit, 0 for none).

    Raises
    ------
    InputError
        If a name is not defined by the mask's ``MP_*`` keywords or a token is neither a
        name nor a number.
    """
    if spec is None:
        if not planes:
            return ALL_BITS
        return _bits_of([p for p in DEFAULT_BAD_PLANES if p in planes], planes)
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    lowered = {t.lower() for t in tokens}
    if lowered == {"all"}:
        return ALL_BITS
    if lowered == {"none"}:
        return 0
    bits = 0
    for tok in tokens:
        try:
            value = int(tok, 0)
        except ValueError:
            value = None
        if value is not None:
            if value < 0:
                raise InputError(f"{what}: mask bit value {tok!r} is negative")
            bits |= value
            continue
        name = tok.upper().removeprefix("MP_")
        if not planes:
            raise InputError(
                f"{what}: mask plane {tok!r} given but the mask header defines no MP_* planes; "
                "give the mask bits as bit values instead"
            )
        if name not in planes:
            raise InputError(
                f"{what}: mask plane {tok!r} is not defined by its MP_* keywords "
                f"(known: {', '.join(sorted(planes))})"
            )
        bits |= 1 << planes[name]
    return bits


def _bits_of(names: list[str], planes: Mapping[str, int]) -> int:
    bits = 0
    for n in names:
        bits |= 1 << planes[n]
    return bits


def bad_pixels(data: np.ndarray, bits: int, what: str) -> np.ndarray:
    """Boolean array, True where the mask flags a bad pixel under ``bits``.

    Parameters
    ----------
    data
        The mask values: integers, booleans, or floats holding integers (a NaN in a float
        mask marks a bad pixel).
    bits
        From :func:`parse_mask_bits`.
    what
        How the mask is named in messages.

    Raises
    ------
    InputError
        If a float mask holds non-integer values (it is then not a bit mask).
    """
    arr = np.asarray(data)
    if arr.dtype == np.bool_:
        return arr.copy() if bits else np.zeros(arr.shape, bool)
    if np.issubdtype(arr.dtype, np.floating):
        nan = ~np.isfinite(arr)
        filled = np.where(nan, 0.0, arr)
        if np.any(filled != np.round(filled)):
            raise InputError(f"{what}: mask holds non-integer values; expected integer bit flags")
        ints = filled.astype(np.int64)
        return nan | ((ints & bits) != 0)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what}: mask has dtype {arr.dtype}, expected integer bit flags")
    return (arr.astype(np.int64, copy=False) & bits) != 0

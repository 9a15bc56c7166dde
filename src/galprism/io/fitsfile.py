"""Opening FITS files safely and pulling named HDUs out of them as native arrays.

astropy reports a damaged file in many ways (``OSError``, a ``ValueError`` from a reshape,
or only a warning for a truncated file); this module turns all of them into one
:class:`~galprism.errors.InputError` line that names the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import InputError

__all__ = ["sha256_file", "read_hdulist", "find_hdu", "hdu_array", "describe"]

#: bytes read at a time while hashing: keeps memory flat for large files
_CHUNK = 1 << 20


def describe(path: str | os.PathLike[str], extname: str | None = None) -> str:
    """How a file (and optionally one of its HDUs) is named in messages: ``file.fits[PSF]``."""
    return f"{os.fspath(path)}[{extname}]" if extname else os.fspath(path)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks.

    Parameters
    ----------
    path
        File to hash.

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_hdulist(path: str | os.PathLike[str]) -> fits.HDUList:
    """Read a whole FITS file into memory, every HDU's data loaded and checked.

    The data are loaded eagerly (``memmap=False`` and every ``.data`` touched) so that a
    truncated or corrupted file fails here, with its name, instead of later inside the
    sampler; the file handle is closed on return.

    Parameters
    ----------
    path
        The FITS file.

    Returns
    -------
    astropy.io.fits.HDUList
        The HDUs, detached from the file.

    Raises
    ------
    InputError
        If the file is missing, unreadable, not FITS, or truncated.
    """
    name = os.fspath(path)
    p = Path(name)
    if not p.exists():
        raise InputError(f"{name}: no such file")
    if p.is_dir():
        raise InputError(f"{name}: is a directory, not a FITS file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # memmap=False: the arrays live in memory and outlive the closed handle.
            with fits.open(name, memmap=False, lazy_load_hdus=False) as out:
                for hdu in out:
                    _ = hdu.data  # force the read so that damage shows up now
        except OSError as exc:
            raise InputError(f"{name}: not a readable FITS file ({_first_line(exc)})") from exc
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            truncated = _truncation(caught)
            if truncated:
                raise InputError(f"{name}: truncated FITS file ({truncated})") from exc
            raise InputError(f"{name}: corrupted FITS file ({_first_line(exc)})") from exc
    truncated = _truncation(caught)
    if truncated:
        raise InputError(f"{name}: truncated FITS file ({truncated})")
    if len(out) == 0:
        raise InputError(f"{name}: FITS file has no HDU")
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _truncation(caught: Sequence[warnings.WarningMessage]) -> str | None:
    # astropy only *warns* when a file ends early: either the data of an HDU is short
    # ("may have been truncated") or the next header is cut off ("Error validating
    # header for HDU #n"), in which case the HDUs after it silently disappear.
    for w in caught:
        msg = str(w.message)
        if "truncated" in msg.lower():
            return _first_line(Exception(msg))
        if "error validating header" in msg.lower():
            hdu = msg.split("HDU", 1)[1].split("(")[0].strip() if "HDU" in msg else "?"
            return f"the header of HDU {hdu} is cut off or damaged"
    return None


def find_hdu(
    hdul: fits.HDUList, names: Sequence[str], *, with_data: bool = True
) -> tuple[int, fits.hdu.base.ExtensionHDU | fits.PrimaryHDU] | None:
    """First HDU whose ``EXTNAME`` (case-insensitive) is one of ``names``, in that order.

    Parameters
    ----------
    hdul
        The file's HDUs.
    names
        Accepted extension names in order of preference.
    with_data
        Skip HDUs that carry no data array.

    Returns
    -------
    (index, hdu) or None
    """
    by_name: dict[str, int] = {}
    for i, hdu in enumerate(hdul):
        ext = str(hdu.header.get("EXTNAME", hdu.name or "")).strip().upper()
        if ext and ext not in by_name and (not with_data or hdu.data is not None):
            by_name[ext] = i
    for n in names:
        if n.upper() in by_name:
            i = by_name[n.upper()]
            return i, hdul[i]
    return None


def hdu_array(data: np.ndarray | None, what: str, *, dtype: type = np.float64) -> np.ndarray:
    """A native-byte-order, C-contiguous copy of FITS data.

    FITS stores big-endian numbers and torch refuses non-native byte order, so every
    array leaving this module is converted. ``BSCALE``/``BZERO`` were already applied by
    astropy when the data was read (integer images come back as floats).

    Parameters
    ----------
    data
        The HDU's ``.data``.
    what
        Name used in messages (``file.fits[SCI]``).
    dtype
        Target dtype (``np.float64`` for pixel values, ``np.int64`` for bit masks).

    Raises
    ------
    InputError
        If there is no data or it is not numeric.
    """
    if data is None or np.size(data) == 0:
        raise InputError(f"{what}: HDU is empty (no data array)")
    arr = np.asarray(data)
    if arr.dtype.fields is not None or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise InputError(f"{what}: HDU holds {arr.dtype} data, not an image")
    return np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("="))

"""Output FITS files: layout, provenance header, and atomic no-clobber writing.

Layout of ``<stem>.galprism.fits`` (see docs/user-guide.md, "Output layout"):

* primary HDU, no data: provenance keywords and the command line in ``HISTORY`` cards;
* for each source ``S`` of the prior: ``S`` (float32 samples, ``(n, ny, nx)`` or
  ``(n, C, ny, nx)``), ``S_MEAN`` and ``S_STD`` (over samples), on the prior's grid;
* ``FREEFORM``, ``FREEFORM_MEAN``, ``FREEFORM_STD``: only when the cutout has free-form
  components (:mod:`galprism.freeform`), their pixels on the prior's grid, as a source;
* ``MODEL``: posterior mean of the predicted data on the cutout's grid (free-form light
  included);
* ``RESID``: ``(data - MODEL) / sigma``, NaN at masked pixels.

Every image HDU carries the celestial WCS of its grid (the cube gets extra linear
``SAMPLE``/``BAND`` axes), ``BUNIT`` and ``EXTNAME``. Files get ``CHECKSUM``/``DATASUM``
and are written to a temporary name in the destination folder, then linked or renamed
into place, so a crash never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.wcs import WCS

from ..atomic import remove_stale_temps, stale_temps, temp_prefix
from ..errors import GalprismError, InputError, OutputExistsError
from .wcsutil import image_header

__all__ = [
    "OutputExistsError",  # defined in galprism.errors; importable from here too
    "write_atomic",
    "source_hdus",
    "image_hdu",
    "primary_hdu",
    "temp_path",
    "set_card",
    "check_writable",
    "StaleTemps",
]


def temp_path(path: Path) -> Path:
    """Hidden temporary name next to ``path`` (same file system, so the rename is atomic).

    It carries the process id, so that a later run can tell a killed writer's leftover
    (:func:`galprism.atomic.stale_temps`).
    """
    return path.parent / f"{temp_prefix(path)}{secrets.token_hex(4)}.tmp"


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Create and remove a file in ``folder``, so that a run fails before its work, not after.

    Raises
    ------
    InputError
        Naming the folder, if it is missing, not a folder or not writable.
    """
    folder = Path(os.fspath(folder))
    probe = folder / f".galprism-write-check.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"{folder}: output folder is not writable ({exc.strerror or exc})"
        ) from exc


class StaleTemps:
    """Leftover temporary files of outputs, found with one listing per output folder."""

    def __init__(self) -> None:
        self._found: dict[Path, dict[str, list[str]]] = {}

    def remove(self, output: Path) -> list[Path]:
        """Remove the stale temporary files of ``output``; return those removed."""
        folder = output.parent
        if folder not in self._found:
            try:
                self._found[folder] = stale_temps(os.listdir(folder))
            except OSError:
                self._found[folder] = {}
        removed = []
        for name in self._found[folder].pop(output.name, []):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
                removed.append(folder / name)
        return removed


def write_atomic(
    hdul: fits.HDUList,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    remove_stale: bool = True,
) -> Path:
    """Write ``hdul`` with checksums to ``path`` atomically.

    The file is written and flushed to a temporary name first. Without ``overwrite`` it
    is then hard-linked to ``path``, which fails if ``path`` appeared in the meantime (no
    check-then-write race between concurrent jobs); with ``overwrite`` it is renamed over
    it. The temporary file is removed in every case.

    Parameters
    ----------
    hdul
        The HDUs to write.
    path
        Destination; its folder must exist.
    overwrite
        Replace an existing file.
    remove_stale
        First remove temporary files of ``path`` left by killed writers (one listing of
        the folder; a caller writing many files there does that once, see
        :class:`StaleTemps`).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    GalprismError
        If the folder is missing or not writable.
    """
    dest = Path(os.fspath(path))
    if not overwrite and dest.exists():
        raise OutputExistsError(f"{dest}: output exists and overwriting is not allowed")
    if not dest.parent.is_dir():
        raise GalprismError(f"{dest}: output folder {dest.parent} does not exist")
    if remove_stale:
        remove_stale_temps(dest)
    tmp = temp_path(dest)
    try:
        hdul.writeto(tmp, checksum=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, dest)
        else:
            _link_no_clobber(tmp, dest)
    except OSError as exc:
        raise GalprismError(f"{dest}: cannot write output ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def _link_no_clobber(tmp: Path, dest: Path) -> None:
    try:
        os.link(tmp, dest)
    except FileExistsError as exc:
        raise OutputExistsError(f"{dest}: output exists and overwriting is not allowed") from exc
    except OSError:
        # File systems without hard links: fall back to check + rename.
        if dest.exists():
            raise OutputExistsError(
                f"{dest}: output exists and overwriting is not allowed"
            ) from None
        os.replace(tmp, dest)


def set_card(header: fits.Header, key: str, value: Any, comment: str = "") -> None:
    """Set ``key`` with its comment, dropping the comment when the value leaves no room.

    astropy would otherwise truncate the comment with a warning (e.g. a long file name).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", VerifyWarning)
        try:
            card = fits.Card(key, value, comment)
            card.image  # noqa: B018 - formatting the card is what raises
        except VerifyWarning:
            card = fits.Card(key, value)
    header[key] = (card.value, card.comment)


def primary_hdu(
    cards: Mapping[str, tuple[Any, str]], history: Sequence[str] = ()
) -> fits.PrimaryHDU:
    """Data-less primary HDU with provenance ``cards`` (KEY -> (value, comment)) and HISTORY.

    Each ``history`` line is wrapped at spaces over as many ``HISTORY`` cards as needed.
    """
    hdu = fits.PrimaryHDU()
    for key, (value, comment) in cards.items():
        if value is None:
            continue
        set_card(hdu.header, key, value, comment)
    for line in history:
        # Wrap at spaces (astropy would cut words at 72 characters); joining the cards
        # with single spaces gives the line back.
        for part in textwrap.wrap(line, 72, break_long_words=True, break_on_hyphens=False) or [""]:
            hdu.header.add_history(part)
    return hdu


def image_hdu(
    data: np.ndarray,
    extname: str,
    *,
    wcs: WCS | None,
    bunit: str | None,
    leading: tuple[str, ...] = (),
    cards: Mapping[str, tuple[Any, str]] | None = None,
    cache: dict | None = None,
) -> fits.ImageHDU:
    """A float32 image HDU with WCS, BUNIT and EXTNAME.

    Parameters
    ----------
    data
        Array whose last two axes are (ny, nx).
    extname
        HDU name.
    wcs
        Celestial WCS of the (ny, nx) plane, or None.
    bunit
        Flux unit, or None (dimensionless).
    leading
        CTYPE names of the axes before (ny, nx), outermost first (e.g. ``("SAMPLE",)``).
    cards
        Extra keywords.
    cache
        A dict reused across calls with the same ``wcs`` to build its header cards only
        once per set of leading axes (astropy's card handling dominates writing time).
    """
    arr = np.ascontiguousarray(data, dtype=np.float32)
    if len(leading) != arr.ndim - 2:
        raise ValueError(
            f"image_hdu {extname}: {arr.ndim}-D data needs {arr.ndim - 2} leading axis names"
        )
    key = (id(wcs), tuple(leading))
    if cache is not None and key in cache:
        header = cache[key].copy()
    else:
        header = image_header(wcs, tuple(zip(leading, arr.shape[: arr.ndim - 2], strict=True)))
        if cache is not None:
            cache[key] = header.copy()
    hdu = fits.ImageHDU(arr, header=header, name=extname)
    if bunit:
        hdu.header["BUNIT"] = (bunit, "flux unit of the input")
    for key, (value, comment) in (cards or {}).items():
        if value is not None:
            set_card(hdu.header, key, value, comment)
    return hdu


def source_hdus(
    name: str,
    samples: np.ndarray,
    *,
    wcs: WCS | None,
    bunit: str | None,
    cards: Mapping[str, tuple[Any, str]] | None = None,
    cache: dict | None = None,
) -> list[fits.ImageHDU]:
    """The three HDUs of one source: samples cube, mean and standard deviation.

    Parameters
    ----------
    name
        Source name; upper-cased for ``EXTNAME``.
    samples
        ``(n, C, ny, nx)`` in output units; a single band drops the ``C`` axis.
    wcs
        Celestial WCS of the prior's grid.
    bunit
        Flux unit.
    cards
        Extra keywords for every HDU.
    cache
        Header cache shared with other calls for the same ``wcs`` (see :func:`image_hdu`).
    """
    cache = {} if cache is None else cache
    s = np.asarray(samples, dtype=np.float64)
    banded = s.shape[1] > 1
    if not banded:
        s = s[:, 0]
    mean = s.mean(axis=0)
    # With a single sample (a point estimate) the spread is undefined: report zeros.
    std = s.std(axis=0, ddof=1) if s.shape[0] > 1 else np.zeros_like(mean)
    ext = name.upper()
    band_axes: tuple[str, ...] = ("BAND",) if banded else ()
    return [
        image_hdu(
            s, ext, wcs=wcs, bunit=bunit, leading=("SAMPLE", *band_axes), cards=cards, cache=cache
        ),
        image_hdu(
            mean, f"{ext}_MEAN", wcs=wcs, bunit=bunit, leading=band_axes, cards=cards, cache=cache
        ),
        image_hdu(
            std, f"{ext}_STD", wcs=wcs, bunit=bunit, leading=band_axes, cards=cards, cache=cache
        ),
    ]

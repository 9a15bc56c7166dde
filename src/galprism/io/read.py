"""Reading one cutout FITS file (plus optional sidecar files) into an Observation.

Conventions, all documented in docs/user-guide.md ("Input conventions"):

* image: the HDU named ``SCI`` or ``IMAGE``, else the primary HDU; 2-D, or 3-D with
  bands first (``image_hdu`` picks another by name or index);
* PSF: HDU ``PSF`` or a ``psf`` file; 2-D or one kernel per band; it may not be larger
  than the image; a kernel more than 1 px off-center, or of even size, is re-centered
  (:func:`.psf.recenter_psf`, with a note); a pixel scale in its own header (WCS,
  ``PIXSCALE``, ``CDELT``/``CD``) must be the image's;
* bands: named by ``bands`` (one name per band, in order), else by the header's
  ``BANDS``, ``FILTER1``...``FILTERn`` or (one band) ``FILTER``; a cube of several bands
  must have names, so that each band meets the prior's band of that name; ``band`` picks
  one band of a cube by name or index;
* mask: HDU ``MASK`` or ``DQ`` or a ``mask`` file; bit flags (see :mod:`.masks`);
* noise: see :mod:`.noise`; ``noise_sigma`` overrides, otherwise it is estimated;
* WCS and ``BUNIT`` from the image header (the primary header as fallback for
  ``BUNIT`` and zero points); pixel scale from ``pixel_scale``, else the WCS, else a
  ``PIXSCALE``/``PIXSCAL1``/``SECPIX`` keyword (arcsec);
* zero point: see :mod:`.flux` (one per band from ``MAGZERO1``...``MAGZEROn``).

Sidecar paths may contain ``{stem}``, ``{name}`` and ``{dir}``, filled in from each
input's path, so that every cutout of a batch can have its own PSF file.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import ConfigError, InputError, PSFError, ShapeError
from ..observation import Note, NoteKind, Observation
from .fitsfile import describe, find_hdu, hdu_array, read_hdulist, sha256_file
from .flux import Zeropoint, header_band_zeropoints, header_zeropoint
from .masks import bad_pixels, mask_planes, parse_mask_bits
from .noise import NOISE_HDUS, estimate_variance, parse_sigma, to_variance
from .psf import recenter_psf
from .wcsutil import celestial_wcs, pixel_scale_arcsec

__all__ = [
    "ReadOptions",
    "read_cutout",
    "band_names",
    "IMAGE_HDUS",
    "PSF_HDUS",
    "MASK_HDUS",
    "output_stem",
]

IMAGE_HDUS: tuple[str, ...] = ("SCI", "IMAGE")
PSF_HDUS: tuple[str, ...] = ("PSF",)
MASK_HDUS: tuple[str, ...] = ("MASK", "DQ")
#: file-name endings removed to make an output stem
FITS_SUFFIXES: tuple[str, ...] = (
    ".fits.gz",
    ".fits.fz",
    ".fit.gz",
    ".fts.gz",
    ".fits",
    ".fit",
    ".fts",
    ".fz",
)


@dataclass(frozen=True)
class ReadOptions:
    """Sidecar files and overrides applied to every input.

    Attributes
    ----------
    image_hdu
        EXTNAME or index of the image HDU instead of the default search.
    psf, mask
        Sidecar FITS files (templates with ``{stem}``, ``{name}``, ``{dir}`` allowed).
    mask_bits
        ``mask_bits`` specification (see :mod:`galprism.io.masks`).
    noise_sigma
        One noise standard deviation, or one per band comma separated.
    pixel_scale
        Arcseconds per pixel, overriding the WCS.
    zeropoint
        AB zero point, overriding the header.
    band
        One band of a cube to model: a name from ``bands`` or the header's ``BANDS``,
        ``FILTERn`` or ``FILTER`` keywords, or a 0-based index; the mask, noise, a per-band
        PSF and zero point are taken from the same band.
    bands
        Names of the input's bands, in order (a sequence or a comma-separated string such
        as ``"g,r,i"``), instead of the header's; their number must be the image's.

    Raises
    ------
    ConfigError
        If ``bands`` holds an empty or repeated name.
    """

    image_hdu: str | None = None
    psf: str | None = None
    mask: str | None = None
    mask_bits: str | None = None
    noise_sigma: str | None = None
    pixel_scale: float | None = None
    zeropoint: float | None = None
    band: str | int | None = None
    bands: tuple[str, ...] | str | None = None

    def __post_init__(self) -> None:
        if self.bands is None:
            return
        raw = self.bands.split(",") if isinstance(self.bands, str) else list(self.bands)
        names = tuple(str(b).strip() for b in raw)
        if not names or not all(names) or len({n.lower() for n in names}) != len(names):
            raise ConfigError(
                f"bands: expected distinct, non-empty band names, got {', '.join(names)!r}"
            )
        object.__setattr__(self, "bands", names)


def output_stem(path: str | os.PathLike[str]) -> str:
    """File name without directory and FITS suffix: ``a/b/cut.fits.gz`` -> ``cut``."""
    name = Path(os.fspath(path)).name
    lower = name.lower()
    for suffix in FITS_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _sidecar_path(template: str, path: str) -> str:
    if "{" not in template:
        return template
    p = Path(path)
    try:
        return template.format(stem=output_stem(p), name=p.name, dir=str(p.parent))
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(
            f"sidecar template {template!r}: only {{stem}}, {{name}} and {{dir}} are allowed"
        ) from exc


@functools.lru_cache(maxsize=8)
def _read_sidecar_cached(
    path: str, mtime_ns: int, size: int, names: tuple[str, ...]
) -> tuple[np.ndarray, fits.Header]:
    hdul = read_hdulist(path)
    found = find_hdu(hdul, names)
    if found is None:
        found = next(((i, h) for i, h in enumerate(hdul) if h.data is not None), None)
    if found is None:
        raise InputError(f"{path}: FITS file has no HDU with data")
    i, hdu = found
    raw = np.asarray(hdu.data)
    arr = hdu_array(raw, describe(path, hdu.name or str(i)), dtype=_native_kind(raw))
    arr.setflags(write=False)
    return arr, hdu.header.copy()


def _read_sidecar(path: str, names: tuple[str, ...]) -> tuple[np.ndarray, fits.Header]:
    # Keyed on modification time and size so that a rewritten file is read again.
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read sidecar file ({exc.strerror})") from exc
    return _read_sidecar_cached(path, st.st_mtime_ns, st.st_size, names)


def _native_kind(raw: np.ndarray) -> type:
    if np.issubdtype(raw.dtype, np.integer):
        return np.int64
    if raw.dtype == np.bool_:
        return np.bool_
    return np.float64


def _select_image(
    hdul: fits.HDUList, path: str, image_hdu: str | None
) -> tuple[str, fits.PrimaryHDU | fits.ImageHDU]:
    if image_hdu is not None:
        key: str | int = int(image_hdu) if str(image_hdu).lstrip("-").isdigit() else str(image_hdu)
        try:
            hdu = hdul[key]
        except (KeyError, IndexError) as exc:
            raise InputError(
                f"{path}: has no HDU {image_hdu!r} (asked for as the image HDU)"
            ) from exc
        return str(image_hdu), hdu
    found = find_hdu(hdul, IMAGE_HDUS, with_data=False)
    if found is not None:
        return found[1].name, found[1]
    if hdul[0].data is not None:
        return "PRIMARY", hdul[0]
    if len(hdul) == 1:
        raise InputError(
            f"{path}: empty HDU: the primary HDU has no data and there is no other HDU"
        )
    raise InputError(
        f"{path}: no image: the primary HDU is empty and there is no SCI or IMAGE extension"
    )


#: header keywords holding a pixel scale in arcsec, used when there is no celestial WCS
PIXEL_SCALE_KEYS: tuple[str, ...] = ("PIXSCALE", "PIXSCAL1", "SECPIX")


def _header_pixel_scale(what: str, *headers: fits.Header | None) -> float | None:
    for h in headers:
        if h is None:
            continue
        for key in PIXEL_SCALE_KEYS:
            value = h.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not (np.isfinite(value) and value > 0):
                    raise InputError(f"{what}: header {key} = {value} is not a usable pixel scale")
                return float(value)
    return None


def band_names(n_bands: int, *headers: fits.Header | None) -> list[str] | None:
    """Names of the ``n_bands`` bands of a cube from its headers, or None if they say none.

    ``BANDS`` (comma separated, e.g. ``g,r,i,z,y``) first, then ``FILTER1``...``FILTERn``,
    then ``FILTER`` for a single band.
    """
    for h in headers:
        if h is None:
            continue
        text = h.get("BANDS")
        if isinstance(text, str):
            names = [t.strip() for t in text.split(",") if t.strip()]
            if len(names) == n_bands:
                return names
        numbered = [h.get(f"FILTER{i + 1}") for i in range(n_bands)]
        if all(isinstance(v, str) and v.strip() for v in numbered):
            return [str(v).strip() for v in numbered]
        if n_bands == 1 and isinstance(h.get("FILTER"), str) and h["FILTER"].strip():
            return [h["FILTER"].strip()]
    return None


def _cube_band_names(
    n_bands: int, given: tuple[str, ...] | None, one_band: bool, what: str, *headers: fits.Header
) -> list[str] | None:
    """The bands' names: those given, else the header's; a cube of several bands must have
    them unless ``one_band`` of it is picked by index."""
    if given is not None:
        if len(given) != n_bands:
            raise InputError(
                f"{what}: {len(given)} band name(s) given ({','.join(given)}) for an image of "
                f"{n_bands} band(s)"
            )
        return list(given)
    names = band_names(n_bands, *headers)
    if names is None and n_bands > 1 and not one_band:
        raise InputError(
            f"{what}: cube of {n_bands} bands has no band names (header BANDS or FILTER1.."
            f"FILTER{n_bands}) and none were given"
        )
    return names


def _band_index(band: str | int, names: list[str] | None, n_bands: int, what: str) -> int:
    known = (
        ", ".join(f"{i}={n}" for i, n in enumerate(names))
        if names
        else f"indices 0-{n_bands - 1}, no BANDS/FILTERn names in the header"
    )
    text = str(band).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < n_bands:
            return index
        raise InputError(f"{what}: no band {index}: it has {n_bands} band(s) ({known})")
    if names:
        lowered = [n.lower() for n in names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
    raise InputError(f"{what}: no band named {text!r}: it has {n_bands} band(s) ({known})")


#: header keywords of a PSF file giving its pixel scale through a linear WCS
PSF_SCALE_UNITS: dict[str, float] = {"deg": 3600.0, "arcmin": 60.0, "arcsec": 1.0}


def _psf_pixel_scale(header: fits.Header | None, what: str) -> tuple[float, str] | None:
    """The PSF file's own pixel scale in arcsec and the keyword it came from, if it has one."""
    if header is None:
        return None
    wcs = celestial_wcs(header, what)
    if wcs is not None:
        return pixel_scale_arcsec(wcs, what), "WCS"
    scale = _header_pixel_scale(what, header)
    if scale is not None:
        key = next(k for k in PIXEL_SCALE_KEYS if k in header)
        return scale, key
    unit = str(header.get("CUNIT1", "deg")).strip().lower()
    if unit not in PSF_SCALE_UNITS:
        return None
    if "CD1_1" in header:
        cd = np.array(
            [
                [header.get("CD1_1", 0.0), header.get("CD1_2", 0.0)],
                [header.get("CD2_1", 0.0), header.get("CD2_2", 0.0)],
            ],
            dtype=np.float64,
        )
        value, key = math.sqrt(abs(np.linalg.det(cd))), "CD1_1"
    elif "CDELT1" in header:
        value, key = abs(float(header["CDELT1"])), "CDELT1"
    else:
        return None
    # CDELT = 1 is the "one pixel" placeholder of images without a sky grid.
    if not np.isfinite(value) or value <= 0 or value == 1.0:
        return None
    return value * PSF_SCALE_UNITS[unit], key


def _as_cube(arr: np.ndarray, what: str) -> np.ndarray:
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return arr
    raise ShapeError(f"{what}: image must be 2-D or 3-D (bands first), got shape {arr.shape}")


def _broadcast(arr: np.ndarray, shape: tuple[int, ...], what: str, kind: str) -> np.ndarray:
    a = arr
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    try:
        return np.broadcast_to(a, shape)
    except ValueError as exc:
        raise ShapeError(
            f"{what}: {kind} of shape {arr.shape} does not match the image {shape}"
        ) from exc


def read_cutout(path: str | os.PathLike[str], options: ReadOptions | None = None) -> Observation:
    """Read a cutout and its PSF, mask and noise into a checked :class:`Observation`.

    Parameters
    ----------
    path
        The cutout FITS file. It is only read.
    options
        Sidecar files and overrides.

    Returns
    -------
    Observation
        Named after ``path``, with the file's SHA-256 and notes on every assumption.

    Raises
    ------
    InputError, ShapeError, PSFError
        One line naming the file (and HDU) and the problem.
    """
    opts = options or ReadOptions()
    name = os.fspath(path)
    hdul = read_hdulist(name)
    checksum = sha256_file(name)
    notes: list[Note] = []

    ext, img_hdu = _select_image(hdul, name, opts.image_hdu)
    what = describe(name, ext)
    image = _as_cube(hdu_array(img_hdu.data, what), what)
    c, h, w = image.shape
    header = img_hdu.header
    primary = hdul[0].header if img_hdu is not hdul[0] else None
    given = None if opts.bands is None else tuple(opts.bands)  # a tuple after __post_init__
    names = _cube_band_names(c, given, opts.band is not None, what, header, primary)

    valid = np.isfinite(image)
    if not valid.any():
        raise InputError(f"{what}: image has no finite pixel (all NaN or inf)")

    # Mask: flagged bits remove pixels.
    if opts.mask is not None:
        mpath = _sidecar_path(opts.mask, name)
        mdata, mheader = _read_sidecar(mpath, MASK_HDUS)
        mwhat = mpath
    else:
        found = find_hdu(hdul, MASK_HDUS)
        mdata = mheader = None
        if found is not None:
            raw = np.asarray(found[1].data)
            mwhat = describe(name, found[1].name)
            mdata, mheader = hdu_array(raw, mwhat, dtype=_native_kind(raw)), found[1].header
    if mdata is not None:
        bits = parse_mask_bits(opts.mask_bits, mask_planes(mheader), mwhat)
        bad = _broadcast(bad_pixels(mdata, bits, mwhat), image.shape, mwhat, "mask")
        valid &= ~bad
        notes.append(
            Note(NoteKind.MASK, f"mask from {mwhat} (bits {bits if bits >= 0 else 'all'})")
        )

    # Noise: an explicit sigma, a noise HDU, or an estimate.
    if opts.noise_sigma is not None:
        sigma = parse_sigma(opts.noise_sigma, c, name)
        variance = np.broadcast_to(sigma**2, image.shape).copy()
        notes.append(Note(NoteKind.NOISE, f"noise sigma {opts.noise_sigma} as given"))
    else:
        found = find_hdu(hdul, tuple(NOISE_HDUS))
        if found is not None:
            nwhat = describe(name, found[1].name)
            values = _broadcast(hdu_array(found[1].data, nwhat), image.shape, nwhat, "noise map")
            kind = NOISE_HDUS[found[1].name.upper()]
            noise = to_variance(values, kind, valid, nwhat)
        else:
            noise = estimate_variance(image, valid, what)
            notes.append(Note(NoteKind.NOISE_ESTIMATED, f"noise {noise.description}"))
        variance = noise.variance
        valid &= ~noise.invalid

    # PSF.
    if opts.psf is not None:
        ppath = _sidecar_path(opts.psf, name)
        pdata, pheader = _read_sidecar(ppath, PSF_HDUS)
        pwhat = ppath
    else:
        found = find_hdu(hdul, PSF_HDUS)
        if found is None:
            raise PSFError(f"{name}: no PSF: the file has no PSF HDU and no PSF file was given")
        pwhat = describe(name, found[1].name)
        pdata, pheader = hdu_array(found[1].data, pwhat), found[1].header
    pdata = np.asarray(pdata, dtype=np.float64)
    while pdata.ndim > 3 and pdata.shape[0] == 1:
        pdata = pdata[0]
    if pdata.ndim == 3 and pdata.shape[0] == 1:
        pdata = pdata[0]
    if pdata.ndim == 3 and pdata.shape[0] != c:
        raise InputError(
            f"{pwhat}: PSF cube has {pdata.shape[0]} band(s) but the image ({what}) has {c}"
        )
    kh, kw = pdata.shape[-2:]
    if kh > h or kw > w:
        raise PSFError(f"{pwhat}: PSF of {kh}x{kw} pixels is larger than the {h}x{w} image")
    pdata, psf_notes = recenter_psf(pdata, pwhat, max_size=(h, w))
    notes.extend(psf_notes)
    kh, kw = pdata.shape[-2:]
    sums = pdata.reshape(-1, kh, kw).sum(axis=(-2, -1)) if pdata.ndim >= 2 else np.array([])
    if np.all(np.isfinite(sums)) and np.any(np.abs(sums - 1) > 1e-3) and np.all(sums > 0):
        sum_text = ", ".join(f"{s:.4g}" for s in sums)
        notes.append(
            Note(
                NoteKind.PSF_RENORMALISED,
                f"PSF {pwhat} renormalised to unit sum (sum was {sum_text})",
            )
        )

    # Sky geometry and flux scale.
    wcs = celestial_wcs(header, what)
    if opts.pixel_scale is not None:
        pixel_scale: float | None = float(opts.pixel_scale)
    elif wcs is not None:
        pixel_scale = pixel_scale_arcsec(wcs, what)
    else:
        pixel_scale = _header_pixel_scale(what, header, primary)
    psf_scale = _psf_pixel_scale(pheader, pwhat)
    if (
        psf_scale is not None
        and pixel_scale is not None
        and abs(psf_scale[0] / pixel_scale - 1) > 0.01
    ):
        raise InputError(
            f"{pwhat}: PSF pixel scale {psf_scale[0]:.6g} arcsec (header {psf_scale[1]}) differs "
            f"from the image's {pixel_scale:.6g} arcsec ({what})"
        )
    bunit = header.get("BUNIT") or (primary.get("BUNIT") if primary is not None else None)
    bunit = str(bunit).strip() if bunit else None
    zp: Zeropoint | None
    band_zps: list[Zeropoint] | None = None
    if opts.zeropoint is not None:
        zp = Zeropoint(float(opts.zeropoint), "the value given")
    else:
        band_zps = header_band_zeropoints(c, header, primary)
        zp = None if band_zps is not None else header_zeropoint(header, primary)
    b = None if opts.band is None else _band_index(opts.band, names, c, what)
    if band_zps is not None:
        if b is not None:
            band_zps = [band_zps[b]]
        if len({z.value for z in band_zps}) == 1:
            zp, band_zps = band_zps[0], None  # one value for every band
    if zp is not None:
        notes.append(Note(NoteKind.ZEROPOINT, f"zero point {zp.value:.4f} from {zp.source}"))
    if band_zps is not None:
        text = ", ".join(f"{z.value:.4f}" for z in band_zps)
        notes.append(
            Note(NoteKind.ZEROPOINT, f"zero points {text} from {band_zps[0].source} onwards")
        )

    if b is not None:
        image, variance, valid = image[b : b + 1], variance[b : b + 1], valid[b : b + 1]
        if pdata.ndim == 3 and c > 1:
            pdata = pdata[b]
        label = f"{b}" if not names else f"{b} ({names[b]})"
        notes.append(Note(NoteKind.BAND, f"band {label} of {c} modelled"))
        names = None if names is None else [names[b]]

    try:
        return Observation(
            image=image,
            variance=variance,
            psf=pdata,
            valid=valid,
            wcs=wcs,
            bunit=bunit,
            pixel_scale=pixel_scale,
            zeropoint=None if zp is None else zp.value,
            name=name,
            checksum=checksum,
            notes=tuple(notes),
            bands=None if names is None else tuple(names),
            band_zeropoints=None if band_zps is None else tuple(z.value for z in band_zps),
        )
    except PSFError as exc:
        # Observation names the PSF after the cutout; say which HDU or file it came from.
        raise PSFError(str(exc).replace(f"{name} PSF", pwhat, 1)) from exc

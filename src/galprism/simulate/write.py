"""Writing simulated cutouts: FITS in ``galprism separate``'s input convention, and HDF5.

Observation file ``<stem>.fits`` (one per cutout):

* primary HDU, no data: provenance (galprism version, seed, cutout index, view, split,
  instrument, noise level);
* ``SCI``: float32 image, celestial TAN WCS (``CD`` matrix for the pixel scale), ``BUNIT``,
  ``MAGZERO``/``FLUXMAG0``;
* ``PSF``: float64, odd-sized, centered, unit sum;
* ``MASK``: int32 bit mask, 0 = good, planes named by ``MP_*`` keywords (HSC convention);
* ``VARIANCE``: float32 per-pixel variance of the added noise.

Truth file ``truth/<stem>.truth.fits`` (never mixed with the observation): ``TRUE_GALAXY``
and ``TRUE_SKY`` (intrinsic, PSF-free, same grid and WCS), ``TRUE_GALAXY_CONV`` and
``TRUE_SKY_CONV`` (convolved with ``PSF``), ``TRUE_NOISE``, and a ``SOURCES`` table of
every placed galaxy. ``TRUE_GALAXY*`` exist only in the galaxies view. Outside masked
pixels ``SCI == TRUE_GALAXY_CONV + TRUE_SKY_CONV + TRUE_NOISE`` (float32 rounding).

HDF5 (one per batch, plus ``<name>.truth.h5``): see :class:`HDF5Writer`.

Every file is written to a temporary name in its folder and renamed into place when
complete; nothing is overwritten unless asked.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..errors import GalprismError, OutputExistsError
from ..io.write import temp_path
from .defects import BAD_PLANES, MASK_PLANES
from .scene import SourceSpec

__all__ = [
    "NOMINAL_CRVAL",
    "TRUTH_HDUS",
    "wcs_cards",
    "observation_hdul",
    "truth_hdul",
    "sources_table",
    "add_mask_planes",
    "write_atomic",
    "write_fits_pair",
    "HDF5Writer",
]

#: sky position written to CRVAL of every simulated cutout (a COSMOS-field position;
#: simulated cutouts have no real sky position)
NOMINAL_CRVAL = (150.1, 2.2)
#: truth arrays -> FITS EXTNAME
TRUTH_HDUS = {
    "galaxy": "TRUE_GALAXY",
    "sky": "TRUE_SKY",
    "galaxy_conv": "TRUE_GALAXY_CONV",
    "sky_conv": "TRUE_SKY_CONV",
    "noise": "TRUE_NOISE",
}


def wcs_cards(
    size: tuple[int, int], pixel_scale: float, crval: tuple[float, float] = NOMINAL_CRVAL
) -> list[tuple[str, Any, str]]:
    """Celestial TAN WCS cards of a cutout, reference pixel at its center, north up, east left.

    Parameters
    ----------
    size
        ``(ny, nx)``.
    pixel_scale
        Arcsec per pixel.
    crval
        (RA, Dec) in degrees at the center.

    Returns
    -------
    list of (key, value, comment)
    """
    d = pixel_scale / 3600.0
    ny, nx = size
    return [
        ("WCSAXES", 2, "number of WCS axes"),
        ("CTYPE1", "RA---TAN", "gnomonic projection"),
        ("CTYPE2", "DEC--TAN", "gnomonic projection"),
        ("CUNIT1", "deg", ""),
        ("CUNIT2", "deg", ""),
        ("CRPIX1", 0.5 * (nx + 1), "reference pixel: cutout center"),
        ("CRPIX2", 0.5 * (ny + 1), "reference pixel: cutout center"),
        ("CRVAL1", float(crval[0]), "[deg] nominal RA (simulation)"),
        ("CRVAL2", float(crval[1]), "[deg] nominal Dec (simulation)"),
        ("CD1_1", -d, f"[deg/px] {pixel_scale} arcsec/px, east left"),
        ("CD1_2", 0.0, ""),
        ("CD2_1", 0.0, ""),
        ("CD2_2", d, f"[deg/px] {pixel_scale} arcsec/px"),
        ("RADESYS", "ICRS", ""),
    ]


def _image_hdu(
    data: np.ndarray,
    name: str,
    meta: Mapping[str, Any],
    dtype: type = np.float32,
    flux: bool = True,
) -> fits.ImageHDU:
    hdu = fits.ImageHDU(np.ascontiguousarray(data, dtype=dtype), name=name)
    for key, value, comment in wcs_cards(data.shape[-2:], meta["pixel_scale"]):
        hdu.header[key] = (value, comment)
    if flux:
        hdu.header["BUNIT"] = (meta["bunit"], f"counts on AB zero point {meta['zeropoint']}")
        hdu.header["MAGZERO"] = (meta["zeropoint"], "AB mag = MAGZERO - 2.5 log10(flux)")
        hdu.header["FLUXMAG0"] = (10.0 ** (0.4 * meta["zeropoint"]), "flux of a 0 mag AB source")
    hdu.header["FILTER"] = (meta["band"], "")
    hdu.header["PIXSCALE"] = (meta["pixel_scale"], "[arcsec/px]")
    if meta.get("bands"):
        band_cards(hdu.header, meta, flux=flux)
    return hdu


def band_cards(header: fits.Header, meta: Mapping[str, Any], flux: bool = True) -> None:
    """``BANDS``, ``NBANDS`` and per-band ``FILTERn`` (and ``MAGZERn``) cards of a cube.

    ``n`` is the 1-based plane number along the cube's band axis (its first, FITS's last).
    """
    bands = list(meta["bands"])
    header["BANDS"] = (",".join(bands), "band of each plane, bands first")
    header["NBANDS"] = (len(bands), "number of bands")
    for k, name in enumerate(meta["filters"], start=1):
        header[f"FILTER{k}"] = (name, f"filter of band plane {k}")
    if flux:
        for k in range(1, len(bands) + 1):
            header[f"MAGZERO{k}"] = (meta["zeropoint"], f"AB zero point of band plane {k}")


def _primary(meta: Mapping[str, Any], index: int, kind: str) -> fits.PrimaryHDU:
    hdu = fits.PrimaryHDU()
    h = hdu.header
    h["ORIGIN"] = ("galprism simulate", "simulated from real HST COSMOS galaxies")
    h["GPVERS"] = (meta["version"], "galprism version")
    h["FILETYPE"] = (kind, "observation or truth")
    h["GPSEED"] = (meta["seed"], "batch seed (--seed)")
    h["GPINDEX"] = (index, "cutout index in the batch")
    h["SEEDALG"] = ("SeedSequence", "numpy SeedSequence(SEEDKEY + [GPINDEX])")
    h["SEEDKEY"] = (json.dumps(meta["seed_key"]).replace(" ", ""), "seed, crc32s")
    h["VIEW"] = (meta["view"], "sky: no central galaxy; galaxies: one")
    h["SPLIT"] = (meta["split"], "COSMOS galaxies used (by object)")
    h["INSTRUME"] = (meta["instrument"], "simulated instrument")
    h["FILTER"] = (meta["band"], "")
    h["NOISESIG"] = (meta["noise_sigma"], "[count] std of the added noise")
    if meta.get("bands"):
        band_cards(h, meta, flux=False)
        h["NOISESIG"] = (meta["noise_sigma"], "[count] noise std, i (else first) band")
        for k, v in enumerate(meta["band_sigmas"], start=1):
            h[f"NOISESI{k}"] = (v, f"[count] std of the added noise, band plane {k}")
        h["COLGRAD"] = (meta["colour_gradient"], "colour gradient: g-band smoothed fraction")
        h["GRADFWHM"] = (meta["gradient_fwhm"], "[arcsec] FWHM of the smoothed component")
    h["NOISEORI"] = (meta["noise_origin"][:68], "")
    h["PSFORIG"] = (meta["psf_origin"][:68], "")
    h["TRUTHFWH"] = (meta["truth_fwhm"], "[arcsec] FWHM of the truth kernel")
    return hdu


def observation_hdul(cutout: Any, meta: Mapping[str, Any]) -> fits.HDUList:
    """The observation file of one cutout (no truth in it).

    Parameters
    ----------
    cutout
        A :class:`galprism.simulate.simulator.Cutout`.
    meta
        Batch metadata (:meth:`galprism.simulate.simulator.Simulator.meta`).

    Returns
    -------
    astropy.io.fits.HDUList
    """
    primary = _primary(meta, cutout.index, "observation")
    primary.header["NDEFECT"] = (len(cutout.defects), "masked defects added")
    # The cutout's own level: central_noise = "raise" may make it exceed the batch's.
    primary.header["NOISESIG"] = (float(cutout.noise_sigma), "[count] std of the added noise")
    if getattr(cutout, "band_sigmas", None) is not None:
        for k, v in enumerate(cutout.band_sigmas, start=1):
            primary.header[f"NOISESI{k}"] = (float(v), f"[count] noise std, band plane {k}")
    sci = _image_hdu(cutout.image, "SCI", meta)
    psf = fits.ImageHDU(np.ascontiguousarray(cutout.psf, dtype=np.float64), name="PSF")
    psf.header["PSFORIG"] = (meta["psf_origin"][:68], "")
    psf.header["PSFINDEX"] = (cutout.psf_index, "index of this PSF in the batch's PSF list")
    psf.header["PIXSCALE"] = (meta["pixel_scale"], "[arcsec/px] same grid as SCI")
    mask = _image_hdu(cutout.maskbits, "MASK", meta, dtype=np.int32, flux=False)
    add_mask_planes(mask.header, MASK_PLANES)
    mask.header["BADPLANE"] = (",".join(BAD_PLANES), "unusable planes")
    var = _image_hdu(cutout.variance, "VARIANCE", meta, flux=False)
    var.header["BUNIT"] = (f"{meta['bunit']}**2", "variance of SCI")
    return fits.HDUList([primary, sci, psf, mask, var])


def add_mask_planes(header: fits.Header, planes: Mapping[str, int]) -> None:
    """Name the mask planes as HSC/LSST do: ``MP_<NAME> = bit`` (HIERARCH when long)."""
    for name, bit in planes.items():
        key = f"MP_{name}"
        header.append(fits.Card(key if len(key) <= 8 else f"HIERARCH {key}", bit, "mask plane bit"))


def sources_table(
    sources: list[SourceSpec],
    fluxes: np.ndarray | None = None,
    bands: tuple[str, ...] = (),
) -> Table:
    """The placed galaxies as an astropy table (cutout pixel coordinates, 0-based).

    With ``bands``, ``fluxes`` ``(len(sources), C)`` adds one ``FLUX_<B>`` column per band
    (total flux placed in that band).
    """
    table = Table(
        {
            "ROLE": [s.role for s in sources],
            "IDENT": np.array([s.ident for s in sources], dtype=np.int64),
            "X": np.array([s.placement.x for s in sources], dtype=np.float64),
            "Y": np.array([s.placement.y for s in sources], dtype=np.float64),
            "MAG": np.array([s.mag for s in sources], dtype=np.float64),
            "FLUX": np.array([s.placement.flux for s in sources], dtype=np.float64),
            "ROTATION": np.array([s.placement.rotation for s in sources], dtype=np.float64),
            "FLIP": np.array([s.placement.flip for s in sources], dtype=bool),
            "G1": np.array([s.placement.g1 for s in sources], dtype=np.float64),
            "G2": np.array([s.placement.g2 for s in sources], dtype=np.float64),
            "DILATION": np.array([s.placement.dilation for s in sources], dtype=np.float64),
            "HSTNOISE": np.array([s.hst_noise_ratio for s in sources], dtype=np.float64),
            "SERSIC_N": np.array([s.sersic_n for s in sources], dtype=np.float64),
            "HLR": np.array([s.hlr for s in sources], dtype=np.float64),
        }
    )
    for k, b in enumerate(bands):
        table[f"FLUX_{b.upper()}"] = np.asarray(fluxes, dtype=np.float64).reshape(-1, len(bands))[
            :, k
        ]
    return table


def truth_hdul(cutout: Any, meta: Mapping[str, Any]) -> fits.HDUList:
    """The truth file of one cutout: intrinsic and convolved source images, noise, sources."""
    primary = _primary(meta, cutout.index, "truth")
    primary.header["CENTID"] = (cutout.central_ident, "IDENT of the central galaxy (-1: none)")
    primary.header["BKG0"] = (cutout.background[0], "[count] sky residual constant")
    primary.header["BKGGX"] = (cutout.background[1], "[count] residual change across x")
    primary.header["BKGGY"] = (cutout.background[2], "[count] residual change across y")
    hdus: list[fits.hdu.base.ExtensionHDU] = []
    for key, name in TRUTH_HDUS.items():
        if key in cutout.truth:
            hdus.append(_image_hdu(cutout.truth[key], name, meta))
    bands = tuple(getattr(cutout, "bands", ()) or ())
    table = fits.BinTableHDU(
        sources_table(cutout.sources, getattr(cutout, "source_fluxes", None), bands),
        name="SOURCES",
    )
    table.header["COORDS"] = ("0-based pixel centers of SCI", "X, Y convention")
    table.header["HSTNOISE"] = ("stamp noise in SCI / NOISESIG", "")
    return fits.HDUList([primary, *hdus, table])


def write_atomic(hdul: fits.HDUList, path: Path, overwrite: bool = False) -> Path:
    """Write ``hdul`` with ``CHECKSUM``/``DATASUM`` to a temporary name, then move it to ``path``.

    Without ``overwrite`` the move is a hard link, which fails if ``path`` appeared in the
    meantime. Unlike :func:`galprism.io.write.write_atomic` this does not ``fsync``: a
    simulated batch can be regenerated from its seed, and syncing every small file made
    writing 6x slower than simulating.
    """
    # Checksums with a fixed comment: astropy's default comment is the time of writing,
    # which would make two runs with the same seed differ.
    for hdu in hdul:
        hdu.add_checksum(when="galprism")
    tmp = temp_path(path)
    try:
        hdul.writeto(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise OutputExistsError(
                    f"{path}: output exists and overwriting is not allowed"
                ) from exc
    except OSError as exc:
        raise GalprismError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def write_fits_pair(
    cutout: Any, meta: Mapping[str, Any], obs_path: Path, truth_path: Path, overwrite: bool
) -> None:
    """Write the observation and truth files of one cutout atomically (truth first)."""
    write_atomic(truth_hdul(cutout, meta), truth_path, overwrite=overwrite)
    write_atomic(observation_hdul(cutout, meta), obs_path, overwrite=overwrite)


class HDF5Writer:
    """Incremental, atomic writer of a batch as two HDF5 files (observations and truth).

    Observation file (``path``), cutouts along the first axis, ``C = 1`` band:

    * ``images`` (N, C, H, W) float32 (C = 1, or the bands of ``meta["bands"]``),
      ``variance`` (N, C, H, W) float32,
      ``mask`` (N, C, H, W) bool, True = valid pixel, ``maskbits`` (N, C, H, W) int32;
    * ``psf`` (P, C, kh, kw) float64 and ``psf_index`` (N,) int32: cutout i uses
      ``psf[psf_index[i]]`` (one PSF per batch for HSC, one per ACS PSF for HST);
    * ``index`` (N,) int64 cutout index, ``central_ident`` (N,) int64 (-1 in the sky view);
    * attributes: ``pixel_scale``, ``zeropoint``, ``bunit``, ``view``, ``split``,
      ``instrument``, ``band``, ``seed``, ``seed_key``, ``galprism_version``,
      ``noise_sigma``, ``mask_planes`` (JSON), ``bad_planes``, ``config`` (JSON),
      ``truth_file``; with several bands also ``bands`` (``"g,r,i,z,y"``), ``filters``,
      ``band_sigmas``, ``colour_gradient``, ``gradient_fwhm``.

    Truth file (``<stem>.truth.h5``): ``galaxy``, ``sky``, ``galaxy_conv``, ``sky_conv``,
    ``noise`` (N, C, H, W) float32 (``galaxy*`` only in the galaxies view), ``index``,
    and ``sources``, a table with one row per placed galaxy and its ``cutout`` row (and
    ``flux_<band>`` columns with several bands).

    Parameters
    ----------
    path
        Observation file; the truth file is written beside it.
    meta
        Batch metadata.
    psfs
        ``(P, kh, kw)`` PSFs of a single-band batch, or ``(P, C, kh, kw)``.
    overwrite
        Replace existing files.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: Mapping[str, Any],
        psfs: np.ndarray,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.truth_path = self.path.with_name(f"{self.path.stem}.truth{self.path.suffix or '.h5'}")
        for p in (self.path, self.truth_path):
            if p.exists() and not overwrite:
                raise OutputExistsError(f"{p}: output exists and overwriting is not allowed")
            if not p.parent.is_dir():
                raise GalprismError(f"{p}: output folder {p.parent} does not exist")
        self.meta = dict(meta)
        self.overwrite = overwrite
        self._tmp = temp_path(self.path)
        self._tmp_truth = temp_path(self.truth_path)
        self._obs = h5py.File(self._tmp, "w", track_order=True)
        self._truth = h5py.File(self._tmp_truth, "w", track_order=True)
        self._n = 0
        self._sources: list[tuple] = []
        size = int(meta["size"])
        self.bands = tuple(meta.get("bands") or ())
        shape = (0, max(1, len(self.bands)), size, size)
        ds = {"track_times": False}
        for f in (self._obs, self._truth):
            f.create_dataset(
                "index", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,), **ds
            )
        for name, dtype in (
            ("images", np.float32),
            ("variance", np.float32),
            ("mask", bool),
            ("maskbits", np.int32),
        ):
            extra = {"compression": "lzf"} if dtype in (bool, np.int32) else {}
            self._obs.create_dataset(
                name,
                shape=shape,
                maxshape=(None, *shape[1:]),
                dtype=dtype,
                chunks=(1, *shape[1:]),
                **extra,
                **ds,
            )
        psfs = np.asarray(psfs, dtype=np.float64)
        self._obs.create_dataset("psf", data=psfs if psfs.ndim == 4 else psfs[:, None], **ds)
        self._obs.create_dataset(
            "psf_index", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1024,), **ds
        )
        self._obs.create_dataset(
            "central_ident", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,), **ds
        )
        truth_names = (
            ["galaxy", "sky", "galaxy_conv", "sky_conv", "noise"]
            if meta["view"] == "galaxies"
            else ["sky", "sky_conv", "noise"]
        )
        for name in truth_names:
            self._truth.create_dataset(
                name,
                shape=shape,
                maxshape=(None, *shape[1:]),
                dtype=np.float32,
                chunks=(1, *shape[1:]),
                **ds,
            )
        self._truth_names = truth_names
        attrs = {
            "pixel_scale": meta["pixel_scale"],
            "zeropoint": meta["zeropoint"],
            "bunit": meta["bunit"],
            "view": meta["view"],
            "split": meta["split"],
            "instrument": meta["instrument"],
            "band": meta["band"],
            "seed": meta["seed"],
            "seed_key": json.dumps(meta["seed_key"]),
            "galprism_version": meta["version"],
            "noise_sigma": meta["noise_sigma"],
            "psf_origin": meta["psf_origin"],
            "mask_planes": json.dumps(MASK_PLANES),
            "bad_planes": ",".join(BAD_PLANES),
            "config": json.dumps(meta["config"], sort_keys=True),
        }
        if self.bands:
            attrs.update(
                bands=",".join(self.bands),
                filters=",".join(meta["filters"]),
                band_sigmas=np.asarray(meta["band_sigmas"], dtype=np.float64),
                colour_gradient=meta["colour_gradient"],
                gradient_fwhm=meta["gradient_fwhm"],
            )
        for f in (self._obs, self._truth):
            f.attrs.update(attrs)
        self._obs.attrs["truth_file"] = self.truth_path.name
        self._truth.attrs["observation_file"] = self.path.name

    @staticmethod
    def _append(ds: h5py.Dataset, value: np.ndarray | int) -> None:
        n = ds.shape[0]
        ds.resize(n + 1, axis=0)
        ds[n] = value

    def add(self, cutout: Any) -> None:
        """Append one cutout (a :class:`galprism.simulate.simulator.Cutout`)."""
        o, t = self._obs, self._truth
        self._append(o["index"], cutout.index)
        self._append(o["images"], cutout.image[None].astype(np.float32))
        self._append(o["variance"], cutout.variance[None].astype(np.float32))
        self._append(o["maskbits"], cutout.maskbits[None].astype(np.int32))
        self._append(o["mask"], cutout.valid[None])
        self._append(o["psf_index"], cutout.psf_index)
        self._append(o["central_ident"], cutout.central_ident)
        self._append(t["index"], cutout.index)
        for name in self._truth_names:
            self._append(t[name], cutout.truth[name][None].astype(np.float32))
        fluxes = getattr(cutout, "source_fluxes", None)
        for k, s in enumerate(cutout.sources):
            p = s.placement
            band_fluxes = tuple(float(v) for v in fluxes[k]) if self.bands else ()
            self._sources.append(
                (
                    self._n,
                    cutout.index,
                    s.role,
                    s.ident,
                    p.x,
                    p.y,
                    s.mag,
                    p.flux,
                    p.rotation,
                    p.flip,
                    p.g1,
                    p.g2,
                    p.dilation,
                    s.hst_noise_ratio,
                    s.sersic_n,
                    s.hlr,
                    *band_fluxes,
                )
            )
        self._n += 1

    def close(self) -> tuple[Path, Path]:
        """Finish both files and move them into place; returns (observations, truth)."""
        dtype = np.dtype(
            [("row", "i8"), ("cutout", "i8"), ("role", "S9"), ("ident", "i8"), ("x", "f8"),
             ("y", "f8"), ("mag", "f8"), ("flux", "f8"), ("rotation", "f8"), ("flip", "?"),
             ("g1", "f8"), ("g2", "f8"), ("dilation", "f8"), ("hst_noise_ratio", "f8"),
             ("sersic_n", "f8"), ("hlr", "f8")]
            + [(f"flux_{b}", "f8") for b in self.bands]
        )  # fmt: skip
        self._truth.create_dataset(
            "sources", data=np.array(self._sources, dtype=dtype), track_times=False
        )
        self._obs.attrs["n"] = self._n
        self._truth.attrs["n"] = self._n
        self._obs.close()
        self._truth.close()
        try:
            if not self.overwrite and (self.path.exists() or self.truth_path.exists()):
                raise OutputExistsError(
                    f"{self.path}: output appeared while writing and overwriting is not allowed"
                )
            os.replace(self._tmp_truth, self.truth_path)
            os.replace(self._tmp, self.path)
        finally:
            self.discard()
        return self.path, self.truth_path

    def discard(self) -> None:
        """Drop the temporary files (after an error)."""
        for f in (self._obs, self._truth):
            with contextlib.suppress(Exception):
                f.close()
        for p in (self._tmp, self._tmp_truth):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

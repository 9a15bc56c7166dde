"""The real HSC i-band cutouts of the shared data, converted to galprism's FITS convention.

* :func:`hsc_npz_hdul`: ``hsc/hsc_cosmos_35.npz`` (an HSC COSMOS coadd blend, scarlet test
  data): i-band image, variance and int32 mask as given, its 43x43 PSF. No WCS can be
  derived (the archive has none), so the pixel scale is written as ``PIXSCALE``. Fluxes
  are HSC coadd counts (``MAGZERO = 27``): the variance plane then gives a 5-sigma point
  source depth of i = 27.4, that of the HSC-SSP UltraDeep COSMOS field.
* :func:`multiview_hsc_hdul`: ``multiview/Cut_HSC.fits`` (scarlet test data) i-band slice
  with its TAN WCS and the i-band ``PSF_HSC.fits`` kernel. Its authors renormalised the
  cube (every band sums to 1999), so it has no zero point; no variance map or mask is
  given, so ``VARIANCE`` is the square of the sigma-clipped standard deviation of the
  source-masked pixels (constant, background-only), and there is no ``MASK``.

Mask planes of the npz: the archive carries HSC bit numbers without names. Bits 0-11 are
named as in every HSC-SSP coadd (BAD ... NOT_DEBLENDED); bits 2 and 3 coincide exactly
(interpolated cosmic rays), bit 5 follows the sources (DETECTED) and bit 10 the corners
(CROSSTALK). Bit 12 is set exactly where bit 10, 14 or 15 is, in every band, and no pixel
is NaN: it marks pixels where inputs were rejected, so it is named REJECTED here (PDR2
headers call bit 12 UNMASKEDNAN and bit 13 REJECTED; the plane order depends on the
pipeline version). Bits 14 and 15 (horizontal and vertical bands) are named CLIPPED and
SENSOR_EDGE as in PDR2.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS

from .. import __version__
from .data import hsc_npz_path, multiview_dir
from .instrument import check_psf
from .noise import HSC_BANDS, HSC_ZEROPOINT, source_mask
from .write import add_mask_planes

__all__ = ["NPZ_MASK_PLANES", "hsc_npz_hdul", "multiview_hsc_hdul"]

#: names of the npz mask bits (see the module docstring for the evidence)
NPZ_MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "BRIGHT_OBJECT": 9,
    "CROSSTALK": 10,
    "NOT_DEBLENDED": 11,
    "REJECTED": 12,
    "CLIPPED": 14,
    "SENSOR_EDGE": 15,
}
_LICENCE = "scarlet test data, MIT licence"


def _primary(source: str, note: str) -> fits.PrimaryHDU:
    hdu = fits.PrimaryHDU()
    hdu.header["ORIGIN"] = ("galprism sample_fits", "converted real survey data")
    hdu.header["GPVERS"] = (__version__, "galprism version that converted it")
    hdu.header["SRCFILE"] = (source, "shared data file")
    hdu.header["LICENCE"] = (_LICENCE, "")
    hdu.header["TELESCOP"] = ("Subaru", "")
    hdu.header["INSTRUME"] = ("HSC", "Hyper Suprime-Cam")
    hdu.header["FILTER"] = ("HSC-I", "")
    hdu.header.add_comment(note)
    return hdu


def hsc_npz_hdul(
    data_dir: str | os.PathLike[str] | None = None, bands: Sequence[str] = ("i",)
) -> fits.HDUList:
    """The npz blend as ``SCI``, ``PSF``, ``MASK``, ``VARIANCE`` (see the module doc).

    Parameters
    ----------
    data_dir
        Data folder.
    bands
        HSC bands to write, in order: one band gives 2-D planes, several a cube (bands
        first) named by ``BANDS`` and ``FILTERn`` with one PSF kernel per band.

    Returns
    -------
    astropy.io.fits.HDUList
    """
    index = [HSC_BANDS.index(b) for b in bands]
    path = hsc_npz_path(data_dir)
    with np.load(path, allow_pickle=False) as npz:
        image = np.asarray(npz["images"][index], dtype=np.float32)
        variance = np.asarray(npz["variance"][index], dtype=np.float32)
        mask = np.asarray(npz["mask"][index], dtype=np.int32)
        psf = np.stack([check_psf(npz["psfs"][b], f"{path}[psfs][{b}]") for b in index])
    cube = len(index) > 1
    if not cube:
        image, variance, mask, psf = image[0], variance[0], mask[0], psf[0]
    names = ",".join(bands)
    primary = _primary(
        "hsc/hsc_cosmos_35.npz",
        f"HSC COSMOS coadd blend, {names} band{'s' if cube else ''}; no WCS in the archive "
        "(PIXSCALE only).",
    )
    if cube:
        del primary.header["FILTER"]
    sci = fits.ImageHDU(image, name="SCI")
    sci.header["BUNIT"] = ("count", "HSC coadd counts")
    sci.header["MAGZERO"] = (HSC_ZEROPOINT, "AB mag = MAGZERO - 2.5 log10(flux)")
    sci.header["FLUXMAG0"] = (10.0 ** (0.4 * HSC_ZEROPOINT), "flux of a 0 mag AB source")
    sci.header["PIXSCALE"] = (0.168, "[arcsec/px] HSC; no WCS is known")
    if cube:
        sci.header["BANDS"] = (names, "bands of the first axis")
        for k, b in enumerate(bands):
            sci.header[f"FILTER{k + 1}"] = (f"HSC-{b.upper()}", f"band {k + 1}")
    else:
        sci.header["FILTER"] = (f"HSC-{bands[0].upper()}", "")
    psf_hdu = fits.ImageHDU(psf, name="PSF")
    where = ",".join(str(b) for b in index)
    psf_hdu.header["PSFORIG"] = (f"hsc_cosmos_35.npz psfs[{where}]", "renormalised to unit sum")
    mask_hdu = fits.ImageHDU(mask, name="MASK")
    add_mask_planes(mask_hdu.header, NPZ_MASK_PLANES)
    mask_hdu.header.add_comment("Bit 12 named REJECTED: set exactly where bits 10, 14 or 15 are.")
    var_hdu = fits.ImageHDU(variance, name="VARIANCE")
    var_hdu.header["BUNIT"] = ("count**2", "HSC pipeline variance plane")
    return fits.HDUList([primary, sci, psf_hdu, mask_hdu, var_hdu])


def multiview_hsc_hdul(data_dir: str | os.PathLike[str] | None = None) -> fits.HDUList:
    """``Cut_HSC.fits`` i band with its WCS, i-band PSF and an estimated constant variance.

    Parameters
    ----------
    data_dir
        Data folder.

    Returns
    -------
    astropy.io.fits.HDUList
    """
    band = HSC_BANDS.index("i")
    folder = multiview_dir(data_dir)
    with fits.open(folder / "Cut_HSC.fits") as hdul:
        header = hdul[0].header
        image = np.asarray(hdul[0].data[band], dtype=np.float32)
    wcs = WCS(header, naxis=2)
    psf = check_psf(
        fits.getdata(folder / "PSF_HSC.fits")[band], f"{folder / 'PSF_HSC.fits'}[{band}]"
    )
    smask = source_mask(image.astype(np.float64))
    _, background, sigma = sigma_clipped_stats(image, mask=smask, sigma=3.0, maxiters=10)
    primary = _primary(
        "multiview/Cut_HSC.fits",
        "HSC i band of the HST+HSC multiview field; renormalised cube, no zero point.",
    )
    sci = fits.ImageHDU(image, header=wcs.to_header(), name="SCI")
    sci.header["BUNIT"] = ("adu", "arbitrary: cube renormalised by its authors")
    sci.header["NORMSUM"] = (float(image.sum()), "sum of this band (all bands sum to 1999)")
    sci.header["FILTER"] = ("HSC-I", "")
    psf_hdu = fits.ImageHDU(psf, name="PSF")
    psf_hdu.header["PSFORIG"] = ("multiview/PSF_HSC.fits[2]", "renormalised to unit sum")
    var_hdu = fits.ImageHDU(np.full(image.shape, sigma**2, dtype=np.float32), name="VARIANCE")
    var_hdu.header["BUNIT"] = ("adu**2", "")
    var_hdu.header["VARORIG"] = ("estimated", "no variance given: sigma-clipped std squared")
    var_hdu.header["VARSIG"] = (float(sigma), "[adu] clipped std of source-masked pixels")
    var_hdu.header["VARBKG"] = (float(background), "[adu] clipped median of the same pixels")
    var_hdu.header.add_comment("Background noise only: no source Poisson term (no gain is known).")
    return fits.HDUList([primary, sci, psf_hdu, var_hdu])

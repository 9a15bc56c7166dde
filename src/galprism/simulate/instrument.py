"""The two simulated instruments: HSC-like i band and HST/ACS F814W.

An :class:`Instrument` holds what the rendering needs: pixel scale, the PSF images
(odd-sized, centered, unit sum), the noise added to every cutout, and the flux convention.
Both instruments write fluxes in counts on an AB zero point of 27 (HSC coadd counts,
``FLUXMAG0 = 10**(0.4*27)``): ``mag = 27 - 2.5 log10(flux)``.

* ``hsc``: 0.168"/px; the real HSC i-band PSF of ``hsc_cosmos_35.npz`` (43x43) or of
  ``multiview/PSF_HSC.fits`` (31x31); white Gaussian noise at the level measured on the
  real HSC i band (:func:`galprism.simulate.noise.hsc_i_sigma`).
* ``hst``: 0.03"/px; the ACS PSF of a catalogue galaxy (one of the 70, drawn per cutout,
  re-centered on its centroid and trimmed to 51x51 with GalSim);
  noise is the real correlated ACS noise of the catalogue (GalSim ``CorrelatedNoise``
  from ``acs_I_unrot_sci_20_cf.fits`` beside the catalogue, else GalSim's own copy) at
  the median catalogue ``NOISE_VARIANCE``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits

from ..errors import ConfigError, PSFError
from .cosmos import CosmosCatalog
from .data import hsc_npz_path, multiview_dir
from .noise import HSC_BANDS, HSC_ZEROPOINT, hsc_i_sigma

__all__ = ["Instrument", "INSTRUMENTS", "HSC_PSFS", "make_instrument", "check_psf"]

INSTRUMENTS = ("hsc", "hst")
#: where the HSC-like PSF can come from
HSC_PSFS = ("npz", "multiview")
HST_NOISE_FILE = "acs_I_unrot_sci_20_cf.fits"


@dataclass(frozen=True)
class Instrument:
    """What a simulated survey looks like.

    Attributes
    ----------
    name
        ``"hsc"`` or ``"hst"``.
    band
        Filter name written to ``FILTER``.
    pixel_scale
        Arcsec per pixel.
    psfs
        ``(P, kh, kw)`` float64 PSF images, odd-sized, peak at the center, unit sum.
    psf_origin
        Where the PSFs come from (written to headers).
    noise_sigma
        Standard deviation of the added noise per pixel (counts).
    noise_origin
        How ``noise_sigma`` was obtained.
    correlated_noise
        GalSim noise model used instead of white noise (HST), or None.
    zeropoint
        AB zero point of the counts.
    bunit
        ``BUNIT`` of the images.
    default_size
        Default cutout side in pixels.
    truth_fwhm
        FWHM (arcsec) of the Gaussian that band-limits the intrinsic (PSF-free) truth.
    hst_noise_psf
        Key identifying the PSF for the cached HST-noise ratios (None: compute them).
    """

    name: str
    band: str
    pixel_scale: float
    psfs: np.ndarray
    psf_origin: str
    noise_sigma: float
    noise_origin: str
    correlated_noise: galsim.BaseCorrelatedNoise | None = field(
        default=None, repr=False, compare=False
    )
    zeropoint: float = HSC_ZEROPOINT
    bunit: str = "count"
    default_size: int = 48
    truth_fwhm: float = 0.2
    hst_noise_psf: str | None = None


def check_psf(psf: np.ndarray, what: str) -> np.ndarray:
    """Validate and normalise one PSF image for the simulator.

    Parameters
    ----------
    psf
        2-D kernel.
    what
        Name for error messages.

    Returns
    -------
    numpy.ndarray
        float64 copy with unit sum.

    Raises
    ------
    PSFError
        If it is not 2-D, has an even side, non-finite values, a non-positive sum, or its
        centroid is more than one pixel from the central pixel (the tolerance of
        :func:`galprism.operators.validate_psf`).
    """
    psf = np.array(psf, dtype=np.float64)
    if psf.ndim != 2:
        raise PSFError(f"{what}: a PSF must be 2-D, got shape {psf.shape}")
    if psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise PSFError(f"{what}: PSF sides must be odd, got {psf.shape}")
    if not np.all(np.isfinite(psf)):
        raise PSFError(f"{what}: PSF has non-finite values")
    total = psf.sum()
    if not total > 0:
        raise PSFError(f"{what}: PSF sum is {total}, not positive")
    psf = psf / total
    yy, xx = np.indices(psf.shape)
    cy, cx = float((psf * yy).sum()), float((psf * xx).sum())
    if math.hypot(cy - psf.shape[0] // 2, cx - psf.shape[1] // 2) > 1.0:
        raise PSFError(
            f"{what}: PSF centroid ({cx:.2f}, {cy:.2f}) is more than 1 pixel from the center"
        )
    return psf


def _hsc(
    data_dir: str | os.PathLike[str] | None, psf: str, noise_sigma: float | None
) -> Instrument:
    band = HSC_BANDS.index("i")
    if psf == "npz":
        path = hsc_npz_path(data_dir)
        with np.load(path, allow_pickle=False) as npz:
            kernel = check_psf(npz["psfs"][band], f"{path}[psfs][2]")
        origin = "hsc_cosmos_35.npz psfs[2] (HSC i)"
    elif psf == "multiview":
        path = multiview_dir(data_dir) / "PSF_HSC.fits"
        kernel = check_psf(fits.getdata(path)[band], f"{path}[i]")
        origin = "multiview/PSF_HSC.fits[2] (HSC i)"
    else:
        raise ConfigError(f"HSC PSF {psf!r}: must be one of {', '.join(HSC_PSFS)}")
    if noise_sigma is None:
        noise_sigma, noise_origin = (
            hsc_i_sigma(data_dir),
            "sqrt(median variance) of hsc_cosmos_35.npz i band",
        )
    else:
        noise_origin = "given"
    return Instrument(
        name="hsc",
        band="HSC-I",
        pixel_scale=0.168,
        psfs=kernel[None],
        psf_origin=origin,
        noise_sigma=float(noise_sigma),
        noise_origin=noise_origin,
        default_size=48,
        truth_fwhm=0.2,
        hst_noise_psf=psf,
    )


def _centered_acs_psf(psf: np.ndarray, size: int = 51) -> np.ndarray:
    """An ACS PSF re-centered on its centroid, on a ``size`` x ``size`` grid (GalSim shift).

    The catalogue's 65x51 PSF stamps have centroids up to 1.2 px from their central
    pixel; a centered kernel keeps the simulated galaxies where their truth says they are.
    """
    image = galsim.Image(np.asarray(psf, dtype=np.float64), scale=0.03)
    yy, xx = np.indices(psf.shape)
    total = psf.sum()
    # Centroid relative to the image's true center, in arcsec.
    dx = ((psf * xx).sum() / total - 0.5 * (psf.shape[1] - 1)) * 0.03
    dy = ((psf * yy).sum() / total - 0.5 * (psf.shape[0] - 1)) * 0.03
    ii = galsim.InterpolatedImage(image, x_interpolant="lanczos3", flux=1.0).shift(-dx, -dy)
    return ii.drawImage(nx=size, ny=size, scale=0.03, method="no_pixel").array


def _hst(catalog: CosmosCatalog, noise_sigma: float | None) -> Instrument:
    psfs = [
        check_psf(
            _centered_acs_psf(catalog.psf_image(r)), f"{catalog.dir}: ACS PSF of IDENT {r.ident}"
        )
        for r in catalog.records
    ]
    # Native stamp units are electrons/s on the ACS zero point; convert to counts on ZP 27.
    scale = 10.0 ** (0.4 * (HSC_ZEROPOINT - catalog.acs_zeropoint))
    variance = float(np.median([r.noise_variance for r in catalog.records])) * scale**2
    if noise_sigma is not None:
        variance, origin = float(noise_sigma) ** 2, "given"
    else:
        origin = "median catalogue NOISE_VARIANCE, ACS correlation function"
    cf_path = catalog.dir / HST_NOISE_FILE
    if not cf_path.is_file():
        # GalSim installs the same ACS correlation function in its share folder.
        cf_path = Path(galsim.meta_data.share_dir) / HST_NOISE_FILE
    if not cf_path.is_file():
        raise ConfigError(
            f"{HST_NOISE_FILE}: neither beside {catalog.path} nor in GalSim's share folder; "
            "the HST-like instrument takes its correlated noise from it"
        )
    noise = galsim.getCOSMOSNoise(file_name=str(cf_path), variance=variance, cosmos_scale=0.03)
    return Instrument(
        name="hst",
        band="ACS-F814W",
        pixel_scale=0.03,
        psfs=np.stack(psfs),
        psf_origin="COSMOS catalogue ACS PSFs, re-centered, 51x51",
        noise_sigma=math.sqrt(variance),
        noise_origin=origin,
        correlated_noise=noise,
        default_size=256,
        truth_fwhm=0.12,
        hst_noise_psf=None,
    )


def make_instrument(
    name: str,
    catalog: CosmosCatalog,
    *,
    psf: str = "npz",
    noise_sigma: float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> Instrument:
    """Build a simulated instrument.

    Parameters
    ----------
    name
        ``"hsc"`` or ``"hst"``.
    catalog
        The COSMOS catalogue (the HST instrument takes its PSFs and noise from it).
    psf
        HSC only: ``"npz"`` (hsc_cosmos_35.npz, 43x43) or ``"multiview"`` (PSF_HSC.fits,
        31x31).
    noise_sigma
        Override of the added noise's standard deviation (counts, ZP 27).
    data_dir
        Data folder.

    Returns
    -------
    Instrument

    Raises
    ------
    ConfigError
        If ``name`` or ``psf`` is unknown, ``noise_sigma`` is not positive, or data is missing.
    """
    if noise_sigma is not None and not (noise_sigma > 0 and math.isfinite(noise_sigma)):
        raise ConfigError(f"noise sigma {noise_sigma!r}: must be a positive number")
    if name == "hsc":
        return _hsc(data_dir, psf, noise_sigma)
    if name == "hst":
        return _hst(catalog, noise_sigma)
    raise ConfigError(f"instrument {name!r}: must be one of {', '.join(INSTRUMENTS)}")

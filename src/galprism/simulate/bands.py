"""Several HSC bands at once: colours, per-band PSFs and noise (``galprism simulate --bands``).

The COSMOS stamps are single-band (HST F814W), so a galaxy's morphology is the same in
every band up to two things:

* **its colour**: the band-``b`` image is scaled by the galaxy's own catalogue colour,
  ``10**(-0.4 (HSC_b - HSC_i))`` (``HSC_g`` ... ``HSC_y`` of the catalogue's ``_fits``
  companion), so that its magnitudes differ from the rendered i-band magnitude exactly by
  its catalogue colours;
* **a radial colour gradient** (``colour_gradient`` ``w``, default 0.3): bands bluer than
  i take a fraction ``w_b = w (lambda_i - lambda_b) / (lambda_i - lambda_g)`` of their
  light from a copy of the galaxy smoothed by a Gaussian of ``gradient_fwhm`` (0.5")
  instead of the galaxy itself, ``I_b = c_b ((1 - w_b) T + w_b (G * T))``. Total fluxes
  (and so the catalogue colours) are unchanged; the outer light is bluer than the inner
  light, as in most galaxies (bulges red, discs blue). The catalogue has integrated
  magnitudes only, so the gradient's size is a model choice, not a measurement; i, z and
  y keep the F814W morphology (making them more concentrated would need a sharpened copy,
  which has negative pixels).

Stars get colours from an approximate main-sequence stellar locus (:data:`STELLAR_LOCUS`),
at a position along it drawn uniformly. Sersic galaxies (the bright end) take the colours
of a catalogue galaxy of the split drawn uniformly, and the same gradient.

PSFs are the real HSC PSFs of each band (``hsc_cosmos_35.npz`` ``psfs[b]`` or
``multiview/PSF_HSC.fits[b]``); the noise of each band is ``sqrt(median variance)`` of that
band of ``hsc_cosmos_35.npz`` (:func:`hsc_band_sigmas`). All bands are HSC coadd counts on
AB zero point 27.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from scipy.ndimage import gaussian_filter

from ..errors import ConfigError
from .cosmos import HSC_MAG_BANDS, GalaxyRecord
from .data import hsc_npz_path, multiview_dir
from .instrument import check_psf
from .noise import HSC_BANDS, source_mask

__all__ = [
    "BAND_FILTERS",
    "BAND_WAVELENGTHS",
    "STELLAR_LOCUS",
    "BandSet",
    "parse_bands",
    "hsc_band_sigmas",
    "measure_band_noise",
    "make_bandset",
    "gradient_weights",
    "galaxy_colours",
    "star_colours",
    "coloured_images",
]

#: FITS ``FILTERn`` names of the HSC bands
BAND_FILTERS = {"g": "HSC-G", "r": "HSC-R", "i": "HSC-I", "z": "HSC-Z", "y": "HSC-Y"}
#: effective wavelengths of the HSC filters, Angstrom (Kawanomoto et al. 2018)
BAND_WAVELENGTHS = {"g": 4754.0, "r": 6175.0, "i": 7711.0, "z": 8898.0, "y": 9762.0}
#: approximate main-sequence stellar locus, nodes of (g-r, r-i, i-z, z-y), blue to red:
#: read from the SDSS stellar-locus tables (Covey et al. 2007) for g, r, i, z, with z-y
#: growing with i-z as in HSC photometry; good to about 0.1 mag, enough to give stars
#: plausible colours
STELLAR_LOCUS = np.array(
    [
        [0.25, 0.08, 0.01, 0.00],
        [0.45, 0.15, 0.05, 0.02],
        [0.65, 0.22, 0.09, 0.04],
        [0.95, 0.35, 0.17, 0.07],
        [1.25, 0.60, 0.30, 0.12],
        [1.40, 0.90, 0.45, 0.20],
        [1.45, 1.30, 0.65, 0.32],
        [1.50, 1.70, 0.90, 0.45],
    ]
)


@dataclass(frozen=True)
class BandSet:
    """The bands of a multi-band batch.

    Attributes
    ----------
    bands
        Band names (``"g"`` ... ``"y"``), in output order.
    filters
        ``FILTERn`` names (``"HSC-G"`` ...).
    psfs
        ``(C, kh, kw)`` float64 PSFs, unit sum, one per band.
    sigmas
        ``(C,)`` added noise standard deviation per band, counts (ZP 27).
    psf_origin, noise_origin
        Where they come from.
    gradient
        Colour-gradient amplitude ``w`` (0: every band a scaled copy of the i-band image).
    gradient_fwhm
        FWHM (arcsec) of the smoothing of the gradient's outer component.
    """

    bands: tuple[str, ...]
    filters: tuple[str, ...]
    psfs: np.ndarray
    sigmas: np.ndarray
    psf_origin: str
    noise_origin: str
    gradient: float
    gradient_fwhm: float

    @property
    def reference(self) -> int:
        """Index of the band whose fluxes fill the single-band columns: i, else the first."""
        return self.bands.index("i") if "i" in self.bands else 0


def parse_bands(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Band names from ``"g,r,i,z,y"`` (or a sequence), checked.

    Raises
    ------
    ConfigError
        If a band is not one of g, r, i, z, y, or is repeated.
    """
    names = [b.strip() for b in (text.split(",") if isinstance(text, str) else text)]
    names = [b for b in names if b]
    if not names:
        raise ConfigError("bands: none given (use e.g. g,r,i,z,y)")
    unknown = [b for b in names if b not in HSC_BANDS]
    if unknown:
        raise ConfigError(f"bands: unknown band {unknown[0]!r}: choose from {','.join(HSC_BANDS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"bands: {','.join(names)} names a band twice")
    return tuple(names)


def hsc_band_sigmas(
    bands: tuple[str, ...], data_dir: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """``sqrt(median variance)`` of each band of the real ``hsc_cosmos_35.npz`` (counts, ZP 27).

    Parameters
    ----------
    bands
        Band names.
    data_dir
        Data folder.

    Returns
    -------
    numpy.ndarray
        ``(C,)`` standard deviations.
    """
    with np.load(hsc_npz_path(data_dir), allow_pickle=False) as npz:
        variance = np.asarray(npz["variance"], dtype=np.float64)
    return np.array([math.sqrt(np.median(variance[HSC_BANDS.index(b)])) for b in bands])


def measure_band_noise(data_dir: str | os.PathLike[str] | None = None) -> dict[str, dict]:
    """Both noise estimates of every band of ``hsc_cosmos_35.npz`` (for the documentation).

    Per band: ``sigma_variance_plane`` (the default), ``sigma_clipped`` (sigma-clipped std
    of source-masked pixels), ``background`` (their clipped median) and
    ``depth_5sigma`` (5-sigma point-source AB magnitude with the band's PSF).

    Parameters
    ----------
    data_dir
        Data folder.

    Returns
    -------
    dict
        Band name -> the four numbers.
    """
    out: dict[str, dict] = {}
    with np.load(hsc_npz_path(data_dir), allow_pickle=False) as npz:
        for k, b in enumerate(HSC_BANDS):
            image = np.asarray(npz["images"][k], dtype=np.float64)
            sigma = math.sqrt(float(np.median(np.asarray(npz["variance"][k], dtype=np.float64))))
            _, bg, std = sigma_clipped_stats(image, mask=source_mask(image), sigma=3.0, maxiters=10)
            psf = np.asarray(npz["psfs"][k], dtype=np.float64)
            psf = psf / psf.sum()
            nea = 1.0 / float((psf**2).sum())
            out[b] = {
                "sigma_variance_plane": sigma,
                "sigma_clipped": float(std),
                "background": float(bg),
                "depth_5sigma": 27.0 - 2.5 * math.log10(5.0 * sigma * math.sqrt(nea)),
            }
    return out


def make_bandset(
    bands: tuple[str, ...],
    *,
    psf: str = "npz",
    data_dir: str | os.PathLike[str] | None = None,
    gradient: float = 0.3,
    gradient_fwhm: float = 0.5,
) -> BandSet:
    """The per-band PSFs and noise of the real HSC data.

    Parameters
    ----------
    bands
        Band names.
    psf
        ``"npz"`` (``hsc_cosmos_35.npz`` ``psfs``, 43x43) or ``"multiview"``
        (``PSF_HSC.fits``, 31x31).
    data_dir
        Data folder.
    gradient, gradient_fwhm
        Colour gradient (see the module docstring).

    Returns
    -------
    BandSet

    Raises
    ------
    ConfigError
        On an unknown PSF source or a gradient outside [0, 1].
    """
    if not (0.0 <= gradient <= 1.0 and gradient_fwhm > 0):
        raise ConfigError(
            f"colour gradient {gradient} (must be in [0, 1]) with FWHM {gradient_fwhm} "
            "(must be > 0)"
        )
    idx = [HSC_BANDS.index(b) for b in bands]
    if psf == "npz":
        path = hsc_npz_path(data_dir)
        with np.load(path, allow_pickle=False) as npz:
            kernels = [check_psf(npz["psfs"][k], f"{path}[psfs][{k}]") for k in idx]
        origin = f"hsc_cosmos_35.npz psfs[{','.join(map(str, idx))}] (HSC {''.join(bands)})"
    elif psf == "multiview":
        path = multiview_dir(data_dir) / "PSF_HSC.fits"
        cube = fits.getdata(path)
        kernels = [check_psf(cube[k], f"{path}[{HSC_BANDS[k]}]") for k in idx]
        origin = f"multiview/PSF_HSC.fits[{','.join(map(str, idx))}] (HSC {''.join(bands)})"
    else:
        raise ConfigError(f"HSC PSF {psf!r}: must be one of npz, multiview")
    return BandSet(
        bands=tuple(bands),
        filters=tuple(BAND_FILTERS[b] for b in bands),
        psfs=np.stack(kernels),
        sigmas=hsc_band_sigmas(tuple(bands), data_dir),
        psf_origin=origin,
        noise_origin="sqrt(median variance) of each hsc_cosmos_35.npz band",
        gradient=float(gradient),
        gradient_fwhm=float(gradient_fwhm),
    )


def gradient_weights(bands: tuple[str, ...], gradient: float) -> np.ndarray:
    """Fraction of each band's light in the smoothed component: ``w`` at g, 0 at i and redder.

    Linear in effective wavelength between g and i.
    """
    lg, li = BAND_WAVELENGTHS["g"], BAND_WAVELENGTHS["i"]
    return np.array(
        [gradient * min(1.0, max(0.0, (li - BAND_WAVELENGTHS[b]) / (li - lg))) for b in bands]
    )


def galaxy_colours(record: GalaxyRecord, bands: tuple[str, ...], where: str) -> np.ndarray:
    """Flux ratios ``10**(-0.4 (HSC_b - HSC_i))`` of one catalogue galaxy, one per band.

    Raises
    ------
    ConfigError
        If the catalogue has no finite HSC magnitudes for this galaxy (``where`` names
        the catalogue).
    """
    mags = record.hsc_mags
    if len(mags) != len(HSC_MAG_BANDS) or not all(math.isfinite(m) for m in mags):
        raise ConfigError(
            f"{where}: no HSC_g..HSC_y magnitudes for IDENT {record.ident} (the catalogue's "
            "_fits companion gives the colours of --bands)"
        )
    m_i = mags[HSC_MAG_BANDS.index("i")]
    return np.array([10.0 ** (-0.4 * (mags[HSC_MAG_BANDS.index(b)] - m_i)) for b in bands])


def star_colours(rng: np.random.Generator, bands: tuple[str, ...]) -> np.ndarray:
    """Flux ratios to i of a star drawn uniformly along :data:`STELLAR_LOCUS`."""
    t = rng.uniform(0.0, len(STELLAR_LOCUS) - 1)
    k = min(int(t), len(STELLAR_LOCUS) - 2)
    gr, ri, iz, zy = (1.0 - (t - k)) * STELLAR_LOCUS[k] + (t - k) * STELLAR_LOCUS[k + 1]
    minus_i = {"g": gr + ri, "r": ri, "i": 0.0, "z": -iz, "y": -iz - zy}
    return np.array([10.0 ** (-0.4 * minus_i[b]) for b in bands])


def coloured_images(
    image: np.ndarray,
    colours: np.ndarray,
    weights: np.ndarray,
    smooth_sigma_px: float,
) -> np.ndarray:
    """``(C, H, W)`` band images of one source from its i-band intrinsic image.

    ``colours[b] * ((1 - weights[b]) image + weights[b] G * image)``, ``G`` a Gaussian of
    ``smooth_sigma_px`` pixels (light smoothed beyond the canvas edge is lost, as any
    light falling off a canvas).
    """
    out = colours[:, None, None] * image[None]
    if np.any(weights > 0):
        smooth = gaussian_filter(image, smooth_sigma_px, mode="constant", truncate=4.0)
        out = out + (colours * weights)[:, None, None] * (smooth - image)[None]
    return out

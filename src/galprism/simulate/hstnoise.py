"""How much of the HST stamps' own noise survives into a simulated cutout.

Every COSMOS stamp carries real, correlated HST noise. Rendered at the HSC pixel scale
and blurred by the HSC PSF, that noise becomes part of the "truth" and adds to the noise
of the observation. It is only harmless when it sits well below the noise the simulator
adds, so its level is measured for every galaxy with GalSim's own noise propagation:
``RealGalaxy.noise`` (the stamp's correlated noise, HST PSF deconvolved) convolved with
what the renderer applies, i.e. the truth kernel and the output pixel (truth) and then
the instrument PSF (observation).

GalSim expresses that noise in the stamp's per-pixel units; an image drawn in flux per
output pixel scales it by the pixel-area ratio ``(scale / 0.03)**2`` (checked by a Monte
Carlo in the tests). The standard deviations are in counts at the galaxy's catalogue
flux and scale linearly with the flux a galaxy is rendered at.

Each galaxy takes about 0.3 s, so values for the default HSC PSFs and the catalogue of
``docs/simulate.md`` are cached in ``hst_noise.json`` beside this module, keyed by the
PSF's SHA-256, the pixel scale and the truth kernel, and used only for a catalogue with
the same :attr:`~galprism.simulate.cosmos.CosmosCatalog.fingerprint`;
``scripts/make_cosmos_tables.py`` regenerates the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources

import galsim
import numpy as np

from .cosmos import CosmosCatalog, GalaxyRecord

__all__ = [
    "NOISE_FILE",
    "NOISE_GSPARAMS",
    "HSTNoise",
    "psf_key",
    "hst_noise",
    "hst_noise_table",
    "load_cache",
]

NOISE_FILE = "hst_noise.json"
#: looser than GalSim's defaults: the noise variance changes by < 0.1% and runs 3x faster
NOISE_GSPARAMS = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=1e-2)


@dataclass(frozen=True)
class HSTNoise:
    """Standard deviation per output pixel of a stamp's own noise at its catalogue flux.

    Attributes
    ----------
    ident
        COSMOS IDENT.
    obs_std
        In the observation (truth kernel, pixel, instrument PSF), counts.
    truth_std
        In the PSF-free truth image (truth kernel and pixel only), counts.
    """

    ident: int
    obs_std: float
    truth_std: float


def psf_key(psf: np.ndarray, pixel_scale: float, truth_fwhm: float) -> str:
    """Cache key of a rendering setup: SHA-256 of the float64 PSF plus the two scales."""
    digest = hashlib.sha256(np.ascontiguousarray(psf, dtype=np.float64).tobytes()).hexdigest()
    return f"{digest[:16]}-{pixel_scale:.4f}-{truth_fwhm:.4f}"


def hst_noise(
    catalog: CosmosCatalog,
    record: GalaxyRecord,
    psf: np.ndarray,
    pixel_scale: float,
    truth_fwhm: float,
    zeropoint: float,
) -> HSTNoise:
    """Measure one galaxy's stamp noise after rendering (GalSim noise propagation).

    Parameters
    ----------
    catalog
        The COSMOS catalogue.
    record
        The galaxy.
    psf
        Instrument PSF image (unit sum) at ``pixel_scale``.
    pixel_scale
        Output pixel scale, arcsec.
    truth_fwhm
        FWHM of the Gaussian truth kernel, arcsec.
    zeropoint
        AB zero point of the output counts.

    Returns
    -------
    HSTNoise
    """
    rg = catalog.real_galaxy(record, flux=record.flux(zeropoint), gsparams=NOISE_GSPARAMS)
    kernel = galsim.Gaussian(fwhm=truth_fwhm, gsparams=NOISE_GSPARAMS)
    pixel = galsim.Pixel(pixel_scale, gsparams=NOISE_GSPARAMS)
    inst = galsim.InterpolatedImage(
        galsim.Image(np.asarray(psf, dtype=np.float64), scale=pixel_scale),
        flux=1.0,
        gsparams=NOISE_GSPARAMS,
    )
    area = (pixel_scale / record.pixel_scale) ** 2
    truth_var = galsim.Convolve([rg, kernel, pixel], gsparams=NOISE_GSPARAMS).noise.getVariance()
    obs_var = galsim.Convolve(
        [rg, kernel, pixel, inst], gsparams=NOISE_GSPARAMS
    ).noise.getVariance()
    return HSTNoise(record.ident, math.sqrt(obs_var) * area, math.sqrt(truth_var) * area)


def load_cache(fingerprint: str) -> dict[str, dict]:
    """The shipped cache: key -> {"origin": ..., "galaxies": {ident: [obs_std, truth_std]}}.

    Parameters
    ----------
    fingerprint
        :attr:`~galprism.simulate.cosmos.CosmosCatalog.fingerprint` of the catalogue in
        use; the cache is empty for any other catalogue (its IDENTs may coincide).
    """
    path = resources.files(__package__).joinpath(NOISE_FILE)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("catalog_fingerprint") != fingerprint:
        return {}
    return data["setups"]


def hst_noise_table(
    catalog: CosmosCatalog,
    records: list[GalaxyRecord],
    psf: np.ndarray,
    pixel_scale: float,
    truth_fwhm: float,
    zeropoint: float,
    *,
    use_cache: bool = True,
) -> dict[int, HSTNoise]:
    """Stamp-noise levels of ``records`` for a rendering setup, from the cache when it has them.

    Parameters
    ----------
    catalog, psf, pixel_scale, truth_fwhm, zeropoint
        As in :func:`hst_noise`.
    records
        Galaxies to measure.
    use_cache
        Read the shipped values when the catalogue and the setup match (the zero point is
        applied here, so it does not enter the key).

    Returns
    -------
    dict
        IDENT -> :class:`HSTNoise`.
    """
    key = psf_key(psf, pixel_scale, truth_fwhm)
    cached = load_cache(catalog.fingerprint).get(key) if use_cache else None
    out: dict[int, HSTNoise] = {}
    for rec in records:
        entry = cached["galaxies"].get(str(rec.ident)) if cached else None
        if entry is not None:
            # Cache values are at ZP 27; rescale to the requested zero point.
            f = 10.0 ** (0.4 * (zeropoint - cached["zeropoint"]))
            out[rec.ident] = HSTNoise(rec.ident, entry[0] * f, entry[1] * f)
        else:
            out[rec.ident] = hst_noise(catalog, rec, psf, pixel_scale, truth_fwhm, zeropoint)
    return out

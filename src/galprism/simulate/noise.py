"""The HSC i-band noise level, measured on the real HSC images shipped with the data.

Two real i-band images are available and are measured in two ways:

* ``hsc/hsc_cosmos_35.npz`` (HSC coadd counts, AB zero point 27): the median of its
  variance plane, and the sigma-clipped standard deviation of its pixels once the
  sources found by photutils are masked out;
* ``multiview/Cut_HSC.fits``: the sigma-clipped standard deviation of the i-band slice
  (with and without the same source mask). That cube was renormalised by its authors
  (each band sums to 1999), so its noise is only meaningful relative to its own flux,
  and it carries no zero point: it is reported, not used for the default.

The simulator's default noise is ``sqrt(median variance)`` of the npz i band, the value
the HSC pipeline itself assigns; the two npz estimates agree to 5% (see
``docs/simulate.md``). The background levels measured on the same source-free pixels set
the scale of the simulated sky-subtraction residual.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from photutils.segmentation import detect_sources, detect_threshold
from scipy.ndimage import binary_dilation

from .data import hsc_npz_path, multiview_dir

__all__ = [
    "HSC_BANDS",
    "HSC_ZEROPOINT",
    "NoiseMeasurement",
    "measure_hsc_noise",
    "hsc_i_sigma",
    "source_mask",
]

#: band order of the npz and of the multiview cube
HSC_BANDS = ("g", "r", "i", "z", "y")
#: AB zero point of HSC coadd counts (FLUXMAG0 = 10**(0.4*27))
HSC_ZEROPOINT = 27.0


@dataclass(frozen=True)
class NoiseMeasurement:
    """The i-band noise of the real HSC images (see the module docstring).

    Attributes
    ----------
    npz_sigma_variance_plane
        ``sqrt(median(variance))`` of the npz i band, counts (ZP 27).
    npz_sigma_clipped
        Sigma-clipped std of source-masked npz i-band pixels, counts.
    npz_background
        Sigma-clipped median of the same pixels, counts.
    npz_source_fraction
        Fraction of npz pixels masked as source.
    cut_sigma_clipped
        Sigma-clipped std of the whole Cut_HSC i slice, in that cube's own units.
    cut_sigma_clipped_masked
        The same on source-masked pixels.
    cut_background_masked
        Sigma-clipped median of those pixels, cube units.
    cut_total_flux
        Sum of the Cut_HSC i slice (its normalisation), cube units.
    """

    npz_sigma_variance_plane: float
    npz_sigma_clipped: float
    npz_background: float
    npz_source_fraction: float
    cut_sigma_clipped: float
    cut_sigma_clipped_masked: float
    cut_background_masked: float
    cut_total_flux: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict for JSON output."""
        return asdict(self)


def source_mask(
    image: np.ndarray, n_sigma: float = 2.0, n_pixels: int = 5, grow: int = 3
) -> np.ndarray:
    """Pixels covered by detected sources, grown by ``grow`` pixels (photutils segmentation).

    Parameters
    ----------
    image
        2-D image.
    n_sigma
        Detection threshold above the sigma-clipped background, in its standard deviations.
    n_pixels
        Minimum connected pixels of a source.
    grow
        Dilation of the segments so that faint wings are excluded too.

    Returns
    -------
    numpy.ndarray
        Boolean array, True on source pixels.
    """
    threshold = detect_threshold(image, n_sigma)
    segments = detect_sources(image, threshold, n_pixels)
    if segments is None:
        return np.zeros(image.shape, dtype=bool)
    return binary_dilation(segments.data > 0, iterations=grow)


def measure_hsc_noise(data_dir: str | os.PathLike[str] | None = None) -> NoiseMeasurement:
    """Measure the i-band noise of the two real HSC images (takes well under a second).

    Parameters
    ----------
    data_dir
        Data folder (see :func:`galprism.simulate.data.find_data_dir`).

    Returns
    -------
    NoiseMeasurement
    """
    band = HSC_BANDS.index("i")
    with np.load(hsc_npz_path(data_dir), allow_pickle=False) as npz:
        image = np.asarray(npz["images"][band], dtype=np.float64)
        variance = np.asarray(npz["variance"][band], dtype=np.float64)
    smask = source_mask(image)
    _, npz_bg, npz_std = sigma_clipped_stats(image, mask=smask, sigma=3.0, maxiters=10)
    cut = np.asarray(fits.getdata(multiview_dir(data_dir) / "Cut_HSC.fits")[band], dtype=np.float64)
    _, _, cut_std = sigma_clipped_stats(cut, sigma=3.0, maxiters=10)
    cmask = source_mask(cut)
    _, cut_bg, cut_std_masked = sigma_clipped_stats(cut, mask=cmask, sigma=3.0, maxiters=10)
    return NoiseMeasurement(
        npz_sigma_variance_plane=float(math.sqrt(np.median(variance))),
        npz_sigma_clipped=float(npz_std),
        npz_background=float(npz_bg),
        npz_source_fraction=float(smask.mean()),
        cut_sigma_clipped=float(cut_std),
        cut_sigma_clipped_masked=float(cut_std_masked),
        cut_background_masked=float(cut_bg),
        cut_total_flux=float(cut.sum()),
    )


def hsc_i_sigma(data_dir: str | os.PathLike[str] | None = None) -> float:
    """Default simulated noise: ``sqrt(median variance)`` of the real npz i band (counts, ZP 27)."""
    band = HSC_BANDS.index("i")
    with np.load(hsc_npz_path(data_dir), allow_pickle=False) as npz:
        return float(math.sqrt(np.median(np.asarray(npz["variance"][band], dtype=np.float64))))

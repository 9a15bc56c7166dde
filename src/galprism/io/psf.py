"""PSF handling: one validated kernel per band, and kernels for a finer prior grid.

When the prior's grid is ``f`` times finer than the cutout's, the forward model is
``Downsample(f) o Convolve(K)`` on the fine grid, and ``K`` has to be built from the PSF
image that the survey gives on the *coarse* grid. That image is the optical PSF already
convolved with a coarse pixel, and the block sum of ``Downsample`` applies the coarse
pixel again; so ``K`` is GalSim's interpolation of the coarse PSF (``InterpolatedImage``,
quintic), deconvolved by the coarse pixel and convolved by the fine one, drawn on the fine
grid. On Moffat PSFs of 1.5-4 coarse pixels FWHM and factors 2-6 the resulting forward
model matches a direct coarse rendering of a Sersic galaxy to <= 1.2 % of its peak,
whereas simply interpolating the coarse PSF (which counts the coarse pixel twice) is off
by up to 6 % (scratch experiment, see docs/user-guide.md).
"""

from __future__ import annotations

import galsim
import numpy as np
import torch

from ..errors import PSFError
from ..operators import validate_psf

__all__ = ["prepare_psf", "refine_psf", "pad_psf"]


def prepare_psf(data: np.ndarray, n_bands: int, what: str) -> tuple[np.ndarray, bool]:
    """Check a PSF and give one unit-sum kernel per band.

    Parameters
    ----------
    data
        ``(kh, kw)`` (used for every band) or ``(C, kh, kw)``.
    n_bands
        Number of bands of the image.
    what
        How the PSF is named in messages (``file.fits[PSF]``).

    Returns
    -------
    psf, renormalised
        ``(C, kh, kw)`` float64 kernels and whether they had to be rescaled to unit sum.

    Raises
    ------
    PSFError
        On a wrong band count, an even size, an off-centre kernel, non-finite values or a
        non-positive sum.
    """
    arr = np.asarray(data, dtype=np.float64)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = np.broadcast_to(arr, (n_bands, *arr.shape))
    elif arr.ndim != 3:
        raise PSFError(f"{what}: PSF must be 2-D or (bands, ny, nx), got shape {arr.shape}")
    if arr.shape[0] != n_bands:
        raise PSFError(f"{what}: PSF has {arr.shape[0]} band(s) but the image has {n_bands}")
    psf, renormalised = validate_psf(torch.from_numpy(np.array(arr, dtype=np.float64)), what)
    return psf.numpy(), renormalised


def refine_psf(psf: np.ndarray, factor: int) -> np.ndarray:
    """Bring coarse-grid PSFs to a grid ``factor`` times finer (see the module docstring).

    Parameters
    ----------
    psf
        ``(C, kh, kw)`` unit-sum kernels on the cutout's grid.
    factor
        Integer ratio of the cutout's pixel scale to the prior's.

    Returns
    -------
    numpy.ndarray
        ``(C, kh * f (+1 if even), kw * f (+1 if even))`` unit-sum kernels, centred on
        the central fine pixel.
    """
    f = int(factor)
    if f == 1:
        return psf
    c, kh, kw = psf.shape
    ny = kh * f + (1 - (kh * f) % 2)
    nx = kw * f + (1 - (kw * f) % 2)
    out = np.empty((c, ny, nx))
    coarse, fine = 1.0, 1.0 / f  # only the ratio matters
    for b in range(c):
        ii = galsim.InterpolatedImage(
            galsim.Image(np.ascontiguousarray(psf[b]), scale=coarse), x_interpolant="quintic"
        )
        profile = galsim.Convolve(ii, galsim.Deconvolve(galsim.Pixel(coarse)), galsim.Pixel(fine))
        try:
            img = profile.drawImage(nx=nx, ny=ny, scale=fine, method="no_pixel").array
        except galsim.GalSimError as exc:
            raise PSFError(f"PSF could not be resampled to the prior grid ({exc})") from exc
        total = img.sum()
        if not np.isfinite(total) or total <= 0:
            raise PSFError("PSF resampled to the prior grid has a non-positive sum")
        out[b] = img / total
    return out


def pad_psf(psf: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pad ``(C, kh, kw)`` kernels symmetrically to the odd ``size`` (ny, nx)."""
    _, kh, kw = psf.shape
    ny, nx = size
    py, px = (ny - kh) // 2, (nx - kw) // 2
    return np.pad(psf, ((0, 0), (py, ny - kh - py), (px, nx - kw - px)))

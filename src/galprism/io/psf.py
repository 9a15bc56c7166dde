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
by up to 6 % (docs/user-guide.md; ``tests/test_separate_observation.py`` checks 2 %).
"""

from __future__ import annotations

import math

import galsim
import numpy as np
import torch

from ..errors import PSFError
from ..notes import Note, NoteKind
from ..operators import validate_psf

__all__ = ["prepare_psf", "recenter_psf", "refine_psf", "pad_psf"]


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
        On a wrong band count, an even size, an off-center kernel, non-finite values or a
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


def _centroid(kernel: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` first moment of a 2-D kernel relative to its central pixel."""
    kh, kw = kernel.shape
    total = kernel.sum()
    cy = float((kernel.sum(axis=1) * (np.arange(kh) - (kh - 1) / 2)).sum() / total)
    cx = float((kernel.sum(axis=0) * (np.arange(kw) - (kw - 1) / 2)).sum() / total)
    return cx, cy


def _fourier_shift(kernel: np.ndarray, dx: float, dy: float) -> np.ndarray:
    ky = np.fft.fftfreq(kernel.shape[0])[:, None]
    kx = np.fft.fftfreq(kernel.shape[1])[None, :]
    phase = np.exp(-2j * np.pi * (ky * dy + kx * dx))
    return np.fft.ifft2(np.fft.fft2(kernel) * phase).real


def recenter_psf(
    data: np.ndarray, what: str, *, tolerance: float = 1.0, max_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, list[Note]]:
    """Shift kernels whose centroid is more than ``tolerance`` px off-center back onto it.

    The shift is a Fourier phase ramp on the kernel zero-padded by the shift's whole
    pixels plus one on each side: it moves the centroid by exactly the sub-pixel amount
    without wrapping light around, and it leaves the kernel's sum unchanged (the zero
    frequency is untouched), so no renormalisation is needed. An interpolating shift
    (``scipy.ndimage.shift``) would instead smooth the core and change the sum.

    Parameters
    ----------
    data
        ``(kh, kw)`` or ``(C, kh, kw)`` kernels (leading axes of length 1 allowed).
    what
        How the PSF is named in messages.
    tolerance
        Centroid offsets up to this many pixels are left as they are.
    max_size
        ``(ny, nx)``: the padded kernels are trimmed (symmetrically, to odd sizes) so as
        not to exceed it.

    Returns
    -------
    psf, notes
        The kernels (``data`` itself when none is shifted) and one note per shifted
        kernel, e.g. ``PSF f.fits[PSF] re-centered by (-0.74, -0.98) px``.

    Raises
    ------
    PSFError
        If a centroid is more than a quarter of the kernel's size off-center along an
        axis: such a kernel is more likely a wrong file than a shifted PSF.

    An even-sized kernel gets a zero row or column to make its size odd and is then
    re-centered whatever its offset. Kernels that are non-finite or do not have a positive
    sum are returned unchanged, for :func:`prepare_psf` to refuse with its own message.
    """
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim < 2 or not np.all(np.isfinite(arr)):
        return data, []
    kh, kw = arr.shape[-2:]
    kernels = arr.reshape(-1, kh, kw)
    sums = kernels.sum(axis=(-2, -1))
    if np.any(sums <= 0):
        return data, []
    even = kh % 2 == 0 or kw % 2 == 0
    if even:
        # A zero row/column makes the size odd; the kernel is then re-centered however
        # small its offset, since an even-sized kernel has no central pixel to be near.
        kernels = np.pad(kernels, ((0, 0), (0, 1 - kh % 2), (0, 1 - kw % 2)))
        kh, kw = kernels.shape[-2:]
    shifts: list[tuple[float, float] | None] = []
    for b, kernel in enumerate(kernels):
        cx, cy = _centroid(kernel)
        if math.hypot(cx, cy) <= (1e-9 if even else tolerance):
            shifts.append(None)
            continue
        if abs(cx) > kw / 4 or abs(cy) > kh / 4:
            band = f" band {b}" if len(kernels) > 1 else ""
            raise PSFError(
                f"{what}: PSF{band} is off-center: centroid at ({cx:+.2f}, {cy:+.2f}) px, more "
                f"than a quarter of its {kw}x{kh} size from the central pixel"
            )
        shifts.append((-cx, -cy))
    if all(s is None for s in shifts) and not even:
        return data, []
    size_note = f" padded from {arr.shape[-1]}x{arr.shape[-2]} to {kw}x{kh} and" if even else ""
    pad = max((math.ceil(max(abs(s[0]), abs(s[1]))) for s in shifts if s), default=0) + 1
    padded = np.pad(kernels, ((0, 0), (pad, pad), (pad, pad)))
    notes = []
    for b, shift in enumerate(shifts):
        band = f" band {b}" if len(kernels) > 1 else ""
        if shift is None:
            if even:
                text = f"PSF {what}{band}{size_note.removesuffix(' and')}"
                notes.append(Note(NoteKind.PSF_PADDED, text))
            continue
        dx, dy = shift
        # One correction of the remaining offset: the first moment of the sampled kernel
        # moves by the shift only up to the ringing of the unresolved core.
        out = _fourier_shift(padded[b], dx, dy)
        rx, ry = _centroid(out)
        out = _fourier_shift(out, -rx, -ry)
        padded[b] = out
        notes.append(
            Note(
                NoteKind.PSF_RECENTERED,
                f"PSF {what}{band}{size_note} re-centered by ({dx - rx:+.2f}, {dy - ry:+.2f}) px",
            )
        )
    if max_size is not None:
        ny = min(padded.shape[-2], max_size[0] - (1 - max_size[0] % 2))
        nx = min(padded.shape[-1], max_size[1] - (1 - max_size[1] % 2))
        oy, ox = (padded.shape[-2] - ny) // 2, (padded.shape[-1] - nx) // 2
        padded = padded[:, oy : oy + ny, ox : ox + nx]
    return padded.reshape(*arr.shape[:-2], *padded.shape[-2:]), notes


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
        ``(C, kh * f (+1 if even), kw * f (+1 if even))`` unit-sum kernels, centered on
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

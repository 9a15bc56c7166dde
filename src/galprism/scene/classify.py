"""Star or galaxy: does a point source fit a detection as well as an extended one?

At a source's position, two linear models are fitted by weighted least squares in a
window of the image, each with a free flux per band:

* **star**: the PSF placed at the position (:class:`~galprism.scene.placement.StarOperator`);
* **galaxy**: the PSF convolved with a round Gaussian of standard deviation ``sigma``
  pixels, for each ``sigma`` of a grid; the best one is kept.

Both models also try small sub-pixel shifts of the position (the same grid for both) so
that a centroid error does not make a bright star look extended. The galaxy family
contains the star (``sigma -> 0``), so ``delta_chi2 = chi2_star - chi2_galaxy >= 0`` up to
the grid; under the star hypothesis it behaves like a chi-square with about one degree
of freedom (the size), so the default threshold of 9 is roughly a 3-sigma preference for
an extended source. The decision is only as good as its window: neighbours inside it
should be masked out (``valid``), and a source much fainter than the noise is called a
star for lack of evidence of extent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..operators import validate_psf
from .placement import PlaceStamp

__all__ = ["StarGalaxyFit", "star_or_galaxy", "DEFAULT_SIGMAS"]

#: Gaussian sizes (pixels) tried for the extended model
DEFAULT_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


@dataclass(frozen=True)
class StarGalaxyFit:
    """The outcome of :func:`star_or_galaxy`.

    Attributes
    ----------
    kind
        ``"star"`` or ``"galaxy"``.
    chi2_star, chi2_galaxy
        Best chi-square of each model over the window's valid pixels.
    delta_chi2
        ``chi2_star - chi2_galaxy``.
    sigma
        Gaussian size (pixels) of the best extended model.
    flux_star
        Per-band flux of the best star model.
    n_pixels
        Valid pixels fitted.
    """

    kind: str
    chi2_star: float
    chi2_galaxy: float
    delta_chi2: float
    sigma: float
    flux_star: np.ndarray
    n_pixels: int


def _gaussian_blur(psf: np.ndarray, sigma: float) -> np.ndarray:
    """PSF ``(C, kh, kw)`` convolved with a round Gaussian (same size), unit sum per band."""
    _, kh, kw = psf.shape
    yy = np.arange(kh) - (kh - 1) / 2
    xx = np.arange(kw) - (kw - 1) / 2
    g = np.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2 * sigma**2))
    g /= g.sum()
    # Circular convolution of two centered kernels: ifftshift puts the Gaussian's center at
    # the origin so that the result stays centered. Light wrapped around is a tail of the
    # Gaussian far from the center (sizes here are well below the PSF stamp).
    out = np.fft.irfft2(np.fft.rfft2(psf) * np.fft.rfft2(np.fft.ifftshift(g)), s=(kh, kw))
    return out / out.sum(axis=(-2, -1), keepdims=True)


def _cube(a: np.ndarray, shape: tuple[int, ...], what: str, name: str) -> np.ndarray:
    """``a`` of shape ``(H, W)`` or ``(C, H, W)`` broadcast to the image's ``(C, H, W)``."""
    arr = np.asarray(a)
    if arr.shape not in (shape, shape[1:]):
        raise InputError(f"{name}: {what} has shape {arr.shape}, the image {shape}")
    return np.broadcast_to(arr, shape)


def _chi2(data: np.ndarray, weight: np.ndarray, template: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares chi-square with a free amplitude per band, and the amplitudes."""
    axes = (-2, -1)
    tt = (weight * template * template).sum(axes)
    td = (weight * template * data).sum(axes)
    dd = (weight * data * data).sum(axes)
    amp = np.where(tt > 0, td / np.where(tt > 0, tt, 1.0), 0.0)
    return float((dd - amp * td).sum()), amp


def star_or_galaxy(
    image: np.ndarray,
    variance: np.ndarray,
    psf: np.ndarray,
    position: Sequence[float],
    *,
    valid: np.ndarray | None = None,
    radius: int | None = None,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    shifts: Sequence[float] = (-0.25, 0.0, 0.25),
    threshold: float = 9.0,
    name: str = "image",
) -> StarGalaxyFit:
    """Decide whether the source at ``position`` is a star or a galaxy.

    Parameters
    ----------
    image, variance
        ``(H, W)`` or ``(C, H, W)``, background-subtracted image and its noise variance.
    psf
        ``(kh, kw)`` or ``(C, kh, kw)`` PSF (odd sizes, centered).
    position
        ``(x, y)`` of the source, 0-based pixels.
    valid
        True at pixels to fit (mask neighbours out here); default all.
    radius
        Half-size of the fitting window in pixels; default half the PSF stamp.
    sigmas
        Gaussian sizes tried for the galaxy.
    shifts
        Sub-pixel offsets tried along each axis, for both models.
    threshold
        ``delta_chi2`` above which the source is called a galaxy.
    name
        How the image is named in error messages.

    Returns
    -------
    StarGalaxyFit

    Raises
    ------
    InputError
        If shapes disagree, the window has no valid pixel, or the variance is not
        positive where fitted.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim not in (2, 3):
        raise InputError(f"{name}: image must be (H, W) or (C, H, W), got {img.shape}")
    img = img[None] if img.ndim == 2 else img
    var = _cube(variance, img.shape, "variance", name).astype(np.float64)
    ok = (
        np.ones(img.shape, bool)
        if valid is None
        else _cube(valid, img.shape, "mask", name).astype(bool)
    )
    c, h, w = img.shape
    kernel = np.asarray(psf, dtype=np.float64)
    kernel = np.broadcast_to(kernel, (c, *kernel.shape[-2:])) if kernel.ndim == 2 else kernel
    kernel = validate_psf(torch.as_tensor(np.array(kernel)), f"{name} PSF")[0].numpy()
    if kernel.shape[0] != c:
        raise InputError(f"{name}: PSF has {kernel.shape[0]} band(s), the image {c}")
    kh, kw = kernel.shape[-2:]
    r = int(radius) if radius is not None else min(kh, kw) // 2
    x, y = (float(v) for v in position)
    cx, cy = int(round(x)), int(round(y))
    y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
    if y0 >= y1 or x0 >= x1:
        raise InputError(f"{name}: position ({x:g}, {y:g}) is outside the image")
    data = img[:, y0:y1, x0:x1]
    fit = ok[:, y0:y1, x0:x1] & np.isfinite(data)
    v = var[:, y0:y1, x0:x1]
    if not fit.any():
        raise InputError(f"{name}: no valid pixel around ({x:g}, {y:g})")
    if not (np.isfinite(v[fit]).all() and (v[fit] > 0).all()):
        raise InputError(f"{name}: variance is not finite and positive around ({x:g}, {y:g})")
    weight = np.where(fit, 1.0 / np.where(fit, v, 1.0), 0.0)
    data = np.where(fit, data, 0.0)
    frame = (c, y1 - y0, x1 - x0)

    templates = {0.0: kernel, **{float(s): _gaussian_blur(kernel, float(s)) for s in sigmas}}
    stack = torch.as_tensor(np.stack(list(templates.values())))  # (S, C, kh, kw)
    best: dict[float, tuple[float, np.ndarray]] = {}
    for dy in shifts:
        for dx in shifts:
            place = PlaceStamp((x - x0 + dx, y - y0 + dy), (c, kh, kw), frame)
            placed = place.apply(stack).numpy()
            for s, t in zip(templates, placed, strict=True):
                chi2, amp = _chi2(data, weight, t)
                if s not in best or chi2 < best[s][0]:
                    best[s] = (chi2, amp)
    chi2_star, flux_star = best[0.0]
    sigma, (chi2_gal, _) = min(((s, best[s]) for s in best if s > 0), key=lambda kv: kv[1][0])
    # The extended family contains the point source, so a galaxy never fits worse.
    chi2_gal = min(chi2_gal, chi2_star)
    delta = chi2_star - chi2_gal
    return StarGalaxyFit(
        kind="galaxy" if delta > threshold else "star",
        chi2_star=chi2_star,
        chi2_galaxy=chi2_gal,
        delta_chi2=delta,
        sigma=sigma,
        flux_star=flux_star,
        n_pixels=int(fit.sum()),
    )

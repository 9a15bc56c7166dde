"""Star or galaxy: does a point source fit a detection as well as an extended one?

At a source's position, two linear models are fitted by weighted least squares in a
window of the image, each with a free flux per band and a free local background per band
(a quadratic surface, which takes up the smooth wings of neighbours so that a star
beside a bright galaxy does not look extended):

* **star**: the PSF placed at the position (:class:`~galprism.scene.placement.StarOperator`),
  the position itself fitted by Gauss-Newton steps from the best of a grid of sub-pixel
  shifts: a centroid error of a tenth of a pixel leaves a bright star's residual at tens
  of sigma, which a slightly extended model would otherwise absorb;
* **galaxy**: the PSF convolved with a round Gaussian of standard deviation ``sigma``
  pixels, for each ``sigma`` of a grid, at the same grid of shifts and at the star's
  fitted position; the best one is kept.

The galaxy family contains the star (``sigma -> 0``), so ``delta_chi2 = chi2_star -
chi2_galaxy >= 0`` up to the grid; under the star hypothesis it behaves like a
chi-square with about one degree of freedom (the size), so the default threshold of 9 is
roughly a 3-sigma preference for an extended source. The decision is only as good as
its window: pixels nearer a neighbour should be left out (``valid``), and a source much
fainter than the noise is called a star for lack of evidence of extent.
"""

from __future__ import annotations

import math
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
    position
        ``(x, y)`` of the fitted star model, 0-based pixels of the image.
    """

    kind: str
    chi2_star: float
    chi2_galaxy: float
    delta_chi2: float
    sigma: float
    flux_star: np.ndarray
    n_pixels: int
    position: tuple[float, float]


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


def _nuisance(shape: tuple[int, int, int]) -> np.ndarray:
    """``(6, H, W)`` a quadratic surface's terms over a window: 1, x, y, x^2, xy, y^2."""
    _, h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    u, v = (xx - (w - 1) / 2) / w, (yy - (h - 1) / 2) / h
    return np.stack([np.ones((h, w)), u, v, u * u, u * v, v * v])


def _fit(data: np.ndarray, weight: np.ndarray, columns: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted least squares per band of ``data`` ``(C, H, W)`` on ``columns``
    ``(n, C, H, W)``: the chi-square summed over bands and the coefficients ``(n, C)``."""
    c = data.shape[0]
    a = columns.reshape(columns.shape[0], c, -1).transpose(1, 2, 0)  # (C, P, n)
    wt = weight.reshape(c, -1)
    d = data.reshape(c, -1)
    ata = np.einsum("cpi,cp,cpj->cij", a, wt, a)
    atd = np.einsum("cpi,cp,cp->ci", a, wt, d)
    # A template that falls wholly on masked pixels has a zero column: lstsq keeps it at 0.
    coef = np.stack([np.linalg.lstsq(ata[b], atd[b], rcond=1e-12)[0] for b in range(c)])
    r = d - np.einsum("cpi,ci->cp", a, coef)
    return float((wt * r * r).sum()), coef.T


def _window_radius(kernel: np.ndarray) -> int:
    """Twice the PSF's FWHM (from its second moments, widest band), in whole pixels: wide
    enough to tell a star's extent, narrow enough that a neighbour's wings across it are
    close to the quadratic surface the fit allows them."""
    _, kh, kw = kernel.shape
    yy, xx = np.mgrid[:kh, :kw].astype(np.float64)
    widest = 0.0
    for k in kernel:
        p = np.clip(k, 0.0, None)
        p = p / p.sum()
        mx, my = (p * xx).sum(), (p * yy).sum()
        var = 0.5 * ((p * (xx - mx) ** 2).sum() + (p * (yy - my) ** 2).sum())
        widest = max(widest, math.sqrt(var))
    return max(3, math.ceil(2.0 * 2.3548 * widest))


def _placed(kernels: np.ndarray, pos: tuple[float, float], frame: tuple[int, ...]) -> np.ndarray:
    """``kernels`` ``(S, C, kh, kw)`` placed at ``pos`` in a window of shape ``frame``."""
    place = PlaceStamp(pos, kernels.shape[1:], frame)
    return place.apply(torch.as_tensor(kernels)).numpy()


def _refine_star(
    data: np.ndarray,
    weight: np.ndarray,
    kernel: np.ndarray,
    start: tuple[float, float],
    nuisance: np.ndarray,
    *,
    iterations: int = 8,
    step: float = 0.01,
    reach: float = 1.0,
) -> tuple[tuple[float, float], float, np.ndarray]:
    """Gauss-Newton fit of the star's position from ``start`` (window pixels): the
    position, its chi-square and its coefficients (flux per band first). The position
    stays within ``reach`` pixels of ``start``; derivatives are central differences of
    ``step`` pixels of the (smooth, Fourier-shifted) placed PSF."""
    c = data.shape[0]
    frame = data.shape
    pos = start
    t = _placed(kernel[None], pos, frame)  # the star at pos, kept with the accepted step
    chi2, coef = _fit(data, weight, np.concatenate([t, nuisance]))
    for _ in range(iterations):
        x, y = pos
        shifted = [
            _placed(kernel[None], p, frame)[0]
            for p in ((x + step, y), (x - step, y), (x, y + step), (x, y - step))
        ]
        tx = (shifted[0] - shifted[1]) / (2 * step)
        ty = (shifted[2] - shifted[3]) / (2 * step)
        flux = coef[0]  # (C,)
        r = data - (np.einsum("nchw,nc->chw", np.concatenate([t[:1], nuisance]), coef))
        # Jacobian columns: the star's flux per band, the background terms, x and y.
        cols = []
        for b in range(c):
            col = np.zeros_like(data)
            col[b] = t[0, b]
            cols.append(col)
        for plane in nuisance:
            for b in range(c):
                col = np.zeros_like(data)
                col[b] = plane[b]
                cols.append(col)
        cols.append(tx * flux[:, None, None])
        cols.append(ty * flux[:, None, None])
        j = np.stack([col.reshape(-1) for col in cols], axis=1)
        w = weight.reshape(-1)
        jtj = j.T @ (w[:, None] * j)
        delta = np.linalg.lstsq(jtj, j.T @ (w * r.reshape(-1)), rcond=1e-12)[0]
        dx, dy = np.clip(delta[-2:], -0.5, 0.5)
        new = (x + float(dx), y + float(dy))
        if np.hypot(new[0] - start[0], new[1] - start[1]) > reach:
            break
        t_new = _placed(kernel[None], new, frame)
        new_chi2, new_coef = _fit(data, weight, np.concatenate([t_new, nuisance]))
        if new_chi2 > chi2:
            break
        pos, chi2, coef, t = new, new_chi2, new_coef, t_new
        if np.hypot(dx, dy) < 1e-3:
            break
    return pos, chi2, coef


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
        Half-size of the fitting window in pixels; default twice the PSF's FWHM, at most
        half the PSF stamp.
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
    r = int(radius) if radius is not None else min(min(kh, kw) // 2, _window_radius(kernel))
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
    stack = np.stack(list(templates.values()))  # (S, C, kh, kw)
    planes = _nuisance(frame)
    nuisance = np.stack([np.broadcast_to(p, frame) for p in planes])  # (6, C, h, w)
    best: dict[float, tuple[float, tuple[float, float]]] = {}

    def evaluate(pos: tuple[float, float]) -> None:
        for s, t in zip(templates, _placed(stack, pos, frame), strict=True):
            chi2, _ = _fit(data, weight, np.concatenate([t[None], nuisance]))
            if s not in best or chi2 < best[s][0]:
                best[s] = (chi2, pos)

    for dy in shifts:
        for dx in shifts:
            evaluate((x - x0 + dx, y - y0 + dy))
    star_pos, chi2_star, coef = _refine_star(data, weight, kernel, best[0.0][1], nuisance)
    evaluate(star_pos)
    flux_star = coef[0]
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
        position=(star_pos[0] + x0, star_pos[1] + y0),
    )

"""Further views of a scene's sky: other instruments' images brought to the model frame.

The model frame is the galaxy prior's grid laid on the primary (first) image's sky: the
primary's pixel grid split ``f x f`` (``f`` its grid factor). A galaxy there is a
pixel-integrated image of the light convolved with the prior's own resolution kernel, a
Gaussian of FWHM ``model_fwhm`` (the simulator's truth kernel the priors were trained
behind, 0.2" for the built-in HSC priors).

A view sharper than that (a space image of a ground-based scene) cannot be modelled by
resampling the frame onto its grid and convolving with its PSF: the frame has no detail
finer than its kernel, and the view's data have. Instead the view's data are brought to
the frame's resolution (:func:`match_view`):

1. a matching kernel ``K`` on the view's grid with ``PSF_view * K = G`` (``G`` the model
   kernel sampled on the view's pixels; regularised Fourier division, the mismatch
   ``|PSF_view * K - G|_1 / |G|_1`` measured and a view whose PSF is not sharper than ``G``
   refused);
2. ``K * y_view`` then holds the light convolved with ``G``; its flux-conserving
   :class:`~galprism.resample.Resample` onto the frame (exact pixel overlaps, built once
   per view) integrates that over the frame's pixels: the quantity the prior's galaxies
   are images of, so the view's operator on the frame is the identity (its mask only);
3. frame pixels that any masked or missing view pixel reaches through ``K`` are masked.

The noise of the matched view is correlated: ``C = M D M^T`` with ``M = R K`` and ``D`` the
view's per-pixel variance. The likelihood uses the diagonal ``sigma_i^2 = |K|_1 (R (|K|
* D))_i``. It is at least the sum of row ``i`` of ``|C|`` (the columns of ``R`` sum to at
most 1), so ``diag(sigma^2) - C`` is diagonally dominant and positive semi-definite: the
view never counts for more information than it has. For white input noise
``sigma_i^2`` is the noise of the view's plain flux sum over the frame pixel, the level
of the correlated noise's power at zero frequency, its maximum. The exact per-pixel
variance ``C_ii`` is kept too: ``mean(C_ii / sigma_i^2)`` is the reduced chi^2 that pure
noise gives against the bound, the reference a view's residual chi^2 is read against.

Units: each view's zero point converts it to the prior's normalised units, as for the
primary; a view or a primary without a zero point cannot be reconciled and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.signal
import scipy.sparse
from astropy.wcs import WCS
from scipy.special import erf

from ..errors import ConfigError, InputError, PSFError
from ..frame import Frame
from ..io.flux import flux_factor
from ..observation import Observation
from ..resample import Resample

__all__ = [
    "MODEL_FWHM",
    "MATCH_TOLERANCE",
    "MatchedView",
    "match_view",
    "matching_kernel",
    "model_kernel",
    "crop_padded",
]

#: FWHM (arcsec) of the resolution kernel of the built-in priors' galaxies
MODEL_FWHM = 0.2
#: largest accepted ``|PSF * K - G|_1 / |G|_1`` of a matching kernel
MATCH_TOLERANCE = 0.1
#: Fourier-division regulariser, relative to the PSF's zero-frequency power (1)
_WIENER = 1e-6


@dataclass(frozen=True, eq=False)
class MatchedView:
    """A view brought to the whole image's model frame (:func:`match_view`).

    Attributes
    ----------
    name
        The view's file name.
    image
        ``(C_v, H f, W f)`` the matched data on the model frame, in the view's own units
        (flux per frame pixel), 0 where not valid.
    variance
        ``(C_v, H f, W f)`` the diagonal noise bound ``sigma_i^2`` (1 where not valid).
    exact_variance
        ``(C_v, H f, W f)`` the matched noise's true per-pixel variance ``C_ii``.
    valid
        ``(C_v, H f, W f)`` frame pixels the view informs.
    wcs
        Celestial WCS of the model frame.
    to_normalised
        ``(C_v,)`` the view's units to the prior's normalised units.
    band_index
        Index of each view band among the prior's bands.
    bunit
        The view's flux unit, or None.
    mismatch
        ``(C_v,)`` the matching kernels' ``|PSF * K - G|_1 / |G|_1``.
    kernel_fwhm
        The model kernel's FWHM in frame pixels.
    """

    name: str
    image: np.ndarray
    variance: np.ndarray
    exact_variance: np.ndarray
    valid: np.ndarray
    wcs: WCS
    to_normalised: np.ndarray
    band_index: tuple[int, ...]
    bunit: str | None
    mismatch: np.ndarray
    kernel_fwhm: float

    @property
    def n_bands(self) -> int:
        return int(self.image.shape[0])

    @property
    def noise_chi2(self) -> float:
        """Reduced chi^2 that pure noise gives against the bound (``mean C_ii / sigma_i^2``)."""
        return float(np.mean(self.exact_variance[self.valid] / self.variance[self.valid]))


def model_kernel(fwhm_px: float, size: int) -> np.ndarray:
    """A unit-sum Gaussian of FWHM ``fwhm_px`` pixels integrated over the pixels of a
    ``size x size`` grid (``size`` odd), centered on its middle pixel."""
    sigma = fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    edges = np.arange(size + 1) - size / 2.0
    cdf = 0.5 * (1.0 + erf(edges / (math.sqrt(2.0) * sigma)))
    one = np.diff(cdf)
    k = np.outer(one, one)
    return k / k.sum()


def matching_kernel(psf: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """``K`` (the target's size) with ``psf * K ~ target``, and the mismatch
    ``|psf * K - target|_1 / |target|_1``.

    Both kernels are odd-sized, centered and of unit sum. The division is done on a grid
    that holds both without wrap-around, regularised where the PSF has no power.
    """
    ph, pw = psf.shape
    th, tw = target.shape
    n = max(ph, th) + max(th, tw) + 1
    n += n % 2 == 0
    grid = (n, n)

    def centred(k: np.ndarray) -> np.ndarray:
        out = np.zeros(grid)
        kh, kw = k.shape
        out[:kh, :kw] = k
        return np.roll(out, (-(kh // 2), -(kw // 2)), axis=(0, 1))

    p_hat = np.fft.rfft2(centred(psf))
    t_hat = np.fft.rfft2(centred(target))
    k_hat = t_hat * np.conj(p_hat) / (np.abs(p_hat) ** 2 + _WIENER)
    k_full = np.fft.irfft2(k_hat, s=grid)
    k_full = np.fft.fftshift(k_full)
    cy, cx = n // 2, n // 2
    kernel = k_full[cy - th // 2 : cy + th // 2 + 1, cx - tw // 2 : cx + tw // 2 + 1]
    kernel = kernel / kernel.sum()
    achieved = scipy.signal.fftconvolve(psf, kernel, mode="full")
    # ``achieved`` is (ph + th - 1) square and centered; compare on it with the target padded.
    ah, aw = achieved.shape
    padded = np.zeros_like(achieved)
    oy, ox = (ah - th) // 2, (aw - tw) // 2
    padded[oy : oy + th, ox : ox + tw] = target
    mismatch = float(np.abs(achieved - padded).sum() / np.abs(target).sum())
    return kernel, mismatch


def _pixel_scale(obs: Observation) -> float:
    if obs.pixel_scale is not None:
        return float(obs.pixel_scale)
    assert obs.wcs is not None
    return float(math.sqrt(abs(np.linalg.det(obs.wcs.pixel_scale_matrix))) * 3600.0)


def _normalised_factors(obs: Observation, frame: Frame, primary: Observation) -> np.ndarray:
    """``(C,)`` ``obs``'s units to the prior's normalised units, through zero points."""
    if obs.zeropoints is None or primary.zeropoints is None:
        missing = obs if obs.zeropoints is None else primary
        raise InputError(
            f"{obs.name}: units cannot be reconciled with {primary.name}: {missing.name} has no "
            "zero point (MAGZERO, PHOTFLAM or a flux-density BUNIT)"
        )
    if frame.ab_zeropoint is not None:
        return obs.flux_factors_to(frame.ab_zeropoint) / frame.flux_scale
    # A prior without a zero point is in the primary's units, which need one zero point.
    zps = set(primary.zeropoints)
    if len(zps) != 1:
        raise InputError(
            f"{obs.name}: units cannot be reconciled with {primary.name}: the prior has no zero "
            "point and the primary's bands have several"
        )
    ref = zps.pop()
    return np.array([flux_factor(z, ref) for z in obs.zeropoints]) / frame.flux_scale


def match_view(
    primary: Observation,
    view: Observation,
    frame: Frame,
    *,
    model_fwhm: float = MODEL_FWHM,
) -> MatchedView:
    """Bring ``view`` to ``primary``'s model frame (module docstring, steps 1 to 3).

    Parameters
    ----------
    primary
        The whole primary image (its WCS and grid factor define the model frame).
    view
        The whole further image of the same sky.
    frame
        The galaxy prior's grid and flux convention.
    model_fwhm
        FWHM (arcsec) of the prior's resolution kernel.

    Raises
    ------
    InputError
        If either image has no celestial WCS, the units cannot be reconciled, the two
        images share no sky, or no frame pixel is fully seen by the view.
    PSFError
        If the view's PSF is not sharper than the model kernel (no matching kernel).
    ShapeError
        If the view's bands are not the prior's.
    """
    for obs in (primary, view):
        if obs.wcs is None:
            raise InputError(f"{obs.name}: has no celestial WCS; a joint view needs one")
    band_index = view.band_index(frame, "the galaxy prior")
    to_norm = _normalised_factors(view, frame, primary)
    f = primary.grid_factor(frame.pixel_scale)
    c, h, w = primary.shape
    frame_shape = (h * f, w * f)
    frame_wcs = primary.prior_grid_wcs(f)
    assert frame_wcs is not None
    scale_v = _pixel_scale(view)
    fwhm_v = model_fwhm / scale_v
    # +-4.5 FWHM: room for the negative lobes that take out a PSF's halo (the ACS F814W
    # PSF has 6 % of its light beyond 0.6"; its kernel misses by 19 % at +-1.5 FWHM, 6 % here).
    size = 2 * int(math.ceil(4.5 * fwhm_v)) + 1
    target = model_kernel(fwhm_v, size)
    cv = view.n_bands
    _, hv, wv = view.shape
    try:
        resample = Resample(
            view.wcs,
            (hv, wv),
            frame_wcs,
            frame_shape,
            source_name=view.name,
            target_name=primary.name,
        )
    except ConfigError:
        raise InputError(f"{view.name}: shares no sky with {primary.name}") from None
    r = resample.matrix  # (frame pixels, view pixels)
    full = resample.target_coverage.reshape(-1) > 1.0 - 1e-6
    image = np.zeros((cv, *frame_shape))
    variance = np.ones((cv, *frame_shape))
    exact = np.ones((cv, *frame_shape))
    valid = np.zeros((cv, *frame_shape), bool)
    mismatch = np.zeros(cv)
    for b in range(cv):
        kernel, mismatch[b] = matching_kernel(np.asarray(view.psf[b], np.float64), target)
        if mismatch[b] > MATCH_TOLERANCE:
            raise PSFError(
                f"{view.name}: PSF is not sharper than the model's {model_fwhm:g}\" resolution "
                f"(matching kernel misses by {mismatch[b]:.0%} of its flux)"
            )
        ok = view.valid[b]
        data = np.where(ok, view.image[b], 0.0)
        matched = scipy.signal.fftconvolve(data, kernel, mode="same")
        # A matched pixel is usable only if its whole kernel footprint is valid data
        # inside the image (beyond the edges there are no data, not zeros).
        kh, kw = kernel.shape
        outside = np.pad(~ok, ((kh // 2, kh // 2), (kw // 2, kw // 2)), constant_values=True)
        bad = scipy.signal.fftconvolve(outside.astype(float), np.ones_like(kernel), mode="valid")
        usable = (bad < 0.5).reshape(-1).astype(float)
        l1 = float(np.abs(kernel).sum())
        var = np.where(ok, view.variance[b], 0.0)
        smeared = scipy.signal.fftconvolve(var, np.abs(kernel), mode="same")
        bound = l1 * (r @ np.clip(smeared, 0.0, None).reshape(-1))
        # A frame pixel is seen when it is wholly inside the view and every view pixel
        # that reaches it is usable.
        reach = r @ (1.0 - usable)
        seen = full & (reach <= 1e-9) & (bound > 0)
        image[b] = np.where(seen, r @ matched.reshape(-1), 0.0).reshape(frame_shape)
        variance[b] = np.where(seen, bound, 1.0).reshape(frame_shape)
        valid[b] = seen.reshape(frame_shape)
        exact[b] = _exact_variance(r, kernel, var, (hv, wv), seen).reshape(frame_shape)
    if not valid.any():
        raise InputError(
            f"{view.name}: no pixel of {primary.name}'s frame lies wholly inside it (away from "
            "its edges and masked pixels)"
        )
    return MatchedView(
        name=view.name,
        image=image,
        variance=variance,
        exact_variance=np.where(valid, exact, 1.0),
        valid=valid,
        wcs=frame_wcs,
        to_normalised=np.asarray(to_norm, dtype=np.float64),
        band_index=band_index,
        bunit=view.bunit,
        mismatch=mismatch,
        kernel_fwhm=model_fwhm / (_pixel_scale(primary) / f),
    )


def _exact_variance(
    r: scipy.sparse.csr_matrix,
    kernel: np.ndarray,
    var: np.ndarray,
    shape: tuple[int, int],
    seen: np.ndarray,
) -> np.ndarray:
    """``C_ii = sum_j M_ij^2 D_j`` with ``M = R K``, for the frame pixels ``seen``."""
    hv, wv = shape
    kh, kw = kernel.shape
    flipped = kernel[::-1, ::-1]
    out = np.ones(r.shape[0])
    r = r.tocsr()
    for i in np.nonzero(seen)[0]:
        lo, hi = r.indptr[i], r.indptr[i + 1]
        cols, vals = r.indices[lo:hi], r.data[lo:hi]
        yy, xx = np.divmod(cols, wv)
        y0, x0 = int(yy.min()), int(xx.min())
        patch = np.zeros((int(yy.max()) - y0 + 1, int(xx.max()) - x0 + 1))
        np.add.at(patch, (yy - y0, xx - x0), vals)
        # Row i of M is row i of R correlated with K: the view pixels it draws on.
        m = scipy.signal.fftconvolve(patch, flipped, mode="full")
        ys = slice(y0 - kh // 2, y0 - kh // 2 + m.shape[0])
        xs = slice(x0 - kw // 2, x0 - kw // 2 + m.shape[1])
        d = crop_padded(var, ys.start, xs.start, m.shape[0], m.shape[1], 0.0)
        out[i] = float((m**2 * d).sum())
    return out


def crop_padded(a: np.ndarray, y0: int, x0: int, ny: int, nx: int, fill: float) -> np.ndarray:
    """``a[..., y0:y0+ny, x0:x0+nx]`` with ``fill`` beyond its edges."""
    h, w = a.shape[-2:]
    out = np.full((*a.shape[:-2], ny, nx), fill, dtype=a.dtype)
    ys, xs = slice(max(y0, 0), min(y0 + ny, h)), slice(max(x0, 0), min(x0 + nx, w))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[..., ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = a[..., ys, xs]
    return out

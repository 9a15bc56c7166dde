"""Per-cutout measures of a central-galaxy estimate against the truth.

Every function takes plain ``(H, W)`` numpy images in the same flux units and pixel grid
and returns floats; failures that belong to the estimate (an adaptive-moments fit that
does not converge, a zero-flux truth) give NaN rather than an exception, so that one bad
cutout never stops an evaluation. :func:`compare` bundles them into one record.

Definitions (``t`` truth, ``e`` estimate, ``sigma`` the cutout's noise standard deviation):

* ``rmse``: ``sqrt(mean((e - t)^2)) / sigma`` over the compared pixels (noise units);
* ``psnr``: ``20 log10(max(t) / (sigma * rmse))`` in dB; ``inf`` for a perfect estimate;
* ``flux_err``: ``(sum e - sum t) / sum t``;
* ``centroid_err``: distance in pixels between the adaptive-moments centroids;
* ``g_err``: ``|g_e - g_t|`` of the reduced-shear ellipticities ``(g1, g2)`` of the
  adaptive moments (GalSim HSM, no PSF correction: both images are compared as they are);
* ``size_err``: ``(sigma_e - sigma_t) / sigma_t`` of the adaptive-moments sizes
  ``det(M)^(1/4)``;
* ``blendedness``: ``1 - sum(g^2) / sum(g (g + n))`` with ``g`` the PSF-convolved galaxy
  and ``n`` everything else (neighbours), as in Bosch et al. (2018).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import galsim
import numpy as np

from ..errors import ShapeError

__all__ = [
    "Moments",
    "adaptive_moments",
    "rmse_noise",
    "psnr_peak",
    "flux_error",
    "blendedness",
    "compare",
    "MEASURES",
]

#: keys of :func:`compare`'s record, in report order
MEASURES: tuple[str, ...] = ("rmse", "psnr", "flux_err", "centroid_err", "g_err", "size_err")


def _pair(truth: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth, dtype=np.float64)
    e = np.asarray(estimate, dtype=np.float64)
    if t.shape != e.shape or t.ndim != 2:
        raise ShapeError(
            f"measures: truth {t.shape} and estimate {e.shape} must be equal 2-D images"
        )
    return t, e


def rmse_noise(truth: np.ndarray, estimate: np.ndarray, sigma: float) -> float:
    """Root-mean-square difference in units of the noise ``sigma`` (0 for identical images)."""
    t, e = _pair(truth, estimate)
    return float(np.sqrt(np.mean((e - t) ** 2)) / sigma)


def psnr_peak(truth: np.ndarray, estimate: np.ndarray) -> float:
    """PSNR in dB with the truth's peak as the signal: ``inf`` when the images are equal.

    NaN when the truth has no positive peak (PSNR is then undefined).
    """
    t, e = _pair(truth, estimate)
    peak = float(t.max())
    if not peak > 0:
        return math.nan
    rmse = float(np.sqrt(np.mean((e - t) ** 2)))
    if rmse == 0.0:
        return math.inf
    return 20.0 * math.log10(peak / rmse)


def flux_error(truth: np.ndarray, estimate: np.ndarray) -> float:
    """Relative total-flux error ``(sum e - sum t) / sum t`` (NaN for a non-positive true flux)."""
    t, e = _pair(truth, estimate)
    ft = float(t.sum())
    if not ft > 0:
        return math.nan
    return (float(e.sum()) - ft) / ft


def blendedness(galaxy_conv: np.ndarray, others_conv: np.ndarray) -> float:
    """``1 - sum(g^2) / sum(g (g + n))``: 0 for an isolated galaxy, towards 1 when buried.

    Both images are PSF-convolved and noise-free; ``others_conv`` holds every other
    source (neighbours), not the flat sky residual.
    """
    g, n = _pair(galaxy_conv, others_conv)
    denom = float((g * (g + n)).sum())
    if not denom > 0:
        return math.nan
    return 1.0 - float((g * g).sum()) / denom


@dataclass(frozen=True)
class Moments:
    """Adaptive moments of one image (0-based pixel coordinates); NaN when the fit failed."""

    x: float
    y: float
    g1: float
    g2: float
    sigma: float
    flux: float
    ok: bool
    error: str = ""

    @classmethod
    def failed(cls, error: str) -> Moments:
        nan = math.nan
        return cls(nan, nan, nan, nan, nan, nan, False, error)


def adaptive_moments(
    image: np.ndarray, guess_sigma: float = 2.0, guess_center: tuple[float, float] | None = None
) -> Moments:
    """Elliptical Gaussian-weighted moments (GalSim ``hsm.FindAdaptiveMom``).

    Parameters
    ----------
    image
        ``(H, W)`` image (any flux units).
    guess_sigma
        Starting size of the weight in pixels.
    guess_center
        Starting centroid ``(x, y)`` in 0-based pixels (default the image center).

    Returns
    -------
    Moments
        ``ok=False`` and NaNs when HSM does not converge (e.g. an estimate with no flux):
        callers count these failures instead of dropping the cutout.
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ShapeError(f"adaptive_moments: expected a 2-D image, got shape {a.shape}")
    if not np.isfinite(a).all() or not a.sum() > 0:
        return Moments.failed("no positive finite flux")
    img = galsim.Image(np.ascontiguousarray(a), xmin=0, ymin=0)
    h, w = a.shape
    cx, cy = guess_center if guess_center is not None else (0.5 * (w - 1), 0.5 * (h - 1))
    try:
        m = galsim.hsm.FindAdaptiveMom(
            img, guess_sig=guess_sigma, guess_centroid=galsim.PositionD(cx, cy), strict=False
        )
    except (galsim.GalSimError, RuntimeError, ValueError) as exc:  # HSM raises on bad input
        return Moments.failed(" ".join(str(exc).split())[:120])
    if m.moments_status != 0:
        return Moments.failed(m.error_message.strip() or f"status {m.moments_status}")
    shape = m.observed_shape
    return Moments(
        x=float(m.moments_centroid.x),
        y=float(m.moments_centroid.y),
        g1=float(shape.g1),
        g2=float(shape.g2),
        sigma=float(m.moments_sigma),
        flux=float(m.moments_amp),
        ok=True,
    )


def compare(
    truth: np.ndarray,
    estimate: np.ndarray,
    sigma: float,
    *,
    truth_moments: Moments | None = None,
    guess_sigma: float = 2.0,
) -> dict[str, float]:
    """Every measure of :data:`MEASURES` for one estimate, plus ``hsm_ok`` (1.0 or 0.0).

    ``truth_moments`` may be passed to avoid refitting the truth for every method. Shape
    errors are NaN when either fit failed; ``hsm_ok`` is 0 when the *estimate's* fit failed
    (a truth that cannot be measured makes the shape errors NaN for every method alike).
    """
    t, e = _pair(truth, estimate)
    tm = truth_moments if truth_moments is not None else adaptive_moments(t, guess_sigma)
    em = adaptive_moments(e, guess_sigma, (tm.x, tm.y) if tm.ok else None)
    both = tm.ok and em.ok
    nan = math.nan
    return {
        "rmse": rmse_noise(t, e, sigma),
        "psnr": psnr_peak(t, e),
        "flux_err": flux_error(t, e),
        "centroid_err": math.hypot(em.x - tm.x, em.y - tm.y) if both else nan,
        "g_err": math.hypot(em.g1 - tm.g1, em.g2 - tm.g2) if both else nan,
        "size_err": (em.sigma - tm.sigma) / tm.sigma if both else nan,
        "hsm_ok": 1.0 if em.ok else 0.0,
    }

"""Peak signal-to-noise ratio per sample, as the DDPRISM paper computes it.

``PSNR_i = 20 log10(max_spread / (RMSE_i + 1e-6))`` with ``RMSE_i`` the root mean square
difference over all values of sample ``i`` (reference ``ddprism/metrics/metrics.py``;
``max_spread = 4`` for the manifold problem, the width of ``[-2, 2]``). The ``1e-6`` keeps
a perfect reconstruction finite (120 dB above ``max_spread = 1``).

Note: the reference PCPCA script for Grassy MNIST passes images shaped ``(N, 28, 28, 1)``
to a function that averages over the last axis only, which turns its "PSNR" into a mean of
per-pixel PSNRs (much higher than the per-image value). Here the mean is always over
every axis but the first, so one sample gives one PSNR whatever its shape.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ShapeError
from ._arrays import ArrayLike, require_finite, require_ndim, to_numpy

__all__ = ["psnr", "mean_psnr"]


def psnr(
    truth: ArrayLike, estimate: ArrayLike, max_spread: float, *, eps: float = 1e-6
) -> np.ndarray:
    """PSNR of each sample in dB.

    Parameters
    ----------
    truth
        True signals ``(N, ...)`` (torch or numpy).
    estimate
        Estimates of the same shape, e.g. one posterior sample or the posterior mean per
        observation.
    max_spread
        Dynamic range of the true signal (4 for the manifold problem).
    eps
        Added to the RMSE, as in the reference.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` PSNR per sample.

    Raises
    ------
    ShapeError
        If the shapes differ or there is no sample axis.
    InputError
        If either input has non-finite values.
    ConfigError
        If ``max_spread`` or ``eps`` is not positive.
    """
    if not max_spread > 0 or not eps > 0:
        raise ConfigError(f"psnr: max_spread and eps must be positive, got {max_spread} and {eps}")
    t = to_numpy(truth, "psnr truth")
    e = to_numpy(estimate, "psnr estimate")
    require_ndim(t, "psnr truth", 1, "(n_samples, ...)")
    if t.shape != e.shape:
        raise ShapeError(f"psnr: truth has shape {t.shape} but estimate has shape {e.shape}")
    if t.size == 0:
        raise ShapeError(f"psnr: inputs are empty (shape {t.shape})")
    require_finite(t, "psnr truth")
    require_finite(e, "psnr estimate")
    diff = (t - e).reshape(t.shape[0], -1)
    rmse = np.sqrt(np.mean(diff**2, axis=1))
    return 20.0 * (np.log10(max_spread) - np.log10(rmse + eps))


def mean_psnr(
    truth: ArrayLike, estimate: ArrayLike, max_spread: float, *, eps: float = 1e-6
) -> float:
    """Mean over samples of :func:`psnr` (the figure the paper reports)."""
    return float(np.mean(psnr(truth, estimate, max_spread, eps=eps)))

"""Calibration of posterior samples: credible-interval coverage and SBC ranks.

An evaluation can afford only a few posterior samples per cutout (8 by default). Sample
quantiles cannot resolve a 95% interval from fewer than 39 samples (the outermost of S
samples sits at the ``1/(S+1)`` quantile), so intervals come in two kinds:

* ``"quantile"``: central interval between sample quantiles (``weibull`` positions, as in
  :func:`galprism.metrics.coverage`); used when the samples resolve the level;
* ``"student"``: the Gaussian *prediction* interval ``mean +- t_{S-1} s sqrt(1 + 1/S)``
  (``s`` the sample standard deviation, ``t_{S-1}`` Student's quantile). If the posterior
  is Gaussian and calibrated, the truth is one more draw from it and this interval
  contains it with probability exactly ``level`` for any ``S >= 2``, whereas
  ``mean +- z s`` would undercover (s is itself uncertain with few samples).

``"auto"`` picks ``quantile`` when every requested level is resolved, else ``student``.
Ranks for simulation-based calibration (SBC) need no such choice: with S samples the rank
of the truth is uniform on ``{0..S}`` for a calibrated posterior, whatever its shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..errors import ConfigError, ShapeError
from ..metrics import sbc_ranks, sbc_test

__all__ = [
    "LEVELS",
    "interval_method",
    "credible_interval",
    "inside",
    "CalibrationSummary",
    "summarize_calibration",
]

LEVELS: tuple[float, ...] = (0.68, 0.95)


def interval_method(n_samples: int, levels: Sequence[float] = LEVELS, method: str = "auto") -> str:
    """The interval kind actually used for ``n_samples`` samples (see module docstring)."""
    if method not in ("auto", "quantile", "student"):
        raise ConfigError(f"interval method must be auto, quantile or student, got {method!r}")
    if n_samples < 2:
        raise ConfigError(
            f"calibration needs at least 2 posterior samples per cutout, got {n_samples}"
        )
    resolved = all((1 - lv) / 2 >= 1 / (n_samples + 1) for lv in levels)
    if method == "quantile" and not resolved:
        raise ConfigError(
            f"{n_samples} samples cannot resolve quantile intervals at levels {list(levels)}; "
            "use Student-t intervals"
        )
    if method == "auto":
        return "quantile" if resolved else "student"
    return method


def credible_interval(
    samples: np.ndarray, level: float, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper ends of the central ``level`` interval over axis 0 of ``samples``."""
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim < 1 or s.shape[0] < 2:
        raise ShapeError(f"credible_interval: need samples (S >= 2, ...), got shape {s.shape}")
    if not 0 < level < 1:
        raise ConfigError(f"credible level must lie in (0, 1), got {level}")
    n = s.shape[0]
    tail = (1 - level) / 2
    if method == "quantile":
        lo, hi = np.quantile(s, [tail, 1 - tail], axis=0, method="weibull")
        return lo, hi
    if method == "student":
        mean = s.mean(axis=0)
        half = stats.t.ppf(1 - tail, n - 1) * s.std(axis=0, ddof=1) * np.sqrt(1 + 1 / n)
        return mean - half, mean + half
    raise ConfigError(f"interval method must be quantile or student, got {method!r}")


def inside(samples: np.ndarray, truth: np.ndarray, level: float, method: str) -> np.ndarray:
    """Boolean array (shape of ``truth``): truth within the central ``level`` interval."""
    lo, hi = credible_interval(samples, level, method)
    t = np.asarray(truth, dtype=np.float64)
    return (t >= lo) & (t <= hi)


@dataclass(frozen=True)
class CalibrationSummary:
    """Coverage and SBC of one probabilistic method over a set of cutouts.

    Attributes
    ----------
    method
        Interval kind used (``quantile`` or ``student``).
    n_cutouts, n_samples
        Cutouts and posterior samples per cutout.
    flux_coverage
        ``{level: fraction of cutouts whose true flux is inside}``.
    flux_coverage_err
        Binomial standard error of each fraction at the nominal level.
    pixel_coverage
        ``{level: fraction of footprint pixels (all cutouts pooled) inside}``.
    flux_sbc_hist, flux_sbc_p
        Histogram of the true flux's rank among the samples (bins over ``0..S``) and the
        chi-square uniformity p-value.
    pixel_sbc_hist, pixel_sbc_p
        The same for footprint pixels, pooled (correlated pixels make this p-value
        over-confident; read the histogram's shape).
    """

    method: str
    n_cutouts: int
    n_samples: int
    flux_coverage: dict[float, float]
    flux_coverage_err: dict[float, float]
    pixel_coverage: dict[float, float]
    flux_sbc_hist: list[int]
    flux_sbc_p: float
    pixel_sbc_hist: list[int]
    pixel_sbc_p: float


def summarize_calibration(
    flux_samples: np.ndarray,
    flux_truth: np.ndarray,
    pixel_samples: Sequence[np.ndarray],
    pixel_truth: Sequence[np.ndarray],
    *,
    levels: Sequence[float] = LEVELS,
    method: str = "auto",
    seed: int = 0,
) -> CalibrationSummary:
    """Pool per-cutout posterior samples into coverage fractions and SBC histograms.

    Parameters
    ----------
    flux_samples, flux_truth
        ``(N, S)`` total-flux samples and ``(N,)`` true fluxes.
    pixel_samples, pixel_truth
        Per cutout, ``(S, P_i)`` samples and ``(P_i,)`` true values of its footprint
        pixels (``P_i`` may differ between cutouts and may be 0).
    levels, method
        Credible levels and interval kind (see :func:`interval_method`).
    seed
        Seed for breaking rank ties.
    """
    fs = np.asarray(flux_samples, dtype=np.float64)
    ft = np.asarray(flux_truth, dtype=np.float64)
    if fs.ndim != 2 or ft.shape != fs.shape[:1]:
        raise ShapeError(f"flux samples {fs.shape} and truth {ft.shape} must be (N, S) and (N,)")
    n, s = fs.shape
    kind = interval_method(s, levels, method)
    flux_cov = {float(lv): float(inside(fs.T, ft, lv, kind).mean()) for lv in levels}
    flux_err = {float(lv): float(np.sqrt(lv * (1 - lv) / n)) for lv in levels}
    ps = np.concatenate(
        [np.asarray(p, dtype=np.float64).reshape(s, -1) for p in pixel_samples], axis=1
    )
    pt = np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in pixel_truth])
    if pt.size:
        pix_cov = {float(lv): float(inside(ps, pt, lv, kind).mean()) for lv in levels}
        pix = sbc_test(ps.T[:, :, None], pt[:, None], seed=seed)
        pix_hist, pix_p = [int(v) for v in pix.histogram], float(pix.p_value)
    else:
        pix_cov = {float(lv): float("nan") for lv in levels}
        pix_hist, pix_p = [], float("nan")
    flux = sbc_test(fs, ft, seed=seed)
    return CalibrationSummary(
        method=kind,
        n_cutouts=int(n),
        n_samples=int(s),
        flux_coverage=flux_cov,
        flux_coverage_err=flux_err,
        pixel_coverage=pix_cov,
        flux_sbc_hist=[int(v) for v in flux.histogram],
        flux_sbc_p=float(flux.p_value),
        pixel_sbc_hist=pix_hist,
        pixel_sbc_p=pix_p,
    )


def flux_rank(samples: np.ndarray, truth: float, seed: int = 0) -> int:
    """Rank of the true flux among one cutout's ``(S,)`` flux samples, in ``0..S``."""
    s = np.asarray(samples, dtype=np.float64)[None, :]
    return int(sbc_ranks(s, np.array([truth]), seed=seed)[0])

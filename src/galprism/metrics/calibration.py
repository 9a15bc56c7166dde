"""Posterior calibration from posterior samples and the truth.

Two checks, generic over the shape of what is sampled (vectors, images, or derived
scalars such as a galaxy's total flux: sum the samples first and pass ``(N, S)``):

* Coverage of central credible intervals: the fraction of true values inside the
  interval between the ``(1 - l)/2`` and ``(1 + l)/2`` sample quantiles, per coordinate and
  overall. A calibrated posterior gives ``l``; too narrow a posterior gives less.
* Simulation-based calibration (Talts et al. 2018): the rank of the truth among the ``S``
  posterior samples is uniform on ``{0, ..., S}`` when the posterior is calibrated. The
  ranks are histogrammed and tested for uniformity with scipy's chi-square test.

Shapes: ``samples`` is ``(N, S, ...)`` (``S`` samples for each of ``N`` observations),
``truth`` is ``(N, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..errors import ConfigError, ShapeError
from ._arrays import ArrayLike, require_finite, to_numpy

__all__ = ["CoverageResult", "SBCResult", "coverage", "sbc_ranks", "sbc_test"]


def _pair(samples: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = to_numpy(samples, "posterior samples")
    t = to_numpy(truth, "truth")
    if s.ndim < 2:
        raise ShapeError(
            f"posterior samples: have shape {s.shape}, expected (n_obs, n_samples, ...)"
        )
    if t.shape[:1] != s.shape[:1] or t.shape[1:] != s.shape[2:]:
        raise ShapeError(
            f"calibration: posterior samples {s.shape} do not match truth {t.shape}; expected "
            f"samples (N, S, *shape) for truth (N, *shape)"
        )
    if s.shape[0] == 0 or s.shape[1] < 2:
        raise ShapeError(
            "posterior samples: need at least 1 observation and 2 samples each, got shape "
            f"{s.shape}"
        )
    require_finite(s, "posterior samples")
    require_finite(t, "truth")
    return s, t


@dataclass(frozen=True)
class CoverageResult:
    """Coverage of one central credible level.

    Attributes
    ----------
    level
        Nominal probability of the interval (e.g. 0.68).
    fraction
        Fraction of all true values (every observation and coordinate) inside.
    per_coordinate
        Fraction over observations, shape of one truth value (scalar for scalars).
    n_obs
        Number of observations.
    """

    level: float
    fraction: float
    per_coordinate: np.ndarray
    n_obs: int


def coverage(
    samples: ArrayLike, truth: ArrayLike, levels: Sequence[float] = (0.68, 0.95)
) -> dict[float, CoverageResult]:
    """Coverage of central credible intervals estimated from posterior samples.

    The interval ends are sample quantiles with the ``weibull`` plotting position
    (``p (S + 1)``), whose expected probability content is exactly ``p``; the default
    linear interpolation would make a calibrated posterior with ``S`` samples cover only
    about ``l (S - 1)/(S + 1)`` (0.931 instead of 0.95 for ``S = 100``).

    Parameters
    ----------
    samples
        Posterior samples ``(N, S, ...)`` (torch or numpy).
    truth
        True values ``(N, ...)``.
    levels
        Central credible levels in ``(0, 1)``. With ``S`` samples a level needs
        ``(1 - l)/2 >= 1/(S + 1)``, else its interval reaches beyond the extreme samples.

    Returns
    -------
    dict
        ``{level: CoverageResult}``.
    """
    s, t = _pair(samples, truth)
    n_s = s.shape[1]
    results = {}
    for level in levels:
        if not 0 < level < 1:
            raise ConfigError(f"coverage: levels must lie in (0, 1), got {level}")
        tail = (1 - level) / 2
        if tail < 1 / (n_s + 1):
            raise ConfigError(
                f"coverage: {n_s} samples per observation cannot resolve a {level:.3g} central "
                f"interval; need at least {int(np.ceil(1 / tail)) - 1}"
            )
        lo, hi = np.quantile(s, [tail, 1 - tail], axis=1, method="weibull")
        inside = (t >= lo) & (t <= hi)
        per_coord = inside.mean(axis=0)
        results[float(level)] = CoverageResult(
            level=float(level),
            fraction=float(inside.mean()),
            per_coordinate=np.asarray(per_coord),
            n_obs=int(s.shape[0]),
        )
    return results


def sbc_ranks(samples: ArrayLike, truth: ArrayLike, *, seed: int = 0) -> np.ndarray:
    """Rank of each true value among its posterior samples, in ``{0, ..., S}``.

    The rank counts the samples below the truth; ties (e.g. values clipped at a bound) are
    broken uniformly at random with ``seed`` so that a calibrated posterior still gives
    uniform ranks.

    Returns
    -------
    numpy.ndarray
        Integer ranks of the shape of ``truth``.
    """
    s, t = _pair(samples, truth)
    below = (s < t[:, None]).sum(axis=1)
    ties = (s == t[:, None]).sum(axis=1)
    if ties.any():
        rng = np.random.default_rng(seed)
        below = below + rng.integers(0, ties + 1)
    return below.astype(np.int64)


@dataclass(frozen=True)
class SBCResult:
    """Rank histogram and its chi-square uniformity test.

    Attributes
    ----------
    ranks
        Ranks, shape of ``truth``.
    n_samples
        ``S``: ranks lie in ``{0, ..., S}``.
    histogram, expected
        Counts per bin and the counts expected under uniform ranks.
    chi2, p_value
        Chi-square statistic and p-value (scipy.stats.chisquare) of the histogram.
    seed
        Seed used to break ties.
    """

    ranks: np.ndarray
    n_samples: int
    histogram: np.ndarray
    expected: np.ndarray
    chi2: float
    p_value: float
    seed: int


def sbc_test(
    samples: ArrayLike, truth: ArrayLike, *, n_bins: int | None = None, seed: int = 0
) -> SBCResult:
    """Simulation-based-calibration ranks, histogram and uniformity test.

    All ranks (every observation and coordinate) are pooled. Coordinates of one
    observation are usually correlated, which makes the pooled test over-confident; pass
    one coordinate (or a derived scalar) at a time where that matters.

    Parameters
    ----------
    samples
        Posterior samples ``(N, S, ...)``.
    truth
        True values ``(N, ...)``.
    n_bins
        Number of histogram bins over ``{0, ..., S}``; default ``min(S + 1, 20)``. Bins
        hold whole rank values and the expected counts account for unequal bins.
    seed
        Seed for breaking ties.

    Returns
    -------
    SBCResult
    """
    ranks = sbc_ranks(samples, truth, seed=seed)
    n_s = int(np.shape(samples)[1])
    n_values = n_s + 1
    n_bins = min(n_values, 20) if n_bins is None else int(n_bins)
    if not 2 <= n_bins <= n_values:
        raise ConfigError(
            f"sbc_test: n_bins must lie between 2 and S + 1 = {n_values}, got {n_bins}"
        )
    # Bin b holds the rank values [edges[b], edges[b+1]).
    edges = np.floor(np.linspace(0, n_values, n_bins + 1)).astype(np.int64)
    histogram = np.histogram(ranks.ravel(), bins=edges)[0]
    expected = ranks.size * np.diff(edges) / n_values
    chi2, p_value = stats.chisquare(histogram, expected)
    return SBCResult(
        ranks=ranks,
        n_samples=n_s,
        histogram=histogram,
        expected=expected,
        chi2=float(chi2),
        p_value=float(p_value),
        seed=int(seed),
    )

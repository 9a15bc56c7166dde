"""Metrics of the DDPRISM paper and posterior calibration checks.

* :func:`sinkhorn_divergence`: debiased Sinkhorn divergence between two sample sets, with
  the paper's settings (POT, log-domain Sinkhorn, half-split debiasing).
* :func:`wasserstein_divergence`: the same half-split debiasing with exact transport
  (``ot.emd2``); not the paper's metric, but converged and fast enough for EM monitoring.
* :func:`psnr` / :func:`mean_psnr`: per-sample peak signal-to-noise ratio.
* :func:`coverage`, :func:`sbc_ranks`, :func:`sbc_test`: calibration of posterior samples.

Every function accepts torch tensors or numpy arrays and never modifies its inputs.
See ``docs/metrics.md`` for definitions, known-answer checks and timings.
"""

from .calibration import CoverageResult, SBCResult, coverage, sbc_ranks, sbc_test
from .psnr import mean_psnr, psnr
from .sinkhorn import SinkhornResult, sinkhorn_divergence, sinkhorn_divergence_details
from .wasserstein import wasserstein_divergence

__all__ = [
    "CoverageResult",
    "SBCResult",
    "SinkhornResult",
    "coverage",
    "mean_psnr",
    "psnr",
    "sbc_ranks",
    "sbc_test",
    "sinkhorn_divergence",
    "sinkhorn_divergence_details",
    "wasserstein_divergence",
]

"""Run every method on every test cutout and measure each estimate against the truth.

What is compared, identically for every method (docs/evaluation.md explains why):

* **PSF-convolved** central galaxy on the cutout grid: each method's ``galaxy_conv``
  against ``TRUE_GALAXY_CONV`` (RMSE in noise units, PSNR, relative flux error, and the
  adaptive-moments centroid, ellipticity and size). This is the headline comparison,
  because photutils and the adversarial SVD only estimate convolved light.
* **Intrinsic** (PSF-free) galaxy, for methods that model it: ``galaxy`` against
  ``TRUE_GALAXY``, same measures with an ``int_`` prefix.
* **Calibration** of probabilistic methods: the intrinsic total-flux samples and the
  intrinsic pixel samples in the galaxy's footprint (``TRUE_GALAXY_CONV >= 1 sigma``)
  against the truth: coverage of 68% and 95% credible intervals and SBC ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .calibration import LEVELS, CalibrationSummary, inside, interval_method, summarize_calibration
from .measures import adaptive_moments, compare
from .methods import Estimate, Method
from .testset import EvalCutout

__all__ = ["MethodRun", "EvalResult", "evaluate_methods", "FOOTPRINT_SIGMA", "measure_estimate"]

#: footprint of the galaxy for pixel calibration: convolved truth above this many sigma
FOOTPRINT_SIGMA = 1.0

ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class MethodRun:
    """How one method ran: settings, time, failures."""

    name: str
    label: str
    probabilistic: bool
    intrinsic: bool
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    n_cutouts: int = 0
    hsm_failures: int = 0
    not_detected: int = 0
    error: str | None = None


@dataclass
class EvalResult:
    """Everything an evaluation produced (what :mod:`galprism.evaluate.report` writes).

    Attributes
    ----------
    cutouts
        The test cutouts, in order.
    methods
        One :class:`MethodRun` per method, in the order run.
    rows
        One record per (cutout, method) that produced an estimate.
    estimates
        ``{method: [Estimate or None, ...]}`` aligned with ``cutouts`` (samples dropped;
        None for cutouts a method did not run on).
    calibration
        ``{method: CalibrationSummary}`` for probabilistic methods.
    truth_failures
        Cutouts whose convolved truth has no adaptive-moments fit (shape errors NaN for all).
    """

    cutouts: list[EvalCutout]
    methods: list[MethodRun]
    rows: list[dict[str, Any]]
    estimates: dict[str, list[Estimate | None]]
    calibration: dict[str, CalibrationSummary]
    truth_failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def measure_estimate(
    cutout: EvalCutout, est: Estimate, truth_moments: Any, truth_int_moments: Any
) -> dict[str, Any]:
    """Per-cutout record of one estimate (see module docstring)."""
    row: dict[str, Any] = dict(
        compare(cutout.galaxy_conv, est.galaxy_conv, cutout.sigma, truth_moments=truth_moments)
    )
    row["abs_flux_err"] = abs(row["flux_err"])
    if est.galaxy is not None:
        intr = compare(
            cutout.galaxy,
            est.galaxy,
            cutout.sigma,
            truth_moments=truth_int_moments,
            guess_sigma=1.5,
        )
        intr["abs_flux_err"] = abs(intr["flux_err"])
        row.update({f"int_{k}": v for k, v in intr.items()})
    return row


def _calibration_row(
    cutout: EvalCutout, samples: np.ndarray, kind: str
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    flux = samples.sum(axis=(1, 2))
    true_flux = float(cutout.galaxy.sum())
    std = float(flux.std(ddof=1))
    foot = cutout.galaxy_conv >= FOOTPRINT_SIGMA * cutout.sigma
    pix_s = samples[:, foot]
    pix_t = cutout.galaxy[foot]
    row: dict[str, Any] = {
        "flux_true": true_flux,
        "flux_mean": float(flux.mean()),
        "flux_std": std,
        "flux_z": (true_flux - float(flux.mean())) / std if std > 0 else math.nan,
        "flux_rank": int((flux < true_flux).sum()),
        "footprint_pixels": int(foot.sum()),
    }
    for lv in LEVELS:
        pct = int(round(100 * lv))
        row[f"flux_in{pct}"] = bool(inside(flux, np.array(true_flux), lv, kind))
        row[f"pix_cov{pct}"] = (
            float(inside(pix_s, pix_t, lv, kind).mean()) if pix_t.size else math.nan
        )
    return row, pix_s, pix_t


def evaluate_methods(
    cutouts: Sequence[EvalCutout],
    methods: Sequence[Method],
    *,
    interval: str = "auto",
    seed: int = 0,
    progress: ProgressFactory | None = None,
    on_error: Callable[[str, BaseException], None] | None = None,
) -> EvalResult:
    """Run each method on all cutouts and measure every estimate.

    A method that raises is recorded (``MethodRun.error``) and the others still run;
    ``on_error`` is told about it.
    """
    cutouts = list(cutouts)
    truth_m = [adaptive_moments(c.galaxy_conv) for c in cutouts]
    truth_int_m = [adaptive_moments(c.galaxy, 1.5) for c in cutouts]
    runs: list[MethodRun] = []
    rows: list[dict[str, Any]] = []
    estimates: dict[str, list[Estimate | None]] = {}
    calibration: dict[str, CalibrationSummary] = {}
    for method in methods:
        run = MethodRun(method.name, method.label, method.probabilistic, method.intrinsic)
        runs.append(run)
        try:
            run.settings = dict(method.settings())
            tick = progress(method.label, len(cutouts)) if progress is not None else None
            t0 = time.perf_counter()
            ests = method.estimate(cutouts, tick)
            run.seconds = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - one failing method must not stop the others
            run.error = " ".join(str(exc).split()) or type(exc).__name__
            if on_error is not None:
                on_error(method.name, exc)
            continue
        if len(ests) > len(cutouts):
            run.error = f"returned {len(ests)} estimates for {len(cutouts)} cutouts"
            continue
        # A method may cover only the first cutouts (e.g. scarlet2 given a cutout limit).
        run.n_cutouts = len(ests)
        flux_s, flux_t, pix_s, pix_t = [], [], [], []
        kind = (
            interval_method(ests[0].samples.shape[0], LEVELS, interval)
            if method.probabilistic and ests
            else ""
        )
        for i, (c, e) in enumerate(zip(cutouts[: len(ests)], ests, strict=True)):
            row: dict[str, Any] = {
                "cutout": c.name,
                "method": method.name,
                "blendedness": c.blendedness,
                "sigma": c.sigma,
                "central_ident": c.central_ident,
                "seconds": e.seconds,
                "note": e.note,
            }
            row.update(measure_estimate(c, e, truth_m[i], truth_int_m[i]))
            run.hsm_failures += int(row["hsm_ok"] == 0.0)
            run.not_detected += int(bool(e.note))
            if method.probabilistic and e.samples is not None:
                cal, ps, pt = _calibration_row(c, e.samples, kind)
                row.update(cal)
                flux_s.append(e.samples.sum(axis=(1, 2)))
                flux_t.append(cal["flux_true"])
                pix_s.append(ps)
                pix_t.append(pt)
            rows.append(row)
        if flux_s:
            calibration[method.name] = summarize_calibration(
                np.stack(flux_s), np.array(flux_t), pix_s, pix_t, method=kind, seed=seed
            )
        # Keep the point estimates for figures; samples are large and already summarised.
        kept: list[Estimate | None] = [
            Estimate(e.galaxy_conv, e.galaxy, None, e.seconds, e.note) for e in ests
        ]
        estimates[method.name] = kept + [None] * (len(cutouts) - len(ests))
    return EvalResult(
        cutouts=cutouts,
        methods=runs,
        rows=rows,
        estimates=estimates,
        calibration=calibration,
        truth_failures=sum(not m.ok for m in truth_m),
    )

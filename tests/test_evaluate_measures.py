"""Known-answer checks of the evaluation's per-cutout measures and calibration statistics."""

from __future__ import annotations

import math

import galsim
import numpy as np
import pytest

from galprism.evaluate.calibration import credible_interval, interval_method, summarize_calibration
from galprism.evaluate.measures import (
    adaptive_moments,
    blendedness,
    compare,
    flux_error,
    psnr_peak,
    rmse_noise,
)


def gaussian_image(
    sigma: float = 3.0,
    g1: float = 0.0,
    g2: float = 0.0,
    dx: float = 0.0,
    dy: float = 0.0,
    n: int = 64,
    flux: float = 100.0,
) -> np.ndarray:
    prof = galsim.Gaussian(sigma=sigma, flux=flux).shear(g1=g1, g2=g2).shift(dx, dy)
    return prof.drawImage(nx=n, ny=n, scale=1.0).array.astype(np.float64)


def test_identical_images_give_zero_errors_and_infinite_psnr():
    """An estimate equal to the truth: every error 0 and PSNR +inf (not NaN, not an exception)."""
    t = gaussian_image(g1=0.2)
    rec = compare(t, t.copy(), sigma=0.5)
    assert rec["rmse"] == 0.0 and rec["flux_err"] == 0.0
    assert math.isinf(rec["psnr"]) and rec["psnr"] > 0
    assert rec["centroid_err"] == pytest.approx(0.0, abs=1e-9)
    assert rec["g_err"] == pytest.approx(0.0, abs=1e-9) and rec["size_err"] == pytest.approx(
        0.0, abs=1e-9
    )
    assert rec["hsm_ok"] == 1.0


def test_pure_flux_offset():
    """Scaling by 1.1 is a +10% flux error, RMSE 0.1 rms(t)/sigma, and leaves centroid, shape and
    size unchanged."""
    t = gaussian_image(sigma=2.5, g2=-0.1)
    e = 1.1 * t
    assert flux_error(t, e) == pytest.approx(0.1, rel=1e-12)
    assert flux_error(t, 0.75 * t) == pytest.approx(-0.25, rel=1e-12)
    sigma = 0.3
    assert rmse_noise(t, e, sigma) == pytest.approx(0.1 * np.sqrt(np.mean(t**2)) / sigma, rel=1e-12)
    assert psnr_peak(t, e) == pytest.approx(
        20 * np.log10(t.max() / (0.1 * np.sqrt(np.mean(t**2)))), rel=1e-12
    )
    rec = compare(t, e, sigma)
    assert rec["centroid_err"] < 1e-6 and rec["g_err"] < 1e-6 and abs(rec["size_err"]) < 1e-6


def test_known_ellipticity_size_and_centroid():
    """A GalSim Gaussian sheared by g1=0.3 measures g1=0.3; its size is sigma; a known shift is the
    centroid error."""
    m = adaptive_moments(gaussian_image(sigma=3.0, g1=0.3))
    assert m.ok
    assert m.g1 == pytest.approx(0.3, abs=0.005) and m.g2 == pytest.approx(0.0, abs=0.005)
    # Shear keeps the area, so det(M)^(1/4) is sigma (plus the pixel's 1/12 px^2 variance).
    assert m.sigma == pytest.approx(np.sqrt(9.0 + 1.0 / 12.0), rel=0.01)
    m2 = adaptive_moments(gaussian_image(sigma=3.0, g2=-0.2))
    assert m2.g2 == pytest.approx(-0.2, abs=0.005) and m2.g1 == pytest.approx(0.0, abs=0.005)
    t = gaussian_image(sigma=3.0)
    e = gaussian_image(sigma=3.0, dx=1.5, dy=-0.7)
    rec = compare(t, e, 1.0)
    assert rec["centroid_err"] == pytest.approx(math.hypot(1.5, 0.7), abs=0.01)
    bigger = compare(t, gaussian_image(sigma=3.6), 1.0)
    assert bigger["size_err"] == pytest.approx(
        (np.sqrt(3.6**2 + 1 / 12) - np.sqrt(9 + 1 / 12)) / np.sqrt(9 + 1 / 12), abs=0.005
    )


def test_adaptive_moments_failure_is_nan_and_counted():
    """An empty estimate cannot be measured: shape errors NaN, hsm_ok 0, flux error -1; no
    exception."""
    t = gaussian_image()
    rec = compare(t, np.zeros_like(t), 1.0)
    assert rec["hsm_ok"] == 0.0
    assert all(math.isnan(rec[k]) for k in ("centroid_err", "g_err", "size_err"))
    assert rec["flux_err"] == pytest.approx(-1.0)
    assert not adaptive_moments(np.full((32, 32), np.nan)).ok


def test_blendedness_known_values():
    """No neighbour: 0; a neighbour identical to the galaxy and on top of it: 1/2; a distant one:
    about 0."""
    g = gaussian_image(sigma=2.0, n=48)
    assert blendedness(g, np.zeros_like(g)) == 0.0
    assert blendedness(g, g.copy()) == pytest.approx(0.5, rel=1e-12)
    far = gaussian_image(sigma=2.0, dx=20.0, n=48)
    assert blendedness(g, far) < 1e-6


def test_student_interval_has_nominal_coverage_for_calibrated_gaussian_posterior():
    """Truth and 8 samples drawn from the same Gaussian: coverage 68% and 95% within 3 standard
    errors.

    A plain mean +- 1.96 s interval would cover only about 91%: the Student prediction
    interval is what makes 8 samples enough.
    """
    rng = np.random.default_rng(1)
    n, s = 4000, 8
    mu = rng.normal(0, 5, n)
    scale = rng.uniform(0.5, 2.0, n)
    samples = mu[:, None] + scale[:, None] * rng.standard_normal((n, s))
    truth = mu + scale * rng.standard_normal(n)
    assert interval_method(s) == "student"
    cal = summarize_calibration(
        samples,
        truth,
        [samples[:, :, None].transpose(1, 0, 2).reshape(s, -1)],
        [truth],
        method="auto",
    )
    for lv in (0.68, 0.95):
        err = np.sqrt(lv * (1 - lv) / n)
        assert abs(cal.flux_coverage[lv] - lv) < 3 * err, (lv, cal.flux_coverage[lv])
        assert abs(cal.pixel_coverage[lv] - lv) < 3 * err
    assert cal.flux_sbc_p > 1e-3
    naive = np.mean(np.abs(truth - samples.mean(1)) <= 1.96 * samples.std(1, ddof=1))
    assert naive < 0.93


def test_overconfident_posterior_is_caught():
    """Samples half as wide as the truth's spread: coverage far below nominal and SBC rejects
    uniformity."""
    rng = np.random.default_rng(2)
    n, s = 2000, 8
    samples = 0.5 * rng.standard_normal((n, s))
    truth = rng.standard_normal(n)
    cal = summarize_calibration(samples, truth, [samples.T[:, :10]], [truth[:10]])
    assert cal.flux_coverage[0.68] < 0.50 and cal.flux_coverage[0.95] < 0.80
    assert cal.flux_sbc_p < 1e-6


def test_quantile_intervals_with_many_samples():
    """With 99 samples the quantile interval is used and is calibrated too."""
    rng = np.random.default_rng(3)
    n, s = 3000, 99
    samples = rng.standard_normal((n, s))
    truth = rng.standard_normal(n)
    assert interval_method(s) == "quantile"
    lo, hi = credible_interval(samples.T, 0.95, "quantile")
    cov = np.mean((truth >= lo) & (truth <= hi))
    assert abs(cov - 0.95) < 3 * np.sqrt(0.95 * 0.05 / n)

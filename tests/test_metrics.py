"""Metrics: Sinkhorn divergence against known answers, PSNR, posterior calibration."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from paper.manifold import contrastive_problem

from galprism.errors import ConfigError, InputError, ShapeError
from galprism.metrics import (
    coverage,
    mean_psnr,
    psnr,
    sbc_ranks,
    sbc_test,
    sinkhorn_divergence,
    sinkhorn_divergence_details,
    wasserstein_divergence,
)
from galprism.metrics.sinkhorn import transport_cost

# Converged settings for known-answer checks (the paper's reg = 1e-3 does not converge on
# these small problems, see docs/metrics.md).
CONVERGED = {"reg": 0.1, "max_iter": 3000, "stop_thr": 1e-5, "backend": "numpy", "dtype": "float64"}


@pytest.fixture
def one_thread():
    """Torch on 1 thread: on a loaded 2-core runner 2 threads make small Sinkhorn problems crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- Sinkhorn ------------------------------------------------------------------------------
def test_translate_costs_exactly_the_squared_shift():
    """OT(u, u + t) - OT(u, u) = |t|^2 for a converged plan with squared Euclidean cost and uniform
    weights.

    Fails if the cost is not squared Euclidean, the weights are not uniform, or the returned
    value is not the transport cost <P, M> of the plan.
    """
    rng = np.random.default_rng(0)
    u = rng.normal(size=(150, 3))
    t = np.array([0.7, -0.4, 0.2])
    shifted, _, ok1 = transport_cost(u, u + t, reg=0.5, max_iter=3000, stop_thr=1e-7)
    same, _, ok2 = transport_cost(u, u, reg=0.5, max_iter=3000, stop_thr=1e-7)
    assert ok1 and ok2, "the known-answer settings must converge"
    assert shifted - same == pytest.approx(float(t @ t), rel=1e-5)


def test_converged_small_reg_cost_approaches_exact_wasserstein():
    """<P, M> of the entropic plan tends to the exact W2^2 (ot.emd2) as reg -> 0 (not the entropic
    objective)."""
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(60, 2)), rng.normal(size=(60, 2)) + 0.5
    exact = ot.emd2([], [], ot.dist(u, v))
    cost, _, ok = transport_cost(u, v, reg=0.02, max_iter=20000, stop_thr=1e-5)
    assert ok
    assert cost == pytest.approx(exact, rel=0.02)
    # The entropic objective <P, M> + reg sum P log P would sit about reg * log(60) = 0.08 lower.
    assert cost >= exact


def test_shifted_gaussians_give_squared_mean_difference():
    """Independent 1-D Gaussian samples (standardised) with means 1 apart: S ~ W2^2 = 1; same law:
    S ~ 0."""
    rng = np.random.default_rng(2)

    def standard(n):
        x = rng.normal(size=(n, 1))
        return (x - x.mean()) / x.std()

    u, v, w = standard(400), standard(400) + 1.0, standard(400)
    s_shift = sinkhorn_divergence(u, v, **CONVERGED)
    s_same = sinkhorn_divergence(u, w, **CONVERGED)
    assert s_shift == pytest.approx(1.0, abs=0.05), f"shifted Gaussians: {s_shift:.3f} instead of 1"
    assert abs(s_same) < 0.06, f"identical distributions: {s_same:.3f} instead of ~0"


def test_matches_the_reference_formula_written_out():
    """The paper's settings and half split, written out with POT calls as in
    ddprism/metrics/metrics.py."""
    rng = np.random.default_rng(3)
    u, v = rng.normal(size=(61, 5)), rng.normal(size=(50, 5)) * 1.5

    def ref_ot(p, q):
        return ot.sinkhorn2(
            a=[],
            b=[],
            M=ot.dist(p, q),
            reg=1e-3,
            method="sinkhorn_log",
            numItermax=1024,
            stopThr=1e-2,
            warn=False,
        )

    hu, hv = len(u) // 2, len(v) // 2
    expected = ref_ot(u, v) - ref_ot(u[:hu], u[-hu:]) / 2 - ref_ot(v[:hv], v[-hv:]) / 2
    got = sinkhorn_divergence_details(u, v, backend="numpy", dtype="float64")
    assert got.divergence == pytest.approx(float(expected), rel=1e-10)
    assert (got.n_u, got.n_v) == (61, 50)
    assert (
        got.settings["reg"] == 1e-3
        and got.settings["stop_thr"] == 1e-2
        and got.settings["max_iter"] == 1024
    )


def test_torch_float32_agrees_with_numpy_float64(one_thread):
    """The fast default (torch, float32) must give the float64 value to within 1e-3 relative."""
    rng = np.random.default_rng(4)
    u, v = rng.normal(size=(100, 5)), rng.normal(size=(100, 5)) + 0.3
    a = sinkhorn_divergence_details(u, v, backend="numpy", dtype="float64")
    b = sinkhorn_divergence_details(
        torch.from_numpy(u), torch.from_numpy(v), backend="torch", dtype="float32"
    )
    assert b.divergence == pytest.approx(a.divergence, rel=1e-3, abs=1e-4)
    assert a.iterations == b.iterations, "float32 changed the number of Sinkhorn iterations"


def test_paper_settings_separate_a_wrong_source_from_the_truth():
    """Paper settings on the manifold: truth vs fresh truth ~ 0, truth vs another source's curve >>
    0.

    (At this small n the paper's settings do not converge and barely see a blur of the
    truth; docs/metrics.md measures how the value depends on n.)
    """
    problem = contrastive_problem(2, 16, seed=0)
    n = 128
    truth = problem.sample_source(0, n, seed=1)
    fresh = problem.sample_source(0, n, seed=2)
    other = problem.sample_source(1, n, seed=2)
    opts = {"n_samples": n, "backend": "numpy", "dtype": "float64"}
    s_same = sinkhorn_divergence(truth, fresh, **opts)
    s_other = sinkhorn_divergence(truth, other, **opts)
    assert s_other > 5.0, f"a different source scored only {s_other:.3f}"
    assert abs(s_same) < 0.02 * s_other, (
        f"same distribution scored {s_same:.3f} vs other source {s_other:.3f}"
    )


def test_n_samples_takes_the_first_rows_and_inputs_are_untouched(one_thread):
    rng = np.random.default_rng(5)
    u, v = rng.normal(size=(100, 2)), rng.normal(size=(80, 2))
    u_copy, v_t = u.copy(), torch.from_numpy(v.copy())
    v_t_copy = v_t.clone()
    r = sinkhorn_divergence_details(u, v_t, n_samples=40)
    assert (r.n_u, r.n_v) == (40, 40)
    assert r.divergence == pytest.approx(sinkhorn_divergence(u[:40], v[:40]), rel=1e-6)
    np.testing.assert_array_equal(u, u_copy)
    assert torch.equal(v_t, v_t_copy), "the metric modified its input"


def test_sinkhorn_bad_input_is_refused_with_one_line_errors():
    u = np.zeros((10, 3))
    with pytest.raises(ShapeError, match="features"):
        sinkhorn_divergence(u, np.zeros((10, 4)))
    with pytest.raises(ShapeError, match="at least 2"):
        sinkhorn_divergence(u[:1], u)
    bad = u.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        sinkhorn_divergence(bad, u, names=("posterior samples", "truth"))
    with pytest.raises(ConfigError, match="backend"):
        sinkhorn_divergence(u, u, backend="jax")
    with pytest.raises(ConfigError, match="reg"):
        sinkhorn_divergence(u, u, reg=0)


def test_exact_wasserstein_matches_the_sorted_formula_in_one_dimension():
    """In 1-D, W2^2 between two equal-size samples is mean((sort u - sort v)^2); each half-split
    term too."""
    rng = np.random.default_rng(6)
    u, v = rng.normal(size=(300, 1)), rng.gamma(2.0, size=(300, 1))

    def w2(a, b):
        return float(np.mean((np.sort(a[:, 0]) - np.sort(b[:, 0])) ** 2))

    expected = w2(u, v) - w2(u[:150], u[-150:]) / 2 - w2(v[:150], v[-150:]) / 2
    assert wasserstein_divergence(torch.from_numpy(u), v) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ConfigError, match="did not finish"):
        wasserstein_divergence(u, v, max_iter=5)


# -- PSNR --------------------------------------------------------------------------------
def test_psnr_known_answer():
    """A constant error c gives RMSE c, so PSNR = 20 log10(4 / (c + 1e-6)) per sample."""
    truth = np.zeros((3, 5))
    offsets = np.array([0.4, 0.04, 0.0])
    estimate = truth + offsets[:, None]
    expected = 20 * np.log10(4 / (offsets + 1e-6))
    np.testing.assert_allclose(psnr(truth, estimate, 4.0), expected, rtol=1e-12)
    assert psnr(truth, estimate, 4.0)[0] == pytest.approx(20.0, abs=1e-4)
    assert mean_psnr(truth, estimate, 4.0) == pytest.approx(expected.mean())


def test_psnr_is_per_sample_for_images_and_accepts_torch():
    """Images (N, C, H, W) give one PSNR per image, not a mean of per-pixel PSNRs."""
    truth = torch.zeros(2, 1, 4, 4)
    est = truth.clone()
    est[0, 0, 0, 0] = 4.0  # one pixel off by 4: RMSE = 4/4 = 1 -> 12.04 dB
    out = psnr(truth, est, 4.0)
    assert out.shape == (2,)
    assert out[0] == pytest.approx(20 * math.log10(4 / (1 + 1e-6)))
    assert out[1] == pytest.approx(20 * math.log10(4 / 1e-6))


def test_psnr_bad_input():
    with pytest.raises(ShapeError, match="shape"):
        psnr(np.zeros((3, 5)), np.zeros((3, 4)), 4.0)
    with pytest.raises(ConfigError, match="max_spread"):
        psnr(np.zeros((3, 5)), np.zeros((3, 5)), 0.0)
    with pytest.raises(InputError, match="non-finite"):
        psnr(np.zeros((3, 5)), np.full((3, 5), np.inf), 4.0)


# -- calibration ---------------------------------------------------------------------------
def _gaussian_posteriors(
    width: float, n_obs: int = 3000, n_samples: int = 99, dim: int = 2, seed: int = 0
):
    """Truth ~ N(mu, 1) per coordinate; samples ~ N(mu, width^2): calibrated iff width == 1."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(n_obs, dim)) * 3
    truth = mu + rng.normal(size=(n_obs, dim))
    samples = mu[:, None] + width * rng.normal(size=(n_obs, n_samples, dim))
    return samples, truth


def test_calibrated_gaussian_posterior_has_nominal_coverage_and_uniform_ranks():
    samples, truth = _gaussian_posteriors(1.0)
    cov = coverage(torch.from_numpy(samples), truth)
    for level, res in cov.items():
        se = math.sqrt(level * (1 - level) / truth.size)
        assert abs(res.fraction - level) < 4 * se, (
            f"{level}: coverage {res.fraction:.4f} is not nominal"
        )
        assert res.per_coordinate.shape == (2,)
    sbc = sbc_test(samples, truth)
    assert sbc.p_value > 1e-3, f"calibrated ranks rejected as non-uniform (p = {sbc.p_value:.2g})"
    assert sbc.histogram.sum() == truth.size and sbc.expected.sum() == pytest.approx(truth.size)


def test_too_narrow_posterior_under_covers_and_fails_sbc():
    samples, truth = _gaussian_posteriors(0.6)
    cov = coverage(samples, truth)
    assert cov[0.68].fraction < 0.68 - 0.1 and cov[0.95].fraction < 0.95 - 0.05, (
        "over-confident posterior not caught"
    )
    assert sbc_test(samples, truth).p_value < 1e-6


def test_too_wide_posterior_over_covers():
    samples, truth = _gaussian_posteriors(1.6)
    assert coverage(samples, truth)[0.68].fraction > 0.68 + 0.1


def test_coverage_is_nominal_with_few_samples():
    """With S = 19 samples the Weibull quantiles still cover 68 %; linear ones would cover ~61 %."""
    samples, truth = _gaussian_posteriors(1.0, n_obs=20000, n_samples=19, dim=1, seed=3)
    frac = coverage(samples, truth, levels=(0.68,))[0.68].fraction
    assert abs(frac - 0.68) < 0.015, f"coverage {frac:.3f} with 19 samples"


def test_sbc_ranks_count_samples_below_and_break_ties_uniformly():
    samples = np.array([[[0.0], [1.0], [2.0], [3.0]]])  # (1, 4, 1)
    assert sbc_ranks(samples, np.array([[2.5]]))[0, 0] == 3
    assert sbc_ranks(samples, np.array([[-1.0]]))[0, 0] == 0
    # A posterior clipped at 0 whose truth is 0: every sample ties; ranks must spread over 0..S.
    tied = np.zeros((4000, 9, 1))
    ranks = sbc_ranks(tied, np.zeros((4000, 1)), seed=1)
    counts = np.bincount(ranks.ravel(), minlength=10)
    assert counts.min() > 300, f"ties were not broken uniformly: {counts}"


def test_calibration_bad_input():
    with pytest.raises(ShapeError, match="do not match"):
        coverage(np.zeros((5, 10, 3)), np.zeros((5, 4)))
    with pytest.raises(ShapeError, match="2 samples"):
        coverage(np.zeros((5, 1, 3)), np.zeros((5, 3)))
    with pytest.raises(ConfigError, match="cannot resolve"):
        coverage(np.zeros((5, 9, 3)), np.zeros((5, 3)), levels=(0.95,))
    with pytest.raises(ConfigError, match="n_bins"):
        sbc_test(np.zeros((5, 9, 3)), np.zeros((5, 3)), n_bins=50)

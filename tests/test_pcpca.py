"""PCPCA baseline: closed-form fit, Gaussian posterior, and recovery of a planted target
structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from paper.pcpca import PCPCA

from galprism.errors import ConfigError, ShapeError
from galprism.metrics import mean_psnr

D = 20


def _planted(seed: int = 0, n: int = 4000, m: int = 4000):
    """Background: 3 strong directions (sd 3) + noise; target adds 2 weaker orthogonal ones (sd 1).

    Plain PCA of the target set sees the background directions first; the planted target
    directions are only visible by contrast with the background set.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    bg_dirs, tg_dirs = q[:, :3] * 3.0, q[:, 3:5]
    offset = rng.normal(size=D)
    background = rng.normal(size=(m, 3)) @ bg_dirs.T + 0.1 * rng.normal(size=(m, D)) + offset
    source = rng.normal(size=(n, 2)) @ tg_dirs.T + 0.5
    target = rng.normal(size=(n, 3)) @ bg_dirs.T + source + 0.1 * rng.normal(size=(n, D)) + offset
    return target, background, source, q[:, 3:5]


def _alignment(weights: np.ndarray, basis: np.ndarray) -> float:
    """Mean squared cosine between the fitted directions and the planted subspace (1 = inside)."""
    unit = weights / np.linalg.norm(weights, axis=0)
    return float(np.linalg.norm(basis.T @ unit) ** 2 / unit.shape[1])


def test_recovers_planted_target_structure_better_than_pca():
    """PCPCA must find the target-only directions and separate the source far better than PCA
    (gamma = 0)."""
    target, background, source, basis = _planted()
    pca = PCPCA(2, 0.0).fit(target, background)
    pcpca = PCPCA(2, 0.99).fit(target, background)
    assert _alignment(pca.weights, basis) < 0.05, (
        "the test is meaningless if PCA already finds the target directions"
    )
    assert _alignment(pcpca.weights, basis) > 0.95, (
        "PCPCA did not find the planted target directions"
    )
    psnr_pca = mean_psnr(source, pca.posterior_mean(target), 4.0)
    psnr_pcpca = mean_psnr(source, pcpca.posterior_mean(target), 4.0)
    assert psnr_pcpca > psnr_pca + 10, f"PCPCA {psnr_pcpca:.1f} dB vs PCA {psnr_pca:.1f} dB"


def test_gamma_zero_is_probabilistic_pca():
    """gamma = 0 must give Tipping & Bishop's PPCA: sigma^2 = mean discarded eigenvalue, W W^T = U
    (L - sigma^2) U^T."""
    target, background, _, _ = _planted(seed=1, n=500, m=300)
    model = PCPCA(3, 0.0).fit(target, background)
    vals, vecs = np.linalg.eigh(np.cov(target.T, bias=True))
    vals, vecs = vals[::-1], vecs[:, ::-1]
    sigma2 = vals[3:].mean()
    assert model.sigma2 == pytest.approx(sigma2, rel=1e-9)
    expected = vecs[:, :3] @ np.diag(vals[:3] - sigma2) @ vecs[:, :3].T
    np.testing.assert_allclose(model.weights @ model.weights.T, expected, atol=1e-9)


def test_posterior_equals_gaussian_conditioning():
    """E[s|x] and Cov[s|x] must equal the joint-Gaussian conditioning formulas (written without
    Woodbury)."""
    target, background, _, _ = _planted(seed=2, n=800, m=800)
    model = PCPCA(2, 0.9).fit(target, background)
    w, s2 = model.weights, model.sigma2
    prior = w @ w.T
    gain = prior @ np.linalg.inv(prior + s2 * np.eye(D))
    x = target[:7]
    expected = (model.mean_target - model.mean_background) + (x - model.mean_target) @ gain.T
    np.testing.assert_allclose(model.posterior_mean(x), expected, atol=1e-10)
    np.testing.assert_allclose(model.posterior_covariance(), prior - gain @ prior, atol=1e-10)


def test_posterior_samples_are_reproducible_and_have_the_posterior_moments():
    target, background, _, _ = _planted(seed=3, n=800, m=800)
    model = PCPCA(2, 0.9).fit(target, background)
    x = torch.from_numpy(target[:2]).float()
    a = model.sample_posterior(x, 4000, seed=5)
    assert isinstance(a, torch.Tensor) and a.shape == (2, 4000, D) and a.dtype == torch.float32
    assert torch.equal(a, model.sample_posterior(x, 4000, seed=5)), "same seed, different samples"
    s = a[0].double().numpy()
    np.testing.assert_allclose(s.mean(0), model.posterior_mean(target[:1])[0], atol=0.1)
    np.testing.assert_allclose(np.cov(s.T), model.posterior_covariance(), atol=0.05)


def test_images_keep_their_shape_and_inputs_are_untouched():
    rng = np.random.default_rng(4)
    target, background = rng.normal(size=(50, 1, 4, 4)), rng.normal(size=(60, 1, 4, 4)) * 0.5
    t_copy = target.copy()
    model = PCPCA(2, 0.5).fit(target, background)
    assert model.posterior_mean(target).shape == (50, 1, 4, 4)
    np.testing.assert_array_equal(target, t_copy)


def test_bad_settings_and_inputs_are_refused():
    target, background, _, _ = _planted(seed=5, n=200, m=400)
    with pytest.raises(ConfigError, match="gamma must satisfy"):
        PCPCA(2, 0.6).fit(target, background)  # n - gamma m < 0
    rng = np.random.default_rng(6)
    quiet, loud = 0.1 * rng.normal(size=(300, D)), rng.normal(size=(300, D))
    with pytest.raises(ConfigError, match="not positive"):
        PCPCA(2, 0.4).fit(quiet, loud)  # background outweighs the target everywhere: sigma^2 < 0
    with pytest.raises(ConfigError, match="n_components"):
        PCPCA(D, 0.1).fit(target, background)
    with pytest.raises(ShapeError, match="features"):
        PCPCA(2, 0.1).fit(target, background[:, :5])
    with pytest.raises(ConfigError, match="call fit"):
        PCPCA(2, 0.1).posterior_mean(target)
    model = PCPCA(2, 0.1).fit(target, background)
    with pytest.raises(ShapeError, match="fitted on"):
        model.posterior_mean(target[:, :5])

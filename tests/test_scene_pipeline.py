"""Scene mode: the joint model of a blend against its closed form, and the pipeline end to end."""

from __future__ import annotations

import numpy as np
import torch

from galprism.diffusion.samplers import SamplerConfig
from galprism.frame import Frame
from galprism.gaussian import GaussianPrior
from galprism.observation import Observation
from galprism.scene.model import build_blend_model, flux_scales, sample_blend, typical_flux
from galprism.testing import exactness_errors
from tests.fits_factory import gaussian_psf


def _smooth_prior(size: int, seed: int) -> GaussianPrior:
    """A smooth Gaussian galaxy prior with a positive mean, on a ``size`` x ``size`` grid."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1).to(torch.float64)
    cov = 0.5 * torch.exp(-torch.cdist(p, p) ** 2 / 2.0) + 1e-3 * torch.eye(size * size)
    r2 = ((p - (size - 1) / 2) ** 2).sum(1)
    mean = (torch.exp(-r2 / 2.0) + 0.05 * torch.rand(size * size, generator=gen)).reshape(
        1, size, size
    )
    return GaussianPrior.from_covariance(mean.to(torch.float64), cov.to(torch.float64))


def _dense(model, k: int, c: int, stamp: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked map from (x_1..x_K, coefficients) to the data, and the prior factor."""
    d = int(np.prod(stamp))
    n = model.y[0].numel()
    valid = model.valid.reshape(-1).to(torch.float64)
    blocks = []
    for op in model.light:
        eye = torch.eye(d, dtype=torch.float64).reshape(d, *stamp)
        blocks.append(op.apply(eye).reshape(d, n).T)
    cols = model.linear.columns[0]
    m = torch.cat([*blocks, cols], dim=1) * valid[:, None]
    return m, model.linear.factors[0]


def test_two_galaxies_and_a_star_blend_posterior_matches_its_closed_form():
    """Galaxies by MMPS plus star and background drawn given them must be the exact joint
    posterior of the linear-Gaussian blend: a wrong placement adjoint, a flux scale left out
    of the operator or the conditional draw, a whitening that ignores the mask, or a star
    column out of step with its coefficient would bias the mean or the spread."""
    stamp = (1, 4, 4)
    prior = _smooth_prior(4, seed=0)
    frame = Frame(stamp)
    h = w = 8
    gen = torch.Generator().manual_seed(1)
    valid = torch.rand(1, h, w, generator=gen) > 0.1
    galaxies = np.array([[2.3, 2.8], [5.2, 4.6]])
    stars = np.array([[6.4, 1.2]])
    scales = np.array([1.0, 2.5])
    noise = 0.04
    psf = gaussian_psf(5, 1.0)
    blank = Observation(np.zeros((1, h, w)), np.full((1, h, w), noise), psf, valid=valid.numpy())
    model = build_blend_model(
        blank, frame, galaxies, scales, stars, star_scale=np.array([3.0]), background_scale=2.0, dtype=torch.float64
    )
    m, factor = _dense(model, 2, 1, stamp)
    d = int(np.prod(stamp))
    k_lin = factor.shape[0]
    mu = torch.cat([prior.mean.reshape(-1)] * 2 + [torch.zeros(k_lin, dtype=torch.float64)])
    s = torch.block_diag(prior.covariance(), prior.covariance(), factor @ factor.T)
    truth = mu + torch.linalg.cholesky(s) @ torch.randn(len(mu), generator=gen, dtype=torch.float64)
    y = (m @ truth + noise**0.5 * torch.randn(h * w, generator=gen, dtype=torch.float64)) * (
        valid.reshape(-1)
    )
    obs = Observation(
        y.reshape(1, h, w).numpy(), np.full((1, h, w), noise), psf, valid=valid.numpy()
    )
    model = build_blend_model(
        obs, frame, galaxies, scales, stars, star_scale=np.array([3.0]), background_scale=2.0, dtype=torch.float64
    )
    g = m @ s @ m.T + noise * torch.eye(h * w, dtype=torch.float64)
    g = g + torch.diag((~valid.reshape(-1)).to(torch.float64))  # masked rows: data 0, no info
    gain = torch.linalg.solve(g, m @ s).T
    mean = mu + gain @ (y - m @ mu)
    cov = s - gain @ m @ s
    # The samples hold s_k x_k: the closed form of that is a rescaling.
    scale = torch.cat(
        [torch.full((d,), float(v), dtype=torch.float64) for v in scales]
        + [torch.ones(k_lin, dtype=torch.float64)]
    )
    mean, cov = mean * scale, cov * scale[:, None] * scale[None, :]

    n = 512
    out = sample_blend(
        model,
        prior,
        SamplerConfig(method="pc", steps=16, n_samples=n, cg_iterations=h * w),
        torch.Generator().manual_seed(2),
        torch.Generator().manual_seed(3),
    )
    samples = torch.cat([out.galaxies.reshape(n, -1), out.coefficients], dim=1)
    mean_err, std_err = exactness_errors(samples, mean, cov)
    assert mean_err < 0.25, f"joint posterior mean off by {mean_err:.3f} sigma"
    assert std_err < 0.15, f"joint posterior std off by {std_err:.3f} (relative)"
    std = cov.diagonal().sqrt()
    want_corr = cov / std[:, None] / std[None, :]
    got_corr = torch.corrcoef(samples.T)
    corr_err = float((got_corr - want_corr).abs().max())
    assert corr_err < 0.2, f"joint posterior correlations off by up to {corr_err:.3f}"
    # The star's and the background's light are their coefficients through their columns.
    light = out.sources[:, 2].reshape(n, -1)
    assert torch.allclose(light, out.coefficients[:, :1] @ model.linear.columns[0][:, :1].T)


def test_flux_scale_is_measured_over_typical_and_never_below_one():
    """A galaxy twice as bright as the prior's typical draw gets s = 2; fainter ones s = 1
    (the prior then sees them as it does today); the typical flux is the prior's median."""
    prior = _smooth_prior(5, seed=0)
    typ = typical_flux(prior, n=256, steps=16)
    assert abs(typ - float(prior.mean.sum())) < 0.15 * float(prior.mean.sum())
    assert typical_flux(prior, n=256, steps=16) == typ  # cached: the same value, no redraw
    np.testing.assert_allclose(flux_scales([2 * typ, 0.3 * typ, np.nan], typ), [2.0, 1.0, 1.0])

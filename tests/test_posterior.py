"""Joint MMPS posterior: exactness with Gaussian priors, CG, and input validation."""

import pytest
import torch

from galprism.diffusion.samplers import SamplerConfig, denoiser_calls
from galprism.errors import InputError, ShapeError
from galprism.gaussian import GaussianPrior
from galprism.linalg import conjugate_gradient
from galprism.operators import Identity, SourceSum
from galprism.posterior import JointPosterior
from galprism.sampling import sample_posterior
from galprism.testing import exactness_errors, gaussian_problem


def test_posterior_samples_match_closed_form_gaussian_posterior():
    """Gaussian priors make MMPS exact: samples must reproduce the posterior mean and std.

    A bug in the operators' adjoints, the CG solve, the per-source VJPs or the sampler
    shows up as a bias of the mean or a wrong spread.
    """
    prob = gaussian_problem(size=4, seed=0)
    n = 2048
    x = sample_posterior(
        prob.priors,
        prob.operator,
        prob.y,
        prob.noise_var,
        SamplerConfig(
            method="pc", steps=32, n_samples=n, cg_iterations=prob.y[0].numel(), trust=4.0
        ),
        generators=torch.Generator().manual_seed(1),
    )
    mean_err, std_err = exactness_errors(x[0].reshape(n, -1), prob.post_mean, prob.post_cov)
    assert mean_err < 0.1, f"posterior mean off by {mean_err:.3f} sigma"
    assert std_err < 0.1, f"posterior std off by {std_err:.3f} (relative)"


def test_posterior_denoiser_equals_exact_gaussian_conditional():
    """At any noise level the MMPS denoiser must equal E[x | x_t, y] computed densely."""
    prob = gaussian_problem(size=4, seed=1)
    post = JointPosterior(
        prob.priors, prob.operator, prob.y, prob.noise_var, cg_iterations=prob.y[0].numel() + 4
    )
    t = torch.tensor(0.6, dtype=torch.float64)
    sig = post.sigma(t)
    x_t = (
        torch.randn(1, 2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        * 3
    )
    got = post(x_t, t).reshape(-1)
    # Dense: prior on (x) with observations x_t = x + sigma n and y = A x + n.
    d = 16
    mu = torch.cat([p.mean.reshape(-1) for p in prob.priors])
    s = torch.block_diag(*[p.covariance() for p in prob.priors])
    m_y = (
        prob.operator.apply(torch.eye(2 * d, dtype=torch.float64).reshape(2 * d, 2, 1, 4, 4))
        .reshape(2 * d, -1)
        .T
    )
    m = torch.cat([torch.eye(2 * d, dtype=torch.float64), m_y])
    noise = torch.cat(
        [sig[0] ** 2 * torch.ones(d), sig[1] ** 2 * torch.ones(d), prob.noise_var.reshape(-1)]
    ).to(torch.float64)
    obs = torch.cat([x_t.reshape(-1), prob.y.reshape(-1)])
    g = m @ s @ m.T + torch.diag(noise)
    want = mu + s @ m.T @ torch.linalg.solve(g, obs - m @ mu)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


def test_conjugate_gradient_solves_batched_spd_systems():
    """CG must converge per system in a batch, and stop cleanly on converged systems."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    a = q @ q.transpose(1, 2) + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    b[1] = 0.0  # an already-solved system must not produce NaNs
    x = conjugate_gradient(lambda v: torch.einsum("bij,bj->bi", a, v), b, iterations=12)
    assert torch.isfinite(x).all()
    assert torch.allclose(torch.einsum("bij,bj->bi", a, x), b, atol=1e-8)


def test_posterior_rejects_mismatched_or_bad_inputs():
    """Shape mismatches and non-finite data are reported, never silently broadcast."""
    prior = GaussianPrior.from_covariance(torch.zeros(1, 4, 4), torch.eye(16))
    op = SourceSum([Identity((1, 4, 4))])
    with pytest.raises(ShapeError, match="observations have shape"):
        JointPosterior([prior], op, torch.zeros(2, 1, 4, 5), 1.0)
    with pytest.raises(ShapeError, match="2 priors"):
        JointPosterior([prior, prior], op, torch.zeros(2, 1, 4, 4), 1.0)
    with pytest.raises(InputError, match="non-finite"):
        JointPosterior([prior], op, torch.full((2, 1, 4, 4), float("nan")), 1.0)
    with pytest.raises(InputError, match="noise variance"):
        JointPosterior([prior], op, torch.zeros(2, 1, 4, 4), 0.0)
    other = GaussianPrior.from_covariance(torch.zeros(1, 2, 2), torch.eye(4))
    with pytest.raises(ShapeError):
        JointPosterior([other], op, torch.zeros(2, 1, 4, 4), 1.0)


def test_per_observation_generators_make_samples_independent_of_batch():
    """A cutout's samples must not depend on which other cutouts share its batch."""
    prob = gaussian_problem(size=4, seed=3)
    y2 = torch.cat([prob.y, prob.y + 0.1])
    cfg = SamplerConfig(method="pc", steps=4, n_samples=3, trust=4.0)
    alone = sample_posterior(
        prob.priors,
        prob.operator,
        prob.y,
        prob.noise_var,
        cfg,
        generators=[torch.Generator().manual_seed(7)],
    )
    both = sample_posterior(
        prob.priors,
        prob.operator,
        y2,
        prob.noise_var.expand_as(y2),
        cfg,
        generators=[torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)],
    )
    assert torch.allclose(alone[0], both[0], atol=1e-10)


def test_denoiser_call_counts():
    """The cost model used by the speed benchmark: calls per sampler run."""
    assert denoiser_calls(SamplerConfig("ddim", steps=10)) == 11
    assert denoiser_calls(SamplerConfig("heun", steps=10)) == 21
    assert denoiser_calls(SamplerConfig("pc", steps=10, corrections=2)) == 31

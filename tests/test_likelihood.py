"""Log-probability by the probability-flow ODE, against Gaussian priors' closed form."""

import math

import torch

from galprism.diffusion import VESchedule
from galprism.diffusion.likelihood import log_prob
from galprism.gaussian import GaussianPrior


def _exact(prior, x, sigma):
    cov = prior.covariance() + sigma**2 * torch.eye(
        prior.covariance().shape[0], dtype=torch.float64
    )
    dist = torch.distributions.MultivariateNormal(prior.mean.reshape(-1), covariance_matrix=cov)
    return dist.log_prob(x.reshape(x.shape[0], -1))


def _prior():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    prior = GaussianPrior.from_covariance(
        0.1 * torch.randn(1, 4, 4, generator=gen, dtype=torch.float64),
        a @ a.T / 16 + 0.05 * torch.eye(16, dtype=torch.float64),
        VESchedule(1e-3, 100.0),
    )
    prior.sigma_data = 1.0
    return prior


def test_exact_trace_log_prob_matches_closed_form():
    """With the exact trace the ODE estimate must equal the Gaussian log-density
    (to 0.1 nats for a 16-pixel source at 256 steps), and Heun's error must shrink about
    fourfold per doubling of the steps: a sign or scale error in the flow would not."""
    prior = _prior()
    x = prior.sample(3, torch.Generator().manual_seed(1))
    want = _exact(prior, x, 1e-3)
    errors = [(log_prob(prior, x, steps=n, exact=True) - want).abs().max() for n in (64, 128, 256)]
    assert errors[-1] < 0.1, errors
    assert errors[1] < errors[0] / 2.5 and errors[2] < errors[1] / 2.5, errors


def test_hutchinson_log_prob_is_unbiased_within_its_spread():
    """Hutchinson's estimate scatters around the exact value; its mean over probes must
    agree within a few standard errors."""
    prior = _prior()
    x = prior.sample(2, torch.Generator().manual_seed(2))
    runs = torch.stack(
        [
            log_prob(prior, x, steps=32, probes=4, generator=torch.Generator().manual_seed(s))
            for s in range(8)
        ]
    )
    want = _exact(prior, x, 1e-3)
    err = runs.mean(0) - want
    se = runs.std(0) / math.sqrt(runs.shape[0])
    assert (err.abs() < 4 * se + 0.1).all(), (err, se)


def test_log_prob_ranks_typical_above_atypical_images():
    """An image drawn from the prior must score higher than the same image scaled x5."""
    prior = _prior()
    x = prior.sample(1, torch.Generator().manual_seed(3))
    lp = log_prob(prior, torch.cat([x, 5 * x]), steps=32, exact=True)
    assert lp[0] > lp[1]

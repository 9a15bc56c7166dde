"""Twisted sequential Monte Carlo posterior sampling on top of the MMPS denoiser.

Why: MMPS (:mod:`galprism.posterior`) replaces ``p(y | x_t)`` by one Gaussian. Where the
prior has several modes that explain the data unequally well (a thin source manifold and
a broad cloud of stray prior mass, say), a guided sampler lands in each mode about as
often as the *prior* puts mass there, not the posterior: on the 2-source manifold
problem a broad cloud holding 14 % of a learned prior got 14 % of the E-step samples,
where the exact posterior gives it about 2 % (docs/em.md). Sequential Monte Carlo with
that same Gaussian as its twisting function (the twisted diffusion sampler of Wu et al.
2023, "Practical and asymptotically exact conditional sampling in diffusion models")
corrects this: ``P`` particles per sample follow stochastic DDIM steps guided by the MMPS
denoiser, carry importance weights

    w <- w * p~(y | x_s) / p~(y | x_t) * p(x_s | x_t) / q(x_s | x_t, y),

(``p`` the unguided DDIM step, ``q`` the guided one, ``p~`` MMPS's Gaussian likelihood,
:meth:`~galprism.posterior.JointPosterior.twisted`), and are resampled within their
group when the effective sample size drops below half. The weights telescope: at
``sigma_min`` the target is ``prior x exact likelihood`` whatever the twisting's
errors, so the result is exact as ``P`` grows; the twisting only decides how many
particles that takes. One sample per group is finally drawn by weight. Cost: ``P``
times a DDIM run of the same steps. With a Gaussian prior MMPS is exact, the weights
stay equal and the method reduces to stochastic DDIM.

No library offers this for a user-supplied MMPS denoiser over stacked sources (azula and
diffusers have guided samplers but no particle weighting on a linear-Gaussian
likelihood), so it is written here on :func:`~galprism.diffusion.samplers.randn_rows`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from .diffusion.samplers import Generators, SamplerConfig, randn_rows, time_grid

__all__ = ["TwistedDenoiser", "sample_smc", "RESAMPLE_ESS"]


class TwistedDenoiser(Protocol):
    """What SMC needs of a posterior denoiser
    (:class:`~galprism.posterior.JointPosterior` has it)."""

    y: Tensor
    n_sources: int
    shape: tuple[int, ...]

    def sigma(self, t: Tensor) -> Tensor: ...

    def twisted(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


#: Resample a group when its effective sample size falls below this fraction of its particles.
RESAMPLE_ESS = 0.5


@torch.no_grad()
def sample_smc(
    posterior: TwistedDenoiser,
    config: SamplerConfig,
    *,
    generators: Generators = None,
    callback: Callable[[int, int], None] | None = None,
) -> Tensor:
    """One posterior sample per group of ``config.particles`` consecutive rows of ``posterior``.

    Parameters
    ----------
    posterior
        MMPS posterior denoiser whose rows come in groups of ``config.particles`` copies
        of the same observation (:func:`~galprism.sampling.sample_posterior` builds it).
    config
        ``method="smc"``: ``steps`` stochastic DDIM steps with ``eta`` (0 read as 1),
        ``particles`` per group.
    generators
        One generator, one per block of rows (:func:`randn_rows`; blocks must hold whole
        groups), or None. All draws, resampling included, come from them.
    callback
        Called as ``callback(step, steps)`` after each step.

    Returns
    -------
    Tensor
        ``(rows / particles, K, *shape)``: the posterior denoiser's estimate at
        ``sigma_min`` of the particle drawn in each group.
    """
    p = config.particles
    rows = posterior.y.shape[0]
    if rows % p:
        raise ValueError(f"sample_smc: {rows} rows do not form groups of {p} particles")
    groups = rows // p
    eta = config.eta if config.eta > 0 else 1.0
    y = posterior.y
    shape = (rows, posterior.n_sources, *posterior.shape)
    ts = time_grid(config, posterior)

    def per_source(t: Tensor) -> Tensor:
        return (
            posterior.sigma(t)
            .to(device=y.device, dtype=y.dtype)
            .reshape(1, -1, *([1] * len(posterior.shape)))
        )

    x = per_source(ts[0]) * randn_rows(shape, generators, dtype=y.dtype, device=y.device)
    d_prior, d_post, log_twist = posterior.twisted(x, ts[0])
    log_w = torch.zeros(groups, p, dtype=y.dtype, device=y.device)
    for i in range(config.steps):
        sig_t, sig_s = per_source(ts[i]), per_source(ts[i + 1])
        c = eta * sig_s * torch.sqrt(1 - (sig_s / sig_t) ** 2)
        a = torch.sqrt(sig_s**2 - c**2) / sig_t
        mean_post = d_post + a * (x - d_post)
        z = randn_rows(shape, generators, dtype=y.dtype, device=y.device)
        x = mean_post + c * z
        # log p(x_s | x_t) - log q(x_s | x_t, y) for x_s = mean_post + c z, written through
        # the difference of the two means so that it does not cancel in float32.
        delta = (1 - a) * (d_post - d_prior)
        log_pq = (-(z * delta) / c - delta**2 / (2 * c**2)).flatten(1).sum(1)
        d_prior, d_post, new_twist = posterior.twisted(x, ts[i + 1])
        log_w = log_w + (new_twist - log_twist + log_pq).view(groups, p)
        log_twist = new_twist
        if i < config.steps - 1:
            weights = torch.softmax(log_w, dim=1)
            ess = 1.0 / weights.square().sum(1)
            # Drawn for every group whether it resamples or not, so that a group's draws do
            # not depend on the others.
            u = randn_rows((groups, p), generators, dtype=y.dtype, device=y.device, uniform=True)
            low = ess < RESAMPLE_ESS * p
            if low.any():
                pick = torch.searchsorted(weights.cumsum(1), u.sort(1).values).clamp_max(p - 1)
                pick = torch.where(low[:, None], pick, torch.arange(p, device=y.device))
                src = (torch.arange(groups, device=y.device)[:, None] * p + pick).reshape(-1)
                x, d_prior, d_post, log_twist = x[src], d_prior[src], d_post[src], log_twist[src]
                log_w = torch.where(low[:, None], torch.zeros_like(log_w), log_w)
        if callback is not None:
            callback(i + 1, config.steps)
    u = randn_rows((groups, 1), generators, dtype=y.dtype, device=y.device, uniform=True)
    pick = torch.searchsorted(torch.softmax(log_w, dim=1).cumsum(1), u).clamp_max(p - 1)[:, 0]
    return d_post.view(groups, p, *shape[1:])[torch.arange(groups, device=y.device), pick]

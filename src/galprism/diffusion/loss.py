"""Weighted denoising score-matching loss."""

from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import DiffusionPrior

__all__ = ["denoising_loss", "TIME_SAMPLINGS"]

#: How training draws the diffusion time ``t`` (``sigma`` is log-linear in ``t``).
TIME_SAMPLINGS = ("beta33", "uniform", "mixed")


def denoising_loss(
    prior: DiffusionPrior,
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    time_sampling: str = "beta33",
    rows: tuple[int, int] | None = None,
) -> Tensor:
    """Mean of ``lambda(sigma) |D(x + sigma z, sigma) - x|^2`` over a batch of clean ``x``.

    The weight ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` is EDM's, which
    equals the reference's ``1 / sigma^2 + 1`` for ``sigma_data = 1`` and gives the
    preconditioned network a unit-scale target at every noise level.

    Parameters
    ----------
    prior
        The network being trained.
    x
        Clean samples ``(B, *shape)``.
    generator
        Source of the time and noise draws.
    time_sampling
        ``"beta33"``: ``t ~ Beta(3, 3)`` as in the reference implementation; ``"uniform"``:
        ``t ~ U(0, 1)``, i.e. ``log sigma`` uniform, every level the sampler visits trained
        equally; ``"mixed"``: half of the batch each way. Beta(3, 3) almost never draws
        ``t`` near 1 (P(t > 0.95) = 0.1 %), so the network's Jacobian at ``sigma_max`` stays
        untrained; MMPS multiplies that Jacobian by ``sigma^2`` to get its covariance, and
        an untrained one there made EM posterior samples explode (docs/em.md).
    rows
        ``(lo, hi)``: the batch's noise is drawn for all ``B`` rows as usual, but only rows
        ``[lo, hi)`` enter the loss, as their sum divided by the whole batch's size. The
        parts of a batch split among processes then add up to the loss of the whole
        batch, and each process's draws match a single process's.
    """
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(
            f"denoising_loss: unknown time_sampling {time_sampling!r} ({', '.join(TIME_SAMPLINGS)})"
        )
    b = x.shape[0]
    # Beta(3, 3) by inverse CDF of uniforms so that the caller's generator controls the draw
    # (torch.distributions samples from the global generator only).
    u = torch.rand(b, generator=generator, device=x.device, dtype=torch.float64)
    if time_sampling == "beta33":
        t = _beta33_icdf(u)
    elif time_sampling == "uniform":
        t = u
    else:
        t = torch.where(torch.arange(b, device=x.device) % 2 == 0, _beta33_icdf(u), u)
    t = t.to(x.dtype)
    sigma = prior.schedule.sigma(t)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    s = sigma.reshape(b, *([1] * (x.ndim - 1)))
    if rows is not None:
        lo, hi = rows
        numel = x.numel()
        x, z, s, sigma = x[lo:hi], z[lo:hi], s[lo:hi], sigma[lo:hi]
        if x.shape[0] == 0:
            # No rows here: a zero that still reaches every parameter, so that the
            # gradients summed over the processes have the same layout everywhere.
            return sum(p.sum() for p in prior.parameters()) * 0.0
    d = prior.denoise(x + s * z, sigma)
    sd2 = prior.sigma_data**2
    weight = (s**2 + sd2) / (s**2 * sd2)
    if rows is not None:
        return (weight * (d - x) ** 2).sum() / numel
    return (weight * (d - x) ** 2).mean()


def _beta33_icdf(u: Tensor) -> Tensor:
    """Inverse CDF of Beta(3, 3) by bisection (its CDF is a quintic polynomial)."""
    lo = torch.zeros_like(u)
    hi = torch.ones_like(u)
    for _ in range(40):
        mid = (lo + hi) / 2
        cdf = mid**3 * (10 - 15 * mid + 6 * mid**2)
        below = cdf < u
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return (lo + hi) / 2

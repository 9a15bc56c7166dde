"""Log-probability of a source image under a diffusion prior (probability-flow ODE).

With ``u = log sigma`` the probability-flow ODE of the VE process is
``dx/du = x - D(x, e^u)`` and along its solution
``d log p_sigma(x) / du = -(d - tr J_D)``, so

    log p_{sigma_min}(x) = log p_{sigma_max}(x(u_max)) + int_{u_min}^{u_max} (d - tr J_D) du.

``p_{sigma_max}`` is taken as ``N(0, (sigma_max^2 + sigma_data^2) I)`` (the data
convolved with the widest noise, to second order), and the integral is done with Heun's
method. ``tr J`` is either exact (one VJP per dimension: only for small sources) or
Hutchinson's estimate with Rademacher probes held fixed along the path. The accuracy of
both against a Gaussian prior with a closed-form density is measured in the tests and
in ``docs/method.md``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["log_prob"]


def _divergence(
    prior: nn.Module, x: Tensor, sigma: Tensor, probes: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(f, tr J)`` with ``f = x - D(x)``; exact when ``probes`` is None."""
    d, vjp = torch.func.vjp(lambda z: prior.denoise(z, sigma), x)
    b = x.shape[0]
    dims = x[0].numel()
    with torch.no_grad():
        if probes is None:
            eye = torch.eye(dims, dtype=x.dtype, device=x.device).reshape(dims, *x.shape[1:])
            tr = torch.zeros(b, dtype=x.dtype, device=x.device)
            for i in range(dims):
                tr += vjp(eye[i].expand_as(x))[0].reshape(b, -1)[:, i]
        else:
            tr = torch.stack([(vjp(z)[0] * z).reshape(b, -1).sum(1) for z in probes]).mean(0)
    return (x - d).detach(), tr


@torch.no_grad()
def log_prob(
    prior: nn.Module,
    x: Tensor,
    *,
    steps: int = 128,
    exact: bool = False,
    probes: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Log-density of clean images ``x`` ``(B, *shape)`` under ``prior`` at ``sigma_min``.

    Parameters
    ----------
    prior
        A prior with ``schedule``, ``sigma_data`` (or 1) and ``denoise``.
    x
        Candidate source images in the prior's normalised units.
    steps
        Heun steps in ``log sigma`` (two denoiser evaluations each).
    exact
        Exact Jacobian trace (``prod(shape)`` VJPs per evaluation) instead of Hutchinson.
    probes
        Rademacher probes of the Hutchinson estimate.
    generator
        Source of the probes.

    Returns
    -------
    Tensor
        ``(B,)`` log-probabilities in nats (normalised units).
    """
    sched = prior.schedule
    u = torch.linspace(
        math.log(sched.sigma_min), math.log(sched.sigma_max), steps + 1, dtype=torch.float64
    )
    b = x.shape[0]
    dims = x[0].numel()
    z = None
    if not exact:
        z = (
            torch.randint(0, 2, (probes, *x.shape), generator=generator, dtype=torch.int64).to(
                x.device
            )
            * 2
            - 1
        ).to(x.dtype)
    logdet = torch.zeros(b, dtype=torch.float64, device=x.device)
    for i in range(steps):
        h = float(u[i + 1] - u[i])
        s0 = torch.tensor(math.exp(float(u[i])), dtype=x.dtype, device=x.device)
        s1 = torch.tensor(math.exp(float(u[i + 1])), dtype=x.dtype, device=x.device)
        f0, tr0 = _divergence(prior, x, s0, z)
        x1 = x + h * f0
        f1, tr1 = _divergence(prior, x1, s1, z)
        x = x + h * (f0 + f1) / 2
        logdet += h * ((dims - tr0) + (dims - tr1)).to(torch.float64) / 2
    var = sched.sigma_max**2 + float(getattr(prior, "sigma_data", 1.0)) ** 2
    end = -0.5 * (x.to(torch.float64) ** 2).reshape(b, -1).sum(1) / var - 0.5 * dims * math.log(
        2 * math.pi * var
    )
    return end + logdet

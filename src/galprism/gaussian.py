"""Gaussian (PPCA) prior with a closed-form denoiser: EM's warm start and an exact test bed.

The covariance is low-rank plus isotropic, ``S = U diag(lam) U^T + s2 I`` with ``U``
orthonormal ``(D, r)`` (probabilistic PCA). Its denoiser
``E[x | x_t] = mu + S (S + sigma^2 I)^{-1} (x_t - mu)`` costs two thin matrix products,
and since it is affine its Jacobian is constant: MMPS is then exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .diffusion.schedule import VESchedule
from .errors import ShapeError
from .operators import LinearOperator

__all__ = ["GaussianPrior", "gaussian_posterior"]


class GaussianPrior(nn.Module):
    """``N(mu, U diag(lam) U^T + s2 I)`` over sources of event shape ``shape``.

    Parameters
    ----------
    mean
        Mean, of the event shape.
    components
        Orthonormal columns ``U`` of shape ``(D, r)`` with ``D = prod(shape)``.
    variances
        ``lam``: variance along each component beyond the isotropic part, ``(r,)``.
    noise
        ``s2``: isotropic variance (may be 0 only when ``r == D``).
    schedule
        Noise schedule used when sampling with it.
    """

    def __init__(
        self,
        mean: Tensor,
        components: Tensor,
        variances: Tensor,
        noise: float | Tensor,
        schedule: VESchedule | None = None,
    ) -> None:
        super().__init__()
        self.shape = tuple(mean.shape)
        d = math.prod(self.shape)
        if components.ndim != 2 or components.shape[0] != d:
            raise ShapeError(
                f"GaussianPrior: components must be ({d}, r), got {tuple(components.shape)}"
            )
        if variances.shape != (components.shape[1],):
            raise ShapeError(
                f"GaussianPrior: variances must be ({components.shape[1]},), got "
                f"{tuple(variances.shape)}"
            )
        noise = torch.as_tensor(noise, dtype=mean.dtype)
        if (
            float(noise) < 0
            or (float(noise) == 0 and components.shape[1] < d)
            or (variances < 0).any()
        ):
            raise ShapeError(
                "GaussianPrior: variances must be >= 0 and the isotropic noise > 0 unless full rank"
            )
        self.register_buffer("mean", mean.clone())
        self.register_buffer("components", components.clone())
        self.register_buffer("variances", variances.clone())
        self.register_buffer("noise", noise.clone())
        self.schedule = schedule or VESchedule()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_covariance(
        cls, mean: Tensor, cov: Tensor, schedule: VESchedule | None = None
    ) -> GaussianPrior:
        """Exact full-rank prior from a dense covariance ``(D, D)``."""
        lam, vec = torch.linalg.eigh(cov)
        return cls(mean, vec, lam.clamp_min(0), 0.0, schedule)

    @classmethod
    def fit(
        cls,
        samples: Tensor,
        rank: int,
        schedule: VESchedule | None = None,
        min_noise: float = 1e-6,
    ) -> GaussianPrior:
        """Maximum-likelihood PPCA fit (Tipping & Bishop 1999) to samples ``(N, *shape)``.

        ``s2`` is the mean variance outside the top ``rank`` principal directions,
        floored at ``min_noise`` times the mean variance so the prior stays proper.
        """
        if samples.ndim < 2 or samples.shape[0] < 2:
            raise ShapeError(
                f"GaussianPrior.fit: need at least 2 samples, got shape {tuple(samples.shape)}"
            )
        if not torch.isfinite(samples).all():
            raise ShapeError("GaussianPrior.fit: samples contain non-finite values")
        n = samples.shape[0]
        shape = samples.shape[1:]
        x = samples.reshape(n, -1).to(torch.float64)
        d = x.shape[1]
        rank = max(0, min(int(rank), d, n - 1))
        mean = x.mean(0)
        xc = x - mean
        total = xc.square().sum() / n
        if rank == 0:
            u = x.new_zeros(d, 0)
            eig = x.new_zeros(0)
        elif d <= 2048 or rank * 4 >= d:
            eigval, eigvec = torch.linalg.eigh(xc.T @ xc / n)
            u = eigvec[:, -rank:].flip(-1)
            eig = eigval[-rank:].flip(-1)
        else:
            # Randomised SVD: the D x D covariance of a large image would not fit.
            u, s, _ = torch.svd_lowrank(xc.T, q=min(rank + 16, d, n), niter=6)
            u, eig = u[:, :rank], (s[:rank] ** 2) / n
        floor = min_noise * float(total) / d
        s2 = (float(total) - float(eig.sum())) / (d - rank) if d > rank else 0.0
        s2 = max(s2, floor) if d > rank else 0.0
        variances = (eig - s2).clamp_min(0)
        dtype = samples.dtype
        return cls(mean.reshape(shape).to(dtype), u.to(dtype), variances.to(dtype), s2, schedule)

    # -- interface shared with DiffusionPrior ------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "rank": int(self.components.shape[1]),
            "schedule": self.schedule.to_dict(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GaussianPrior:
        d = math.prod(config["shape"])
        r = int(config["rank"])
        return cls(
            torch.zeros(config["shape"]),
            torch.zeros(d, r),
            torch.zeros(r),
            1.0,
            VESchedule(**config["schedule"]),
        )

    def denoise(self, x_t: Tensor, sigma: Tensor | float) -> Tensor:
        """Exact ``E[x | x_t]`` for a batch ``(B, *shape)``; ``sigma`` scalar or ``(B,)``."""
        b = x_t.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device).expand(b).reshape(b, 1)
        mean = self.mean.to(x_t).reshape(1, -1)
        u = self.components.to(x_t)
        lam = self.variances.to(x_t)
        s2 = self.noise.to(x_t)
        r = x_t.reshape(b, -1) - mean
        iso = s2 / (s2 + sigma**2)
        coef = (lam + s2) / (lam + s2 + sigma**2) - iso
        out = mean + iso * r + ((r @ u) * coef) @ u.T
        return out.reshape(x_t.shape)

    forward = denoise

    def covariance(self) -> Tensor:
        """Dense covariance ``(D, D)`` (for tests and small problems)."""
        u = self.components
        d = u.shape[0]
        return (u * self.variances) @ u.T + self.noise * torch.eye(
            d, dtype=u.dtype, device=u.device
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` exact samples."""
        u = self.components
        z1 = torch.randn(n, u.shape[1], generator=generator, dtype=u.dtype)
        z2 = torch.randn(n, u.shape[0], generator=generator, dtype=u.dtype)
        # Components carry lam + s2 in total: lam along U from z1, s2 everywhere from z2.
        x = self.mean.reshape(1, -1) + (z1 * self.variances.sqrt()) @ u.T + self.noise.sqrt() * z2
        return x.reshape(n, *self.shape)


def gaussian_posterior(
    priors: Sequence[GaussianPrior], operator: LinearOperator, y: Tensor, noise_var: Tensor
) -> tuple[Tensor, Tensor]:
    """Closed-form joint posterior of Gaussian priors for one observation (dense algebra).

    Parameters
    ----------
    priors
        One :class:`GaussianPrior` per source.
    operator
        A :class:`~galprism.operators.SourceSum` (shared, or holding one observation).
    y, noise_var
        One observation ``(1, *obs_shape)`` and its per-pixel noise variance.

    Returns
    -------
    mean, cov
        Posterior mean ``(K * D,)`` and covariance ``(K * D, K * D)`` of the stacked
        sources, in float64. Only for small problems: it builds the dense operator.
    """
    dt = torch.float64
    k = len(priors)
    d = math.prod(priors[0].shape)
    eye = torch.eye(k * d, dtype=dt)
    if operator.batch_size is not None:
        operator = operator.take(torch.zeros(k * d, dtype=torch.long))
    m = operator.apply(eye.reshape(k * d, k, *priors[0].shape)).reshape(k * d, -1).T
    mu = torch.cat([p.mean.to(dt).reshape(-1) for p in priors])
    s = torch.block_diag(*[p.covariance().to(dt) for p in priors])
    g = m @ s @ m.T + torch.diag(noise_var.to(dt).reshape(-1))
    gain = torch.linalg.solve(g, m @ s).T
    mean = mu + gain @ (y.to(dt).reshape(-1) - m @ mu)
    cov = s - gain @ m @ s
    return mean, (cov + cov.T) / 2

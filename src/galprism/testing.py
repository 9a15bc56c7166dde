"""Reference problems with known answers, shared by the tests and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .gaussian import GaussianPrior, gaussian_posterior
from .operators import Composition, Convolve, Downsample, Mask, Scale, SourceSum

__all__ = ["GaussianProblem", "gaussian_problem", "exactness_errors"]


@dataclass
class GaussianProblem:
    """Two Gaussian sources seen through mask o downsample o PSF, with the exact posterior."""

    priors: list[GaussianPrior]
    operator: SourceSum
    y: Tensor
    noise_var: Tensor
    truth: Tensor
    post_mean: Tensor
    post_cov: Tensor


def _smooth_cov(h: int, w: int, length: float, amplitude: float, dtype: torch.dtype) -> Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).to(dtype)
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    return amplitude * torch.exp(-d2 / (2 * length**2)) + 1e-3 * torch.eye(h * w, dtype=dtype)


def gaussian_problem(
    size: int = 8, seed: int = 0, noise: float = 0.05, dtype: torch.dtype = torch.float64
) -> GaussianProblem:
    """A 2-source problem whose posterior is known in closed form.

    Source 1 is smooth with a non-zero mean, source 2 rougher; both are blurred by an
    asymmetric 5x5 PSF, the second with amplitude 0.7, summed, block-summed 2x2 and
    partly masked, with white noise of variance ``noise``.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (1, size, size)
    priors = [
        GaussianPrior.from_covariance(
            0.3 * torch.randn(shape, generator=gen, dtype=dtype),
            _smooth_cov(size, size, 2.0, 1.0, dtype),
        ),
        GaussianPrior.from_covariance(
            torch.zeros(shape, dtype=dtype), _smooth_cov(size, size, 0.7, 0.5, dtype)
        ),
    ]
    psf = torch.rand(5, 5, generator=gen, dtype=dtype) + 1
    psf[2, 2] += 3
    coarse = (1, size // 2, size // 2)
    mask = torch.rand(coarse, generator=gen) > 0.2
    view = Composition([Mask(mask), Downsample(2, shape), Convolve(psf, shape)])
    operator = SourceSum([view, Composition([view, Scale(0.7, shape)])])
    truth = torch.stack([p.sample(1, generator=gen) for p in priors], dim=1)
    noise_var = torch.full((1, *coarse), noise, dtype=dtype)
    y = operator.apply(truth) + noise_var.sqrt() * torch.randn(
        1, *coarse, generator=gen, dtype=dtype
    )
    mean, cov = gaussian_posterior(priors, operator, y, noise_var)
    return GaussianProblem(priors, operator, y, noise_var, truth, mean, cov)


def exactness_errors(samples: Tensor, mean: Tensor, cov: Tensor) -> tuple[float, float]:
    """Largest errors of the sample mean and standard deviation, in posterior sigmas.

    ``samples`` is ``(N, D)``; returns ``(mean_err, std_err)``, each the maximum over
    dimensions of ``|estimate - truth| / true_std``.
    """
    samples = samples.to(torch.float64).reshape(samples.shape[0], -1)
    std = cov.diagonal().sqrt()
    mean_err = ((samples.mean(0) - mean).abs() / std).max()
    std_err = ((samples.std(0) - std).abs() / std).max()
    return float(mean_err), float(std_err)

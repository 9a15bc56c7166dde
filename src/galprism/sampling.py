"""Which sampler draws a posterior: the dispatch over :class:`SamplerConfig` methods.

:mod:`galprism.posterior` builds the MMPS posterior denoiser, :mod:`galprism.smc` the
particle sampler that runs on one, and :mod:`galprism.diffusion.samplers` the samplers
that need only a denoiser. This module puts them together, so that neither
:mod:`galprism.posterior` nor :mod:`galprism.smc` needs the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .diffusion.samplers import Generators, SamplerConfig, sample
from .operators import SourceSum
from .posterior import JointPosterior, JointPrior
from .smc import sample_smc

__all__ = ["sample_posterior", "sample_prior"]


def _row_index(n_obs: int, n_samples: int, device: torch.device | str) -> Tensor:
    return torch.arange(n_obs, device=device).repeat_interleave(n_samples)


def sample_posterior(
    priors: Sequence[nn.Module],
    operator: SourceSum,
    y: Tensor,
    noise_var: Tensor | float,
    sampler: SamplerConfig | None = None,
    *,
    generators: Generators = None,
    callback: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Draw ``sampler.n_samples`` joint posterior samples per observation.

    Parameters
    ----------
    priors, operator, y, noise_var
        As for :class:`~galprism.posterior.JointPosterior`; ``y`` is ``(B, *obs_shape)``.
    sampler
        Every sampler setting (default :class:`SamplerConfig`); ``method="smc"`` runs
        :func:`galprism.smc.sample_smc`, the others :func:`~galprism.diffusion.sample`.
    generators
        None, one generator, or one per observation (each observation's samples then
        depend only on its own generator, not on the rest of the batch).
    callback
        Called as ``callback(step, steps)`` after each time step.

    Returns
    -------
    Tensor
        ``(B, n_samples, K, *shape)`` in the priors' units.
    """
    sampler = sampler if sampler is not None else SamplerConfig()
    b = y.shape[0]
    n_samples = sampler.n_samples
    smc = sampler.method == "smc"
    # smc: each sample is drawn from its own group of ``particles`` consecutive rows.
    index = _row_index(b, n_samples * (sampler.particles if smc else 1), y.device)
    op = operator.take(index) if operator.batch_size is not None else operator
    noise_var = torch.as_tensor(noise_var, dtype=y.dtype, device=y.device).expand_as(y)
    posterior = JointPosterior(
        priors,
        op,
        y[index],
        noise_var[index],
        sampler.cg_iterations,
        sampler.trust,
        jacobian=sampler.jacobian,
    )
    if smc:
        x = sample_smc(posterior, sampler, generators=generators, callback=callback)
        return x.reshape(b, n_samples, posterior.n_sources, *posterior.shape)
    x = sample(
        posterior,
        (b * n_samples, posterior.n_sources, *posterior.shape),
        sampler,
        generators=generators,
        dtype=y.dtype,
        device=y.device,
        callback=callback,
    )
    return x.reshape(b, n_samples, posterior.n_sources, *posterior.shape)


def sample_prior(
    priors: Sequence[nn.Module],
    n: int,
    *,
    config: SamplerConfig | None = None,
    generators: Generators = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw ``n`` samples of every source's prior: ``(n, K, *shape)``."""
    joint = JointPrior(priors)
    return sample(
        joint,
        (n, joint.n_sources, *joint.shape),
        config,
        generators=generators,
        dtype=dtype,
        device=device,
    )

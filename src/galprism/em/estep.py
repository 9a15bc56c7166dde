"""The E-step: joint posterior samples of a view's observations, with a data-fit check.

Every sample is checked against its own observation: its posterior-predictive reduced
chi^2 ``mean((y - A x)^2 / noise_var)``. A draw from the true posterior scores about 1
(for 3 observed values, above 5 with probability 0.2 %); MMPS with few steps sometimes
commits to a wrong branch of a multi-modal posterior early and ends far from any value
that explains ``y`` (docs/em.md). With ``reject_chi2 > 0`` such samples are drawn again
with fresh noise up to ``redraws`` times; the caller leaves those still failing out of
the M-step. Every redraw comes from the run's stream, so runs stay reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..diffusion import SamplerConfig
from ..sampling import sample_posterior
from .distributed import observation_generators
from .views import View

__all__ = ["EStepResult", "posterior_samples"]


@dataclass
class EStepResult:
    """Posterior samples of some observations of a view.

    Attributes
    ----------
    x
        ``(n, K_view, *shape)`` one joint sample per observation.
    index
        Indices of the observations in the view, ``(n,)``.
    chi2
        Posterior-predictive reduced chi^2 of each sample ``(n,)``.
    failed
        Samples still above the threshold after the redraws ``(n,)`` (all False when
        the check is off).
    redrawn
        Number of samples drawn again (over all rounds).
    """

    x: Tensor
    index: Tensor
    chi2: Tensor
    failed: Tensor
    redrawn: int


def posterior_samples(
    view: View,
    priors: Sequence[nn.Module],
    index: Tensor,
    sampler: SamplerConfig,
    *,
    batch: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    reject_chi2: float = 0.0,
    redraws: int = 0,
    progress: Callable[..., None] | None = None,
    observation_seed: int | None = None,
) -> EStepResult:
    """One posterior sample per observation ``index`` of ``view``, redrawing failures.

    Parameters
    ----------
    view
        The observations.
    priors
        One prior per source of the view, in its order.
    index
        Which observations ``(n,)``.
    sampler
        Posterior sampler settings (see :func:`~galprism.sampling.sample_posterior`);
        one sample per observation is drawn whatever its ``n_samples``.
    batch
        Observations per sampler call.
    generator
        Source of all noise (unless ``observation_seed`` is given).
    device
        Where sampling runs; samples come back on the CPU.
    reject_chi2, redraws
        Data-fit threshold (0 = no check) and number of redraw rounds.
    progress
        Called after each sampler call.
    observation_seed
        When given, observation ``i``'s noise comes from its own generator, seeded from
        ``(observation_seed, i, attempt)``
        (:func:`~galprism.em.distributed.observation_generators`): its sample then depends
        neither on the other observations of its batch nor on which process draws it.
    """
    if index.numel() == 0:  # a process with no share of a small E-step
        x = view.y.new_zeros((0, len(priors), *view.source_shape))
        empty = view.y.new_zeros(0)
        return EStepResult(x, index, empty, empty.bool(), 0)
    sampler = replace(sampler, n_samples=1)
    gens = _seeded(generator, observation_seed)
    x = _draw(view, priors, index, sampler, batch, gens(0), device, progress)
    chi2 = view.chi2_per_observation(x, index)
    redrawn = 0
    if reject_chi2 > 0:
        for attempt in range(1, redraws + 1):
            bad = torch.nonzero(chi2 > reject_chi2)[:, 0]
            if bad.numel() == 0:
                break
            redrawn += int(bad.numel())
            x[bad] = _draw(
                view,
                priors,
                index[bad],
                sampler,
                batch,
                gens(attempt),
                device,
                None,
            )
            chi2[bad] = view.chi2_per_observation(x[bad], index[bad])
    failed = chi2 > reject_chi2 if reject_chi2 > 0 else torch.zeros_like(chi2, dtype=torch.bool)
    return EStepResult(x, index, chi2, failed, redrawn)


#: ``generators(index)`` -> the noise source of a sampler call on observations ``index``
Noise = Callable[[Tensor], torch.Generator | list[torch.Generator]]


def _seeded(generator: torch.Generator, seed: int | None) -> Callable[[int], Noise]:
    """``attempt -> noise source``: the shared ``generator``, or per-observation ones."""
    if seed is None:
        return lambda attempt: lambda idx: generator
    return lambda attempt: lambda idx: observation_generators(seed, idx, attempt)


def _draw(
    view: View,
    priors: Sequence[nn.Module],
    index: Tensor,
    sampler: SamplerConfig,
    batch: int,
    generators: Noise,
    device: torch.device | str,
    progress: Callable[..., None] | None,
) -> Tensor:
    out = []
    for start in range(0, index.numel(), batch):
        idx = index[start : start + batch]
        op = view.operator.take(idx) if view.operator.batch_size is not None else view.operator
        x = sample_posterior(
            priors,
            op,
            view.y[idx].to(device),
            view.noise_var[idx].to(device),
            sampler,
            generators=generators(idx),
        )
        out.append(x[:, 0].cpu())
        if progress is not None:
            progress()
    return torch.cat(out)

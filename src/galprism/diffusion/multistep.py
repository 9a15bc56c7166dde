"""Few-step multistep ODE sampler for a joint denoiser: DPM-Solver++(2M) in sigma.

For the variance-exploding process ``x_t = x + sigma_t eps`` of the priors, with the
data prediction ``D(x_t) ~ E[x | x_t]`` and ``h = log(sigma_t / sigma_s)`` the log-step
from ``sigma_t`` down to ``sigma_s``, the probability-flow ODE's exact solution is

    x_s = (sigma_s / sigma_t) x_t + (1 - sigma_s / sigma_t) * (weighted mean of D over the step).

DDIM takes ``D(x_t)`` for that mean (first order). DPM-Solver++(2M) (Lu et al. 2022)
extrapolates linearly in ``log sigma`` from the previous step's denoiser output, at no
extra network evaluation:

    D_eff = (1 + 1 / (2 r)) D_t - 1 / (2 r) D_prev,   r = h_prev / h,

which makes the step second order. The first step (no previous output) is DDIM's.
Each source has its own schedule, so ``h`` and ``r`` are per source.

Time grid: ``"loglinear"`` is :func:`galprism.diffusion.samplers.sample`'s (uniform in
``t``, i.e. in ``log sigma``); ``"karras"`` is EDM's ``sigma_i = (sigma_max^(1/rho) +
i / N (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, which spends more steps at small
noise. Like :func:`~galprism.diffusion.samplers.sample` the run ends with a denoise at
``sigma_min`` (``final_denoise=True``, ``steps + 1`` evaluations); with
``final_denoise=False`` the last step goes to ``sigma = 0`` and returns the extrapolated
data prediction (``steps`` evaluations).

The initial state is drawn exactly as :func:`~galprism.diffusion.samplers.sample` draws it
(same generators, same shapes), so both samplers integrate the same ODE from the same
noise and their outputs can be compared sample by sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .samplers import Generators, JointDenoiser, SamplerConfig, randn_rows

__all__ = ["sample_multistep", "time_grid"]


def time_grid(
    denoiser: JointDenoiser, steps: int, schedule: str = "loglinear", rho: float = 7.0
) -> Tensor:
    """The ``steps + 1`` times from 1 to 0 at which the sampler evaluates the denoiser.

    ``"karras"`` places the first source's noise levels on EDM's grid and maps them back
    to times through its schedule; every source then has its own ``sigma(t)`` there.
    """
    if schedule == "loglinear":
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if schedule == "karras":
        sched = denoiser.priors[0].schedule
        hi, lo = float(sched.sigma_max) ** (1 / rho), float(sched.sigma_min) ** (1 / rho)
        frac = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        ts = sched.time((hi + frac * (lo - hi)) ** rho).clamp(0.0, 1.0)
        ts[0], ts[-1] = 1.0, 0.0
        return ts
    raise ValueError(f"time_grid: unknown schedule {schedule!r} (loglinear, karras)")


@torch.no_grad()
def sample_multistep(
    denoiser: JointDenoiser,
    shape: Sequence[int],
    config: SamplerConfig | None = None,
    *,
    generators: Generators = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    callback: Callable[[int, int], None] | None = None,
    order: int = 2,
    schedule: str = "loglinear",
    rho: float = 7.0,
    final_denoise: bool = True,
) -> Tensor:
    """Draw ``(N, K, *event)`` samples with DPM-Solver++(2M) (``order=2``) or DDIM (1).

    Parameters
    ----------
    denoiser, shape, generators, dtype, device, callback
        As for :func:`galprism.diffusion.samplers.sample`.
    config
        Only ``config.steps`` is used (deterministic ODE sampler).
    order
        1 (DDIM) or 2 (DPM-Solver++(2M)).
    schedule, rho
        Time grid (see the module docstring).
    final_denoise
        End with a denoise at ``sigma_min`` (as ``sample`` does) or step to ``sigma = 0``.
    """
    if order not in (1, 2):
        raise ValueError(f"sample_multistep: order must be 1 or 2, got {order}")
    config = config or SamplerConfig(method="ddim")
    steps = config.steps
    shape = tuple(shape)
    ts = time_grid(denoiser, steps, schedule, rho)
    bshape = (1, -1, *([1] * (len(shape) - 2)))

    def sig(t: Tensor) -> Tensor:
        return denoiser.sigma(t).to(torch.float64)

    def per_source(s: Tensor) -> Tensor:
        return s.to(device=device, dtype=dtype).reshape(bshape)

    x = per_source(sig(ts[0])) * randn_rows(shape, generators, dtype=dtype, device=device)
    d_prev, h_prev = None, None
    for i in range(steps):
        d = denoiser(x, ts[i])
        if i == steps - 1 and not final_denoise:
            # A step to sigma = 0 returns the data prediction (log(sigma_t / 0) is
            # infinite; DPM-Solver++ takes that last step at first order).
            x = d
        else:
            sig_t, sig_s = sig(ts[i]), sig(ts[i + 1])
            h = torch.log(sig_t / sig_s)
            d_eff = d
            if order == 2 and d_prev is not None:
                r = per_source(h_prev / h)
                d_eff = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
            ratio = per_source(sig_s / sig_t)
            x = ratio * x + (1 - ratio) * d_eff
            d_prev, h_prev = d, h
        if callback is not None:
            callback(i + 1, steps)
    if not final_denoise:
        return x
    return denoiser(x, ts[-1])

"""Samplers that need only a (joint) denoiser: DDIM/Euler, Heun, predictor-corrector.

(The fourth method of :class:`SamplerConfig`, ``"smc"``, also needs the observation's
likelihood and lives in :mod:`galprism.smc`; :func:`galprism.posterior.sample_posterior`
dispatches to it.)

A *joint denoiser* acts on a stacked state ``x`` of shape ``(N, K, *shape)`` (N rows, K
sources) and exposes

* ``sigma(t) -> Tensor (K,)``: each source's noise level at time ``t`` in [0, 1];
* ``__call__(x_t, t) -> Tensor``: the estimate of ``E[x | x_t]`` (prior or posterior).

All samplers run from ``t = 1`` to ``t = 0`` on a uniform time grid (log-linear in
sigma) and end with a final denoise at ``t = 0``, so that what they return is the
denoiser's estimate at ``sigma_min`` rather than a slightly noisy state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["METHODS", "JointDenoiser", "SamplerConfig", "sample", "randn_rows", "denoiser_calls"]

#: The sampler methods of :class:`SamplerConfig`.
METHODS = ("ddim", "heun", "pc", "smc")

Generators = torch.Generator | Sequence[torch.Generator] | None


class JointDenoiser(Protocol):
    def sigma(self, t: Tensor) -> Tensor: ...

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class SamplerConfig:
    """Every setting of a (posterior) sampler run, with the defaults of a separation.

    The defaults are those of ``galprism separate``: the library's and the command
    line's default separations are the same run. EM and other callers that want other
    values pass their own instance.

    Parameters
    ----------
    method
        ``"ddim"`` (deterministic DDIM = Euler on the probability-flow ODE, or
        stochastic with ``eta > 0``), ``"heun"`` (EDM's second-order step), ``"pc"``
        (DDIM predictor + Langevin corrector) or ``"smc"`` (twisted sequential Monte Carlo
        over ``particles`` stochastic-DDIM chains per posterior sample, which weights the
        posterior's modes by their evidence; :mod:`galprism.smc`; without an observation,
        as in :func:`sample`, it is stochastic DDIM).
    steps
        Number of time steps. 32 rather than 16 DDIM steps lowered the RMSE of the
        evaluation's 200 test cutouts from 0.118 to 0.108 (docs/evaluation.md).
    eta
        DDIM stochasticity (0 = deterministic; ``smc`` needs a stochastic step and takes
        0 as 1).
    corrections
        Langevin corrector steps per time step (``pc`` only).
    tau
        Langevin step size relative to the noise level (``pc`` only).
    particles
        Particles per posterior sample (``smc`` only).
    n_samples
        Posterior samples per observation.
    cg_iterations
        Conjugate-gradient iterations of the MMPS covariance solve per denoiser call
        (:mod:`galprism.posterior`), at least 1: with none the solve stays at zero, the MMPS
        correction vanishes and the samples ignore the data.
    trust
        Trust radius of the MMPS corrections of diffusion priors, in units of the
        denoiser's own error scale (:mod:`galprism.posterior`); 0 turns the cap off. Off
        by default: on a real HSC blend brighter than the training data the cap tripled
        chi^2 (994 against 428), while EM needs it against rare exploding E-step samples.
    jacobian
        How the MMPS covariance products ``J u`` of diffusion priors are computed:
        ``"vjp"`` (autograd, exact) or ``"difference"`` (a forward difference of the
        network, :meth:`galprism.diffusion.DiffusionPrior.linearize`: two forwards
        without a graph). The difference made separations on a CPU 1.1 times cheaper with
        the same quality on faint test galaxies, but a galaxy 100 times brighter than the
        training set came out 17 % too faint against 7 % with VJPs (docs/benchmarks.md),
        so VJPs stay the default.
    rho
        Spacing of the time steps: 0 puts them uniformly in ``log sigma``; ``rho > 0``
        spaces ``sigma^(1/rho)`` uniformly (Karras et al. 2022, ``rho = 7`` there), which
        puts more of them at low noise.

    Raises
    ------
    ConfigError
        On an unknown method or a count or scale out of range.
    """

    method: str = "ddim"
    steps: int = 32
    eta: float = 0.0
    corrections: int = 1
    tau: float = 0.1
    particles: int = 16
    n_samples: int = 8
    cg_iterations: int = 1
    trust: float = 0.0
    jacobian: str = "vjp"
    rho: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"sampler: unknown method {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        for name in ("steps", "particles", "n_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ConfigError(f"sampler: {name} must be an integer >= 1, got {value!r}")
        value = self.corrections
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ConfigError(f"sampler: corrections must be an integer >= 0, got {value!r}")
        value = self.cg_iterations
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ConfigError(
                f"sampler: cg_iterations must be an integer >= 1, got {value!r} "
                "(with 0 the MMPS correction is 0 and the samples ignore the data)"
            )
        if not self.tau > 0:
            raise ConfigError(f"sampler: tau must be > 0, got {self.tau!r}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"sampler: eta must be in [0, 1], got {self.eta!r}")
        if self.jacobian not in ("vjp", "difference"):
            raise ConfigError(
                f"sampler: jacobian must be 'vjp' or 'difference', got {self.jacobian!r}"
            )
        if not (math.isfinite(self.rho) and self.rho >= 0):
            raise ConfigError(f"sampler: rho must be >= 0, got {self.rho!r}")
        if not (math.isfinite(self.trust) and self.trust >= 0):
            raise ConfigError(f"sampler: trust must be >= 0, got {self.trust!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (JSON records, run folders)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "sampler") -> SamplerConfig:
        """The inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown sampler settings {unknown}")
        return cls(**data)


def denoiser_calls(config: SamplerConfig) -> int:
    """Number of joint-denoiser evaluations of one sampler run (per sample)."""
    if config.method == "smc":
        return (config.steps + 1) * config.particles
    per_step = {"ddim": 1, "heun": 2, "pc": 1 + config.corrections}[config.method]
    return config.steps * per_step + 1


def time_grid(config: SamplerConfig, denoiser: JointDenoiser) -> Tensor:
    """The ``steps + 1`` times from 1 to 0 of a sampler run (see :attr:`SamplerConfig.rho`).

    With ``rho > 0`` the times are those of the first source's noise levels spaced as
    Karras et al.; sources with other schedules follow the same times.
    """
    u = torch.linspace(0.0, 1.0, config.steps + 1, dtype=torch.float64)
    if config.rho == 0:
        return 1.0 - u
    ends = torch.tensor([1.0, 0.0], dtype=torch.float64)
    s_max, s_min = (float(denoiser.sigma(t).flatten()[0]) for t in ends)
    a, b = s_max ** (1 / config.rho), s_min ** (1 / config.rho)
    sigma = (a + u * (b - a)) ** config.rho
    t = torch.log(sigma / s_min) / math.log(s_max / s_min)
    t[0], t[-1] = 1.0, 0.0
    return t


def randn_rows(
    shape: Sequence[int],
    generators: Generators,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    uniform: bool = False,
) -> Tensor:
    """Standard normal draws of ``shape``, row blocks drawn from their own generators.

    With a list of ``G`` generators the ``N = shape[0]`` rows are split into ``G``
    contiguous blocks, each drawn from its own generator: a cutout's samples then do
    not depend on which other cutouts share its batch. ``uniform=True`` draws from
    U(0, 1) instead (SMC's resampling, :mod:`galprism.smc`).
    """
    if generators is None or isinstance(generators, torch.Generator):
        return _draw(tuple(shape), generators, dtype, device, uniform)
    gens = list(generators)
    n = shape[0]
    if n % len(gens):
        raise ValueError(f"randn_rows: {n} rows cannot be split among {len(gens)} generators")
    block = (n // len(gens), *shape[1:])
    return torch.cat([_draw(block, g, dtype, device, uniform) for g in gens])


def _draw(
    shape: tuple[int, ...], g: torch.Generator | None, dtype: torch.dtype, device, uniform: bool
) -> Tensor:
    # Draw on the generator's own device and move: a CPU generator then gives the same
    # numbers whether the sampler runs on CPU or GPU.
    gdev = g.device if g is not None else device
    draw = torch.rand if uniform else torch.randn
    return draw(shape, generator=g, dtype=dtype, device=gdev).to(device)


def sigma_table(denoiser: JointDenoiser, ts: Tensor, like: Tensor) -> Tensor:
    """Every source's noise level at the times ``ts``, ``(len(ts), K)`` on ``like``'s device.

    Made once per sampler run, so that the loop over steps copies nothing from the host
    (on a GPU each small copy is a synchronisation). A denoiser that keeps its own noise
    levels on the device (:meth:`~galprism.posterior.JointPrior.prepare_times`) is given
    the same times to fill its table.
    """
    prepare = getattr(denoiser, "prepare_times", None)
    if prepare is not None:
        return prepare(ts, like)
    return torch.stack([denoiser.sigma(t) for t in ts]).to(device=like.device, dtype=like.dtype)


def _per_source(sig: Tensor, x: Tensor) -> Tensor:
    """Reshape per-source noise levels ``(K,)`` to broadcast against ``(N, K, *shape)``."""
    return sig.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))


@torch.no_grad()
def sample(
    denoiser: JointDenoiser,
    shape: Sequence[int],
    config: SamplerConfig | None = None,
    *,
    generators: Generators = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    callback: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Draw samples of shape ``(N, K, *event)`` from a joint denoiser.

    Parameters
    ----------
    denoiser
        Prior or posterior joint denoiser (see module docstring).
    shape
        ``(N, K, *event)``.
    config
        Sampler settings (default :class:`SamplerConfig`).
    generators
        One generator, one per block of rows (see :func:`randn_rows`), or None.
    callback
        Called as ``callback(step, steps)`` after each time step (progress bars).
    """
    config = config or SamplerConfig()
    if config.method == "smc":
        # Without an observation every particle weighs the same, and SMC is its proposal:
        # stochastic DDIM (galprism.smc).
        config = replace(config, method="ddim", eta=config.eta if config.eta > 0 else 1.0)
    shape = tuple(shape)
    ts = time_grid(config, denoiser)

    def noise() -> Tensor:
        return randn_rows(shape, generators, dtype=dtype, device=device)

    sigmas = sigma_table(denoiser, ts, torch.empty(0, dtype=dtype, device=device))
    x = _per_source(sigmas[0], torch.empty(shape, dtype=dtype, device=device)) * noise()
    for i in range(config.steps):
        t, s = ts[i], ts[i + 1]
        sig_t = _per_source(sigmas[i], x)
        sig_s = _per_source(sigmas[i + 1], x)
        d = denoiser(x, t)
        if config.method == "heun":
            slope = (x - d) / sig_t
            x_euler = x + (sig_s - sig_t) * slope
            d_s = denoiser(x_euler, s)
            x = x + (sig_s - sig_t) * (slope + (x_euler - d_s) / sig_s) / 2
        else:
            if config.eta > 0:
                c = config.eta * sig_s * torch.sqrt(1 - (sig_s / sig_t) ** 2)
                x = d + torch.sqrt(sig_s**2 - c**2) * (x - d) / sig_t + c * noise()
            else:
                x = d + (sig_s / sig_t) * (x - d)
            if config.method == "pc":
                for _ in range(config.corrections):
                    eps = (x - denoiser(x, s)) / sig_s
                    # Step relative to the score's size (Song et al. 2021's SNR rule as in
                    # the reference), but never above tau: where the observation pins most
                    # directions, eps is small there and the reference's unbounded
                    # 1/mean(eps^2) makes the step exceed twice the tight posterior
                    # variance, and Langevin diverges (seen on the 5-D manifold problem).
                    dims = tuple(range(2, x.ndim))
                    delta = config.tau / eps.square().mean(dim=dims, keepdim=True).clamp_min(1.0)
                    x = x - delta * sig_s * eps + torch.sqrt(2 * delta) * sig_s * noise()
        if callback is not None:
            callback(i + 1, config.steps)
    return denoiser(x, ts[-1])

"""Settings of an EM run; stored in the run folder and compared on resume."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..diffusion.loss import TIME_SAMPLINGS
from ..diffusion.samplers import SamplerConfig
from ..diffusion.training import random_flux_scaling
from ..errors import ConfigError

__all__ = ["EMConfig", "ESTEP_SAMPLER", "estep_sampler_settings"]

#: The E-step sampler of an EM run unless its settings give another: one PC sample per
#: observation, with the MMPS trust radius on against rare exploding E-step samples. The
#: one place EM's sampler defaults are written. Exact VJPs: the forward-difference Jacobian
#: was measured on separation only, and E-steps near the trust radius are its hardest case.
ESTEP_SAMPLER = SamplerConfig(
    method="pc",
    steps=64,
    eta=0.0,
    corrections=1,
    tau=0.1,
    particles=16,
    n_samples=1,
    cg_iterations=1,
    trust=4.0,
    jacobian="vjp",
)

#: Settings of the E-step sampler that an older layout kept as loose EM settings.
_FORMER_SAMPLER_KEYS = ("steps", "corrections", "tau", "cg_iterations", "trust", "particles")

#: Sampler settings that may carry a per-lap schedule, and the EMConfig field holding it.
_SCHEDULES = {"steps": "step_schedule", "corrections": "correction_schedule"}


@dataclass
class EMConfig:
    """Everything that determines an EM run (see docs/method.md section 5).

    Parameters
    ----------
    sources
        Names of all sources, in the order of the learned prior set.
    shape
        Event shape of each source, ``(C, H, W)`` or ``(D,)``.
    arrangement
        ``"stagewise"`` (contrastive: views with fewer sources first; their sources are
        frozen before later ones are learned) or ``"joint"`` (all sources together).
    gaussian_laps, diffusion_laps
        Laps of the PPCA warm start and of diffusion EM, per stage: one number for every
        stage, or a list with one entry per stage (later stages of a contrastive problem
        learn from more crowded views and need more laps).
    gaussian_rank
        Rank of the PPCA covariance.
    estep_observations
        Observations per view sampled in each E-step (0 = all).
    estep_batch
        Observations per sampler call.
    sampler
        The E-step posterior sampler (:class:`~galprism.diffusion.SamplerConfig`; default
        :data:`ESTEP_SAMPLER`; ``dataclasses.replace(ESTEP_SAMPLER, ...)`` keeps EM's
        other defaults). Its ``n_samples`` must be 1: each E-step draws one posterior
        sample per observation. ``trust``: see :mod:`galprism.posterior`; ``particles``:
        chains per sample of the ``"smc"`` method (:mod:`galprism.smc`, which weights the
        posterior's modes by their evidence where MMPS alone samples them near their prior
        weight; docs/em.md).
    step_schedule, correction_schedule
        Sampler steps and Langevin corrections of the first laps of each phase of each
        stage: entry ``i`` for its lap ``i``, the sampler's own ``steps`` /
        ``corrections`` for every later lap (empty: the sampler's value for every lap).
        E.g. ``step_schedule=(16, 16, 32)`` with ``sampler.steps = 64``: cheap E-steps
        while the priors are far off, exact ones late; or ``step_schedule=(256,)``,
        ``correction_schedule=(3,)`` with 1024 steps and 1 correction.
    reject_chi2, redraws
        E-step samples whose posterior-predictive reduced chi^2 exceeds ``reject_chi2``
        are drawn again (fresh noise) up to ``redraws`` times, and those still failing are
        left out of the M-step (``reject_chi2 = 0``: keep every sample). The redrawn and
        rejected fractions go to the history.
    train_steps, train_batch, lr, ema_decay
        M-step: steps per lap, batch size, learning rate, EMA decay.
    flux_augment
        Source name -> ``[low, high]`` or ``[low, high, fraction]``: in each diffusion
        M-step, that fraction (default 1) of every minibatch of the source's posterior
        samples is multiplied by a factor drawn log-uniformly in ``[low, high]``
        (:func:`~galprism.diffusion.random_flux_scaling`). For a source whose training
        views under-represent bright members (docs/em.md). Empty: no augmentation.
    flux_augment_laps
        Augment only the first ``flux_augment_laps`` diffusion laps of each stage (0: every
        lap). The later laps fit the network to the posterior samples alone, so that the
        augmentation can seed bright members without staying in the learned distribution.
    lr_schedule
        ``"constant"`` or ``"cosine"`` (decay to 0 within each lap; see
        :class:`~galprism.diffusion.Trainer`).
    time_sampling
        Training noise-level distribution (``"uniform"`` in ``log sigma``, ``"beta33"``
        as the reference, or ``"mixed"``; see :func:`~galprism.diffusion.denoising_loss`).
    backbone, backbone_kwargs
        Network of each diffusion prior (``"mlp"`` or ``"unet"``).
    sigma_min, sigma_max
        Noise schedule range (normalised units).
    seed
        Seed of the run's single random stream.
    initial_variance
        Variance of the isotropic Gaussian every source starts from, or ``"auto"``: the
        data's power above the noise, shared among a view's sources. Directions the
        observations do not constrain (beyond the PSF's cut-off, masked pixels) keep
        this variance through EM, so for deconvolution it must be of the data's scale.
    grid_samples, grid_steps
        Samples and sampler steps of the per-lap PNG grids (image sources only; 0 = none).
    keep_checkpoints
        Number of most recent lap checkpoints kept (0 = all).
    metadata
        Free-form provenance copied into the prior manifest (pixel scale, zero point,
        flux scale, data description...). Not compared on resume.
    """

    sources: list[str]
    shape: list[int]
    arrangement: str = "stagewise"
    gaussian_laps: int | list[int] = 4
    diffusion_laps: int | list[int] = 4
    gaussian_rank: int = 8
    estep_observations: int = 0
    estep_batch: int = 1024
    sampler: SamplerConfig = field(default_factory=lambda: ESTEP_SAMPLER)
    step_schedule: tuple[int, ...] = ()
    correction_schedule: tuple[int, ...] = ()
    reject_chi2: float = 0.0
    redraws: int = 0
    train_steps: int = 1000
    train_batch: int = 256
    lr: float = 1e-3
    ema_decay: float = 0.999
    time_sampling: str = "uniform"
    lr_schedule: str = "constant"
    flux_augment: dict[str, list[float]] = field(default_factory=dict)
    flux_augment_laps: int = 0
    backbone: str = "mlp"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    sigma_min: float = 1e-3
    sigma_max: float = 10.0
    seed: int = 0
    initial_variance: float | str = 1.0
    grid_samples: int = 16
    grid_steps: int = 32
    keep_checkpoints: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    #: settings that may differ when resuming (they do not change the result's meaning)
    RESUMABLE_CHANGES = ("metadata", "keep_checkpoints")
    #: settings that may change on resume when the laps already done stay the same laps
    #: (training a run longer, or changing the augmentation of laps not yet run); see
    #: :meth:`galprism.em.store.RunStore.init`
    EXTENDABLE = ("gaussian_laps", "diffusion_laps", "flux_augment", "flux_augment_laps")

    def __post_init__(self) -> None:
        self.sources = list(self.sources)
        self.shape = [int(s) for s in self.shape]
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"EM: source names must be non-empty and unique, got {self.sources}")
        if self.arrangement not in ("stagewise", "joint"):
            raise ConfigError(
                f"EM: arrangement must be 'stagewise' or 'joint', got {self.arrangement!r}"
            )
        if not isinstance(self.sampler, SamplerConfig):
            raise ConfigError(
                f"EM: sampler must be a SamplerConfig (method, steps, ...), got {self.sampler!r}"
            )
        if self.sampler.n_samples != 1:
            raise ConfigError(
                "EM: sampler n_samples must be 1 (one posterior sample per observation), "
                f"got {self.sampler.n_samples!r}"
            )
        # Lap counts may also be given per stage.
        for name, least in (
            ("gaussian_laps", 0),
            ("diffusion_laps", 0),
            ("step_schedule", 1),
            ("correction_schedule", 0),
        ):
            value = getattr(self, name)
            schedule = name.endswith("_schedule")
            counts = value if isinstance(value, list | tuple) else [value]
            if (
                (not counts and not schedule)
                or (schedule and not isinstance(value, list | tuple))
                or any(isinstance(c, bool) or int(c) != c or c < least for c in counts)
            ):
                kind = "a list of counts" if schedule else "a count or a non-empty list of counts"
                raise ConfigError(f"EM: {name} must be {kind} >= {least}, got {value!r}")
            if schedule:
                setattr(self, name, tuple(int(c) for c in value))
            else:
                setattr(
                    self,
                    name,
                    [int(c) for c in value] if isinstance(value, list | tuple) else int(value),
                )
        for name in (
            "estep_observations",
            "keep_checkpoints",
            "grid_samples",
            "redraws",
            "flux_augment_laps",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"EM: {name} must be >= 0")
        if self.reject_chi2 < 0:
            raise ConfigError("EM: reject_chi2 must be >= 0")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ConfigError(
                f"EM: time_sampling must be one of {', '.join(TIME_SAMPLINGS)}, got "
                f"{self.time_sampling!r}"
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(
                f"EM: lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"
            )
        for name in ("estep_batch", "train_batch", "gaussian_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EM: {name} must be >= 1")
        for name, spec in self.flux_augment.items():
            if name not in self.sources:
                raise ConfigError(
                    f"EM: flux_augment names unknown source {name!r} (sources: "
                    f"{', '.join(self.sources)})"
                )
            values = list(spec) if isinstance(spec, list | tuple) else [spec]
            if len(values) not in (2, 3):
                raise ConfigError(
                    f"EM: flux_augment[{name!r}] must be [low, high] or [low, high, fraction], "
                    f"got {spec!r}"
                )
            self.flux_augment[name] = [float(v) for v in values]
            try:  # the augmentation's own check is the one rule for valid ranges
                random_flux_scaling(*self.flux_augment[name])
            except ValueError as err:
                raise ConfigError(f"EM: flux_augment[{name!r}] = {spec!r}: {err}") from None
        total = sum(
            sum(v) if isinstance(v, list) else v for v in (self.gaussian_laps, self.diffusion_laps)
        )
        if total == 0:
            raise ConfigError("EM: needs at least one lap")
        try:  # the sampler's own checks are the one rule for valid settings
            for lap in range(max(len(self.step_schedule), len(self.correction_schedule))):
                self.sampler_of(lap)
        except ConfigError as err:
            raise ConfigError(f"EM: {err}") from None

    def sampler_of(self, phase_lap: int) -> SamplerConfig:
        """The E-step's :class:`SamplerConfig` of lap ``phase_lap`` (from 0) of a phase:
        :attr:`sampler` with this lap's entry of each schedule, one sample per observation."""
        steps, corrections = (
            schedule[phase_lap] if phase_lap < len(schedule) else constant
            for schedule, constant in (
                (self.step_schedule, self.sampler.steps),
                (self.correction_schedule, self.sampler.corrections),
            )
        )
        return replace(self.sampler, steps=steps, corrections=corrections, n_samples=1)

    def augment_of(
        self, sources: Sequence[str], phase_lap: int
    ) -> tuple[tuple[str, tuple[float, ...]], ...]:
        """Flux augmentations ``(source, spec)`` of the M-step of diffusion lap
        ``phase_lap`` (from 0) of a stage learning ``sources``; ``spec`` are the arguments
        of :func:`~galprism.diffusion.random_flux_scaling` as given in ``flux_augment``."""
        if self.flux_augment_laps and phase_lap >= self.flux_augment_laps:
            return ()
        return tuple((s, tuple(self.flux_augment[s])) for s in sources if s in self.flux_augment)

    def laps_of(self, phase: str, stage: int, n_stages: int) -> int:
        """Number of ``phase`` laps of stage ``stage`` (of ``n_stages``).

        Raises
        ------
        ConfigError
            If a per-stage list does not have ``n_stages`` entries.
        """
        value = self.gaussian_laps if phase == "gaussian" else self.diffusion_laps
        if isinstance(value, int):
            return value
        if len(value) != n_stages:
            raise ConfigError(
                f"EM: {phase}_laps lists {len(value)} stage(s) but the views make {n_stages}"
            )
        return value[stage]

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (``config.json``, the prior's training record)."""
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """:meth:`to_dict` with the sampler's settings as ``"sampler.<name>"`` entries."""
        out = self.to_dict()
        sampler = out.pop("sampler")
        return {**out, **{f"sampler.{k}": v for k, v in sampler.items()}}

    @staticmethod
    def former_key(data: Mapping[str, Any]) -> str | None:
        """The first setting of ``data`` in the older layout, where the E-step sampler's
        settings were loose EM settings (``sampler`` its method name), or None."""
        if isinstance(data.get("sampler"), str):
            return "sampler"
        return next((k for k in _FORMER_SAMPLER_KEYS if k in data), None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EMConfig:
        """The inverse of :meth:`to_dict`; ``sampler`` may be a mapping of some of
        :class:`SamplerConfig`'s settings, the others taken from :data:`ESTEP_SAMPLER`.

        Raises
        ------
        ConfigError
            On unknown settings, or settings of the older layout (naming the first).
        """
        former = cls.former_key(data)
        if former is not None:
            raise ConfigError(
                f"EM: {former!r} is a setting of an older layout; the E-step sampler's "
                "settings are now the 'sampler' mapping"
            )
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"EM: unknown settings {sorted(unknown)}")
        data = dict(data)
        if isinstance(data.get("sampler"), Mapping):
            data["sampler"] = _estep_sampler(data["sampler"], "EM sampler")
        return cls(**data)

    def differences(self, other: EMConfig) -> list[str]:
        """Settings that differ from ``other`` (ignoring those safe to change on resume), the
        sampler's named ``"sampler.<name>"`` (see :meth:`flat`)."""
        a, b = self.flat(), other.flat()
        return [k for k in a if k not in self.RESUMABLE_CHANGES and a[k] != b[k]]


def _estep_sampler(settings: Mapping[str, Any], where: str) -> SamplerConfig:
    """:data:`ESTEP_SAMPLER` with ``settings`` (some of :class:`SamplerConfig`'s) replaced."""
    unknown = sorted(set(settings) - {f.name for f in fields(SamplerConfig)})
    if unknown:
        raise ConfigError(f"{where}: unknown sampler settings {unknown}")
    try:
        return replace(ESTEP_SAMPLER, **settings)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def estep_sampler_settings(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """:class:`EMConfig` settings ``sampler``, ``step_schedule`` and ``correction_schedule``
    of a sampler table whose ``steps`` and ``corrections`` may be lists.

    A list ``[a, b, ..., z]`` is a schedule over the laps of each phase: ``a`` for lap 0,
    ``b`` for lap 1, ..., and ``z`` (the sampler's own value) for every later lap. Settings
    the table leaves out are those of :data:`ESTEP_SAMPLER`.

    Raises
    ------
    ConfigError
        On an empty list or an unknown or invalid setting (``where`` names the table).
    """
    constants = dict(table)
    out: dict[str, Any] = {}
    for name, field_name in _SCHEDULES.items():
        value = constants.get(name)
        if isinstance(value, list | tuple):
            if not value:
                raise ConfigError(f"{where}: {name} is an empty list")
            out[field_name] = tuple(value[:-1])
            constants[name] = value[-1]
    out["sampler"] = _estep_sampler(constants, where)
    return out

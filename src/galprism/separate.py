"""The ``galprism separate`` pipeline: cutouts in, posterior sample cubes out.

Stages, for each input path:

1. decide the output name; skip it (``--skip-existing``) or refuse to clobber it;
2. read the cutout (:func:`galprism.io.read.read_cutout`), crop or pad it to the prior's
   size around the requested centre;
3. group it with cutouts of the same shape; when a group holds ``batch_size`` cutouts,
   stack them (:func:`galprism.observation.stack_observations`), call the prior's
   ``separate`` with one ``torch.Generator`` per cutout, convert the samples back to each
   input's flux units and write each output file atomically;
4. report one :class:`InputRecord` per input.

Nothing is kept once a batch is written, so memory stays flat over any number of inputs.
A failure of one input (unreadable file, bad PSF, existing output...) is recorded and the
run goes on; a failure of a whole batch in the sampler is retried cutout by cutout, so
that one bad cutout cannot take its batch-mates down with it.

The prior is any object with the :class:`Separator` interface: the built-in
:class:`galprism.priorset.PriorSet` or, in tests, a stand-in.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from . import __version__
from .diffusion.samplers import METHODS as SAMPLERS
from .errors import ConfigError, GalprismError, ShapeError, UsageError
from .freeform import Box, FreeformConfig, build_freeform, find_residual_boxes
from .io.flux import zeropoint_of_unit
from .io.inputs import cutout_seed, in_shard, output_path
from .io.read import ReadOptions, read_cutout
from .io.write import (
    OutputExistsError,
    StaleTemps,
    check_writable,
    image_hdu,
    primary_hdu,
    source_hdus,
    write_atomic,
)
from .observation import Observation, stack_observations
from .support import (
    Support,
    check_support,
    resolve_support_masks,
    supported_operator,
    zero_outside_supports,
)

__all__ = [
    "DEFAULTS",
    "SAMPLERS",
    "Separator",
    "SeparateConfig",
    "SeparationResult",
    "InputRecord",
    "RunSummary",
    "RunWarnings",
    "prepare_observation",
    "separate_observations",
    "parse_support",
    "parse_freeform",
    "effective_support",
    "write_result",
    "run_separate",
    "resolve_device",
    "prior_zeropoint",
]

#: defaults shared by the CLI and the library
DEFAULTS: dict[str, Any] = {
    "n_samples": 8,
    "steps": 32,  # DDIM 16 -> 32: RMSE 0.118 -> 0.108, abs flux err 0.256 -> 0.217 on the report's 200 test cutouts (docs/evaluation.md)
    "cg_iterations": 1,
    "sampler": "ddim",
    "particles": 16,  # smc only: 16 x 64 steps costs PC 256 x 3 (docs/em.md, sixteenth session)
    "trust": 0.0,  # cap off: on the real HSC blend it tripled chi^2 (994 vs 428), no effect in-distribution
    "batch_size": 4,
    "seed": 0,
}

#: XORed into each cutout's seed for the free-form components' draws (after the sampler).
FREEFORM_SALT = 0xF4EE


class Separator(Protocol):
    """What the pipeline needs from a prior (see :class:`galprism.priorset.PriorSet`)."""

    name: str
    sources: list[str]
    shape: tuple[int, int, int]
    pixel_scale: float | None
    zeropoint: float | None
    bunit: str | None
    sha256: str
    method: str

    def separate(
        self,
        y: torch.Tensor,
        noise_var: torch.Tensor,
        operator: Any,
        *,
        n_samples: int,
        steps: int,
        cg_iterations: int,
        sampler: str = "pc",
        generators: Sequence[torch.Generator] | None = None,
        device: str = "cpu",
        trust: float = ...,
        particles: int = ...,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class SeparateConfig:
    """Options of a separation run (the CLI's flags).

    Attributes
    ----------
    n_samples, steps, cg_iterations, sampler
        Posterior sampler settings passed to the prior: ``sampler`` is ``"ddim"``,
        ``"heun"``, ``"pc"`` or ``"smc"`` (:class:`galprism.diffusion.SamplerConfig`).
    particles
        Chains per posterior sample of ``sampler="smc"`` (:mod:`galprism.smc`).
    trust
        Trust radius of the MMPS corrections of diffusion priors, in units of the
        denoiser's own error scale (:mod:`galprism.posterior`); 0 turns the cap off.
    batch_size
        Cutouts per call of the sampler.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``... or ``"auto"``.
    seed
        Run seed; each cutout's seed derives from it and the file name.
    center, center_radec
        Crop centre in pixels ``(x, y)`` (0-based) or degrees ``(ra, dec)``; default the
        image centre.
    read
        Sidecar files and overrides for reading inputs.
    output_dir, output
        Folder for ``<stem>.galprism.fits`` files, or one output file (single input).
    overwrite, skip_existing
        What to do with existing outputs (default: report an error for that input).
    shard
        ``(I, N)``: process only the inputs of shard I of N.
    command_line
        Recorded in the outputs' HISTORY (default: ``sys.argv``).
    support
        Source name -> radius in prior pixels of the disk around the cutout centre outside
        which that source is zero, or ``"auto:R"`` for an adaptive disk of at most R
        (:mod:`galprism.support`); ``None`` uses the prior's own (``prior.json``), ``{}``
        none.
    freeform
        When sources the priors cannot draw (too bright, or centred beyond the grid) get
        a free-form component integrated out of the likelihood (:mod:`galprism.freeform`).
    """

    n_samples: int = DEFAULTS["n_samples"]
    steps: int = DEFAULTS["steps"]
    cg_iterations: int = DEFAULTS["cg_iterations"]
    sampler: str = DEFAULTS["sampler"]
    particles: int = DEFAULTS["particles"]
    trust: float = DEFAULTS["trust"]
    batch_size: int = DEFAULTS["batch_size"]
    device: str = "cpu"
    seed: int = DEFAULTS["seed"]
    center: tuple[float, float] | None = None
    center_radec: tuple[float, float] | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    output_dir: Path = Path(".")
    output: Path | None = None
    overwrite: bool = False
    skip_existing: bool = False
    shard: tuple[int, int] | None = None
    command_line: str | None = None
    support: dict[str, float | str] | None = None
    freeform: FreeformConfig = field(default_factory=FreeformConfig)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise UsageError(
                f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}"
            )
        for name in ("n_samples", "steps", "batch_size", "particles"):
            if int(getattr(self, name)) < 1:
                raise UsageError(
                    f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if not float(self.trust) >= 0:
            raise UsageError(f"trust must be >= 0, got {self.trust}")
        if int(self.cg_iterations) < 0:
            raise UsageError(f"cg-iterations must be >= 0, got {self.cg_iterations}")
        if self.overwrite and self.skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other")
        if self.center is not None and self.center_radec is not None:
            raise UsageError("--center and --center-radec exclude each other")


@dataclass(eq=False)
class SeparationResult:
    """Posterior samples of one cutout, in the cutout's own flux units.

    Attributes
    ----------
    observation
        The cutout as cropped to the prior's footprint.
    sources
        Source names, in the order of the samples' K axis.
    samples
        ``(n, K, C, H, W)`` float32 on the prior's grid.
    model
        ``(C, h, w)`` posterior mean of the predicted data on the cutout's grid.
    resid
        ``(C, h, w)`` ``(data - model) / sigma``; NaN at masked pixels.
    chi2_samples
        ``(n,)`` reduced chi^2 over unmasked pixels of each sample's predicted data: the
        posterior-predictive check. Its expectation is 1 when the posterior is calibrated,
        whereas ``mean(resid**2)`` is below 1 by the effective number of parameters the
        data constrain, divided by the number of pixels.
    seed
        The cutout's seed.
    factor
        Grid factor (cutout pixel scale / prior pixel scale).
    flux_factor
        Multiplier from the cutout's units to the prior's.
    zeropoint_assumed
        The cutout said nothing about its flux scale and the prior's was assumed.
    support_radii
        Radius in prior pixels of each supported source's disk for this cutout.
    freeform, boxes
        ``(n, C, H, W)`` samples of the free-form components' pixels on the prior grid
        (their light beyond the grid is in ``model`` only), and the boxes; ``None`` and
        ``[]`` when the cutout has none.
    """

    observation: Observation
    sources: list[str]
    samples: np.ndarray
    model: np.ndarray
    resid: np.ndarray
    chi2_samples: np.ndarray
    seed: int
    factor: int
    flux_factor: float
    zeropoint_assumed: bool = False
    support_radii: dict[str, float] = field(default_factory=dict)
    freeform: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)

    def flux_summary(self) -> dict[str, dict[str, list[float]]]:
        """Per source and band: mean and standard deviation over samples of the total flux."""
        totals = self.samples.astype(np.float64).sum(axis=(-2, -1))  # (n, K, C)
        n = totals.shape[0]
        std = totals.std(axis=0, ddof=1) if n > 1 else np.zeros(totals.shape[1:])
        return {
            s: {
                "flux_mean": [float(v) for v in totals[:, k].mean(axis=0)],
                "flux_std": [float(v) for v in std[k]],
            }
            for k, s in enumerate(self.sources)
        }


@dataclass
class InputRecord:
    """Outcome of one input: one JSON line of ``--json``."""

    input: str
    output: str | None
    status: str  # "ok" | "error" | "skipped"
    seconds: float = 0.0
    seed: int | None = None
    sources: dict[str, dict[str, list[float]]] | None = None
    chi2: float | None = None
    error: str | None = None
    index: int = -1  # position among the inputs of this run (shard), in input order
    modelled: str | None = None  # the input pixels modelled, when a centre was given

    def to_json(self) -> str:
        data = {
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "seconds": round(self.seconds, 4),
            "seed": self.seed,
        }
        if self.sources is not None:
            data["sources"] = self.sources
        if self.chi2 is not None:
            data["chi2"] = round(self.chi2, 4)
        if self.error is not None:
            data["error"] = self.error
        if self.modelled is not None:
            data["modelled"] = self.modelled
        return json.dumps(data)


@dataclass
class RunSummary:
    """Counts of a run; ``exit_code`` is 1 when any input failed, else 0."""

    ok: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


class RunWarnings:
    """Warnings shown once per kind and run, with a count of the repeats at the end."""

    def __init__(self, emit: Callable[[str], None] | None = None) -> None:
        self.emit = emit or (lambda msg: print(f"galprism: warning: {msg}", file=sys.stderr))
        self.counts: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        """Show ``message`` if ``kind`` was not reported yet in this run; count it."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] == 1:
            self.emit(message)

    def finish(self) -> None:
        """Report how many more inputs each shown warning applied to."""
        for kind, n in self.counts.items():
            if n > 1:
                self.emit(f"{kind}: applied to {n - 1} more input(s)")


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; others are checked.

    Raises
    ------
    UsageError
        If CUDA is requested but not available.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r}: not a torch device") from exc
    return device


def prior_zeropoint(prior: Separator) -> float | None:
    """The prior's AB zero point, from its ``zeropoint`` or else its ``bunit``."""
    if prior.zeropoint is not None:
        return float(prior.zeropoint)
    return zeropoint_of_unit(prior.bunit)


def prepare_observation(
    path: str | os.PathLike[str],
    prior: Separator,
    config: SeparateConfig,
    warnings: RunWarnings | None = None,
) -> tuple[Observation, int]:
    """Read a cutout and crop it to the prior's footprint.

    Returns
    -------
    observation, factor
        The cropped cutout and its grid factor.

    Raises
    ------
    GalprismError
        One line naming the file and the problem.
    """
    obs = read_cutout(path, config.read)
    return fit_to_prior(obs, prior, config, warnings)


def fit_to_prior(
    obs: Observation, prior: Separator, config: SeparateConfig, warnings: RunWarnings | None = None
) -> tuple[Observation, int]:
    """Check an observation against a prior and crop it to the prior's footprint."""
    c, h, w = (int(s) for s in prior.shape)
    if obs.n_bands != c:
        raise ShapeError(
            f"{obs.name}: cutout has {obs.n_bands} band(s) but prior {prior.name!r} models {c}"
        )
    if obs.pixel_scale is None and prior.pixel_scale is not None and warnings is not None:
        warnings.warn(
            "pixel scale assumed",
            f"{obs.name}: no pixel scale (WCS, PIXSCALE or --pixel-scale); assuming the prior's {prior.pixel_scale:g} arcsec/pixel",
        )
    factor = obs.grid_factor(prior.pixel_scale)
    if h % factor or w % factor:
        raise ShapeError(
            f"{obs.name}: prior grid {h}x{w} is not divisible by the downsampling factor {factor} "
            f"(cutout {obs.pixel_scale:.6g} vs prior {prior.pixel_scale:.6g} arcsec/pixel)"
        )
    size = (h // factor, w // factor)
    explicit = config.center_radec is not None or config.center is not None
    if not explicit and (obs.shape[1] > size[0] or obs.shape[2] > size[1]):
        # Never model part of an image silently: a cutout must be asked for.
        raise ShapeError(
            f"{obs.name}: image of {obs.shape[2]}x{obs.shape[1]} pixels is larger than the "
            f"{size[1]}x{size[0]}-pixel footprint of prior {prior.name!r}; give a centre to "
            "model a cutout of it (x,y = {:g},{:g} is the image centre)".format(
                *obs.default_center()
            )
        )
    if config.center_radec is not None:
        center: tuple[float, float] | None = obs.pixel_of(*config.center_radec)
    else:
        center = config.center
    cropped = obs.crop(center, size)
    if cropped is not obs:
        cropped = replace(cropped, notes=(*cropped.notes, _modelled_text(obs, cropped)))
    return cropped, factor


#: start of the note that says which input pixels an explicitly centred cutout modelled
MODELLED = "modelled input pixels"


def _modelled_text(full: Observation, cropped: Observation) -> str:
    """``modelled input pixels x 100-147, y 200-247 (0-based) of the 2048x2048 image``."""
    x0, y0 = cropped.origin[0] - full.origin[0], cropped.origin[1] - full.origin[1]
    _, ny, nx = cropped.shape
    _, h, w = full.shape
    xa, xb, ya, yb = max(x0, 0), min(x0 + nx, w) - 1, max(y0, 0), min(y0 + ny, h) - 1
    text = f"{MODELLED} x {xa}-{xb}, y {ya}-{yb} (0-based) of the {w}x{h} image"
    if (xa, xb, ya, yb) != (x0, x0 + nx - 1, y0, y0 + ny - 1):
        text += f", padded to {nx}x{ny} with masked pixels"
    return text


def _modelled_card(obs: Observation) -> str:
    text = modelled_region(obs)
    if text is None:
        return "whole input"
    return text.removeprefix(MODELLED).replace(" (0-based) of the ", " of ").strip()


def modelled_region(obs: Observation) -> str | None:
    """The note of :func:`fit_to_prior` on the input pixels a centred cutout modelled."""
    return next((n for n in obs.notes if n.startswith(MODELLED)), None)


def parse_support(values: Sequence[str]) -> dict[str, float | str] | None:
    """``--support`` values (``SOURCE=RADIUS``, ``SOURCE=auto:RADIUS`` or ``none``) as a
    :attr:`SeparateConfig.support`.

    No values gives ``None`` (the prior's own supports); ``none`` gives ``{}``.
    """
    if not values:
        return None
    if any(v.strip().lower() == "none" for v in values):
        if len(values) > 1:
            raise UsageError(
                f"--support none excludes other --support values, got {', '.join(values)}"
            )
        return {}
    out: dict[str, float | str] = {}
    for v in values:
        name, sep, radius = v.partition("=")
        value: float | str = radius.strip()
        try:
            value = float(radius)
        except ValueError:
            pass
        if not sep or not name.strip():
            raise UsageError(
                f"--support {v!r}: expected SOURCE=RADIUS or SOURCE=auto:RADIUS (prior pixels), or 'none'"
            )
        try:
            Support.parse(value, f"--support {v!r}")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        out[name.strip()] = value
    return out


def parse_freeform(
    bright: str | float | None, edge: str | float | None, residual: str | float | None = None
) -> FreeformConfig:
    """``--freeform-bright`` / ``-edge`` / ``-residual`` values (a number or ``none``) as a :class:`FreeformConfig`."""
    values: dict[str, float | None] = {}
    for name, v in (("bright", bright), ("edge", edge), ("residual", residual)):
        if v is None or (isinstance(v, str) and v.strip().lower() == "none"):
            values[name] = None
            continue
        try:
            values[name] = float(v)
        except ValueError:
            raise UsageError(
                f"--freeform-{name} {v!r}: expected a positive number or 'none'"
            ) from None
    for name, v in values.items():
        if v is not None and not (math.isfinite(v) and v > 0):
            raise UsageError(f"--freeform-{name} {v:g}: expected a positive number or 'none'")
    return FreeformConfig(bright=values["bright"], edge=values["edge"], residual=values["residual"])


def effective_support(prior: Separator, config: SeparateConfig) -> dict[str, Support]:
    """The supports a run uses: ``config.support`` when given (``{}`` = none), else the prior's."""
    if config.support is None:
        return dict(getattr(prior, "support", {}) or {})
    if config.support and prior.method == "asvd":
        raise UsageError(
            f"--support: prior {prior.name!r} is an asvd prior; supports apply to diffusion and Gaussian priors"
        )
    try:
        return check_support(config.support, prior.sources, f"--support for prior {prior.name!r}")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def separate_observations(
    observations: Sequence[Observation],
    prior: Separator,
    config: SeparateConfig,
    seeds: Sequence[int],
    *,
    device: str = "cpu",
) -> list[SeparationResult]:
    """Sample the posterior of equally shaped, cropped observations in one batch.

    Parameters
    ----------
    observations
        Cutouts already fitted to the prior (see :func:`fit_to_prior`).
    prior
        The prior.
    config
        Sampler settings.
    seeds
        One seed per observation; each gets its own ``torch.Generator``.
    device
        Torch device for the sampler.

    Returns
    -------
    list of SeparationResult
        In the order of ``observations``, in each cutout's units.

    Notes
    -----
    With ``config.freeform.residual`` set, each cutout whose first draw leaves light
    unexplained (:func:`~galprism.freeform.find_residual_boxes`) is drawn again, with the
    same seed, with free-form components there; the others keep their first draw.
    """
    results = _separate_once(observations, prior, config, seeds, device=device)
    if config.freeform.residual is None or not _freeform_applies(prior):
        return results
    flux_scale = float(prior.flux_scale)
    extra: list[list[Box]] = [[] for _ in observations]
    searched = range(len(results))  # later rounds: only the redrawn cutouts have a new residual
    for _ in range(config.freeform.rounds):
        redo = []
        for i in searched:
            res = results[i]
            obs, fac = res.observation, res.flux_factor
            found = find_residual_boxes(
                (obs.image - res.model) * fac,
                obs.variance * fac**2,
                obs.valid,
                obs.psf,
                res.boxes,
                config.freeform,
                flux_scale,
                res.factor,
            )
            if found:
                extra[i].extend(found)
                redo.append(i)
        if not redo:
            break
        again = _separate_once(
            [observations[i] for i in redo],
            prior,
            config,
            [seeds[i] for i in redo],
            device=device,
            extra_boxes=[extra[i] for i in redo],
        )
        for i, res in zip(redo, again, strict=True):
            results[i] = res
        searched = redo
    return results


def _freeform_applies(prior: Separator) -> bool:
    return getattr(prior, "flux_scale", None) is not None and prior.method != "asvd"


def _separate_once(
    observations: Sequence[Observation],
    prior: Separator,
    config: SeparateConfig,
    seeds: Sequence[int],
    *,
    device: str = "cpu",
    extra_boxes: Sequence[Sequence[Box]] | None = None,
) -> list[SeparationResult]:
    """One posterior draw of a batch (:func:`separate_observations`), with ``extra_boxes`` added."""
    zp = prior_zeropoint(prior)
    batch = stack_observations(
        observations,
        prior.shape,
        len(prior.sources),
        prior_pixel_scale=prior.pixel_scale,
        prior_zeropoint=zp,
    )
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    freeform = None
    if config.freeform.enabled and _freeform_applies(prior):
        psfs = [o.prior_grid_psf(batch.factor) for o in observations]
        freeform = build_freeform(
            batch.y,
            batch.noise_var,
            batch.valid,
            psfs,
            prior.shape,
            batch.factor,
            float(prior.flux_scale),
            config.freeform,
            extra=extra_boxes,
        )
    y, noise_var, base_operator = batch.y, batch.noise_var, batch.operator
    if freeform is not None:
        y, noise_var, base_operator = freeform.whiten(batch.y.to(torch.float64), batch.operator)
        y, noise_var = y.to(batch.y.dtype), noise_var.to(batch.y.dtype)

    supports, radii = resolve_support_masks(
        effective_support(prior, config),
        prior,
        y,
        noise_var,
        base_operator,
        seeds,
        cg_iterations=config.cg_iterations,
        trust=config.trust,
        device=device,
    )
    operator = supported_operator(base_operator, prior.sources, supports)
    samples = prior.separate(
        y,
        noise_var,
        operator,
        n_samples=config.n_samples,
        steps=config.steps,
        cg_iterations=config.cg_iterations,
        sampler=config.sampler,
        generators=generators,
        device=device,
        trust=config.trust,
        particles=config.particles,
    )
    b, k = len(observations), len(prior.sources)
    shape = tuple(samples.shape)
    if len(shape) != 6 or shape[0] != b or shape[2] != k or shape[3:] != tuple(prior.shape):
        raise ShapeError(
            f"prior {prior.name!r} returned samples of shape {shape}, expected "
            f"({b}, n_samples, {k}, {', '.join(map(str, prior.shape))})"
        )
    x = samples.detach().to("cpu", torch.float64)
    x = zero_outside_supports(x, prior.sources, supports)
    if not torch.isfinite(x).all():
        raise GalprismError(f"prior {prior.name!r}: the sampler returned non-finite values")
    ff_images = None
    # Each sample's predicted data (B, n, C, h, w) in prior units: the model is their mean,
    # and each one's residual is the posterior-predictive check of that sample.
    n_s = x.shape[1]
    rows = torch.arange(b).repeat_interleave(n_s)
    light = (
        batch.forward.take(rows)
        .apply(x.sum(dim=2).flatten(0, 1))
        .reshape(b, n_s, *batch.y.shape[1:])
    )
    if freeform is not None:
        # The box pixels are drawn per sample given that sample's light.
        residual = (batch.y.to(x.dtype)[:, None] - light) * batch.valid[:, None].to(x.dtype)
        ff_pixels = freeform.sample(
            residual, [torch.Generator().manual_seed(int(s) ^ FREEFORM_SALT) for s in seeds]
        )
        light = light + freeform.model(ff_pixels)
        ff_images = freeform.images(ff_pixels)
    predicted = light.mean(dim=1)
    results = []
    for i, obs in enumerate(observations):
        fac = float(batch.flux_factors[i])
        model = predicted[i].numpy() / fac
        sigma = np.sqrt(obs.variance)
        resid = np.where(obs.valid, (obs.image - model) / sigma, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):  # sigma may be 0 or inf where masked
            per_sample = (obs.image[None] - light[i].numpy() / fac) / sigma[None]
        chi2_samples = np.mean(per_sample[:, obs.valid] ** 2, axis=1)
        results.append(
            SeparationResult(
                observation=obs,
                sources=list(prior.sources),
                samples=(x[i].numpy() / fac).astype(np.float32),
                model=model,
                resid=resid,
                chi2_samples=chi2_samples,
                seed=int(seeds[i]),
                factor=batch.factor,
                flux_factor=fac,
                zeropoint_assumed=obs.zeropoint is None and zp is not None,
                support_radii={name: r[i] for name, r in radii.items()},
                freeform=None
                if ff_images is None or not freeform.boxes[i]
                else (ff_images[i].numpy() / fac).astype(np.float32),
                boxes=[] if freeform is None else list(freeform.boxes[i]),
            )
        )
    return results


def _cards(
    result: SeparationResult, prior: Separator, config: SeparateConfig, device: str
) -> dict[str, tuple[Any, str]]:
    obs = result.observation
    n = int(result.samples.shape[0])
    zp_prior = prior_zeropoint(prior)
    cards: dict[str, tuple[Any, str]] = {
        "GPVERS": (__version__, "galprism version"),
        "PRIOR": (prior.name, "prior name"),
        "PRIORSHA": (prior.sha256, ""),
        "METHOD": (prior.method, "separation method of the prior"),
        "SOURCES": (",".join(prior.sources), "sources, in HDU order"),
        "NSAMPLE": (n, "posterior samples per source"),
        "POINTEST": (
            n == 1 and prior.method == "asvd",
            "single point estimate, no posterior spread",
        ),
        "PSFINCL": (
            bool(getattr(prior, "psf_included", False)),
            "source images include the PSF (asvd bases)",
        ),
        "NSTEPS": (int(config.steps), "sampler steps"),
        "NCGITER": (int(config.cg_iterations), "conjugate-gradient iterations per step"),
        "TRUST": (float(config.trust), "MMPS trust radius (0 = off)"),
        "SAMPLER": (config.sampler, "posterior sampler"),
        "NPARTIC": (int(config.particles), "chains per sample (smc sampler only)"),
        "SUPPORT": (
            _support_text(effective_support(prior, config), result.support_radii),
            "source=radius [prior px]: zero beyond",
        ),
        "FFBRIGHT": (
            _none_text(config.freeform.bright),
            "free-form box above this peak [flux_scale]",
        ),
        "FFEDGE": (_none_text(config.freeform.edge), "free-form box for edge peaks above this S/N"),
        "FFRESID": (
            _none_text(config.freeform.residual),
            "free-form box for residual peaks above this S/N",
        ),
        "FFROUNDS": (int(config.freeform.rounds), "at most this many redraws for residual boxes"),
        "FFBOXES": (len(result.boxes), "free-form components in this cutout (FREEFORM HDU)"),
        "CHI2": (
            round(float(np.mean(result.chi2_samples)), 4),
            "reduced chi2 of the samples' data, mean over samples",
        ),
        "CHI2MOD": (
            round(float(np.nanmean(result.resid**2)), 4),
            "reduced chi2 of MODEL (mean of RESID**2)",
        ),
        "SEED": (int(result.seed), "seed of this cutout: sha256(RUNSEED:basename)"),
        "RUNSEED": (int(config.seed), "--seed of the run"),
        "DEVICE": (device, "torch device"),
        "INFILE": (obs.name, "input file"),
        "INSHA256": (obs.checksum, ""),
        "CROPX0": (int(obs.origin[0]), "input pixel x (0-based) of output pixel 0"),
        "CROPY0": (int(obs.origin[1]), "input pixel y (0-based) of output pixel 0"),
        "MODELLED": (
            _modelled_card(obs),
            "input pixels modelled (0-based, inclusive)",
        ),
        "GRIDFAC": (int(result.factor), "cutout pixel / prior pixel (downsampling)"),
        "PIXSCALE": (obs.pixel_scale, "[arcsec] cutout pixel scale"),
        "ZPINPUT": (obs.zeropoint, "AB zero point of the input (and outputs)"),
        "ZPPRIOR": (zp_prior, "AB zero point of the prior"),
        "ZPASSUME": (bool(result.zeropoint_assumed), "input zero point unknown, prior's assumed"),
        "FLUXFAC": (float(result.flux_factor), "input units -> prior units"),
    }
    return cards


def _none_text(value: float | None) -> float | str:
    return "none" if value is None else float(value)


def _support_text(support: dict[str, Support], radii: dict[str, float]) -> str:
    """``galaxy=7 (auto:20)`` for an adaptive support, ``galaxy=20`` for a fixed one, ``none``."""
    parts = []
    for name, sup in support.items():
        used = radii.get(name, sup.radius)
        parts.append(f"{name}={used:g} ({sup})" if sup.adaptive else f"{name}={used:g}")
    return ",".join(parts) or "none"


def build_hdulist(
    result: SeparationResult, prior: Separator, config: SeparateConfig, device: str
) -> Any:
    """The output HDUList of one result (see :mod:`galprism.io.write` for the layout)."""
    from astropy.io import fits

    obs = result.observation
    history = [f"galprism {__version__}: {config.command_line or shlex.join(sys.argv)}"]
    primary = primary_hdu(_cards(result, prior, config, device), history)
    for note in obs.notes:
        primary.header.add_comment(note)
    bunit = obs.bunit or (prior.bunit if result.zeropoint_assumed else None)
    zp = (
        obs.zeropoint
        if obs.zeropoint is not None
        else (prior_zeropoint(prior) if result.zeropoint_assumed else None)
    )
    extra = {"MAGZERO": (zp, "AB zero point of the values")}
    fine_wcs = obs.prior_grid_wcs(result.factor)
    hdus = [primary]
    cache: dict = {}  # WCS header cards per grid and axes, built once per file
    for k, name in enumerate(result.sources):
        cards = {
            **extra,
            "SOURCE": (name, "source of the prior"),
            "NSAMPLE": (int(result.samples.shape[0]), "samples"),
        }
        hdus.extend(
            source_hdus(
                name, result.samples[:, k], wcs=fine_wcs, bunit=bunit, cards=cards, cache=cache
            )
        )
    if result.freeform is not None:
        cards = {
            **extra,
            "SOURCE": ("freeform", "free-form components (galprism.freeform)"),
            "NSAMPLE": (int(result.freeform.shape[0]), "samples"),
            "FFHALF": (int(config.freeform.half_width), "box half-width [prior px]"),
        }
        for i, box in enumerate(result.boxes):
            cards[f"FFBOX{i}"] = (
                f"{box.kind} row={box.row} col={box.col}",
                f"peak {box.peak:.4g} S/N {box.snr:.4g}",
            )
        hdus.extend(
            source_hdus(
                "FREEFORM", result.freeform, wcs=fine_wcs, bunit=bunit, cards=cards, cache=cache
            )
        )
    banded = obs.n_bands > 1
    leading = ("BAND",) if banded else ()
    model = result.model if banded else result.model[0]
    resid = result.resid if banded else result.resid[0]
    hdus.append(
        image_hdu(
            model, "MODEL", wcs=obs.wcs, bunit=bunit, leading=leading, cards=extra, cache=cache
        )
    )
    resid_cards = {"RESIDDEF": ("(data - MODEL) / sigma", "NaN at masked pixels")}
    hdus.append(
        image_hdu(
            resid, "RESID", wcs=obs.wcs, bunit=None, leading=leading, cards=resid_cards, cache=cache
        )
    )
    return fits.HDUList(hdus)


def write_result(
    result: SeparationResult,
    path: str | os.PathLike[str],
    prior: Separator,
    config: SeparateConfig,
    *,
    device: str = "cpu",
) -> Path:
    """Write one result atomically (no overwrite unless ``config.overwrite``)."""
    return write_atomic(
        build_hdulist(result, prior, config, device),
        path,
        overwrite=config.overwrite,
        remove_stale=False,  # run_separate removes them with one listing of the folder
    )


@dataclass
class _Pending:
    path: str
    output: Path
    obs: Observation
    seed: int
    seconds: float
    index: int


def _error_text(exc: BaseException, path: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, GalprismError):
        text = f"{type(exc).__name__}: {text}"
    return text if path in text else f"{path}: {text}"


def run_separate(
    inputs: Iterable[str],
    prior: Separator,
    config: SeparateConfig,
    *,
    on_record: Callable[[InputRecord], None] | None = None,
    warnings: RunWarnings | None = None,
) -> RunSummary:
    """Separate every input file, streaming: read a batch, sample, write, drop.

    Parameters
    ----------
    inputs
        Paths (any iterable; consumed lazily). Inputs outside ``config.shard`` are
        ignored.
    prior
        The prior (see :class:`Separator`).
    config
        Run options.
    on_record
        Called with each input's :class:`InputRecord` as soon as it is final.
    warnings
        Collector for once-per-run warnings (default: printed to stderr).

    Returns
    -------
    RunSummary
        ``exit_code`` 1 when any input failed.
    """
    t_run = time.perf_counter()
    warn = warnings or RunWarnings()
    device = resolve_device(config.device)
    effective_support(prior, config)  # a bad --support is a usage error before any work
    summary = RunSummary()
    if config.output is None:
        try:
            Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"--output-dir {config.output_dir}: cannot create it ({exc.strerror})"
            ) from exc
    out_folder = Path(config.output_dir) if config.output is None else Path(config.output).parent
    check_writable(out_folder)  # before any sampling, not after it
    stale = StaleTemps()
    seen: dict[str, str] = {}
    position = 0
    pending: dict[tuple, list[_Pending]] = {}

    def report(rec: InputRecord) -> None:
        if rec.status == "ok":
            summary.ok += 1
        elif rec.status == "skipped":
            summary.skipped += 1
        else:
            summary.errors += 1
        if on_record is not None:
            on_record(rec)

    def flush(key: tuple) -> None:
        process(pending.pop(key, []))

    def process(group: list[_Pending]) -> None:
        if not group:
            return
        t0 = time.perf_counter()
        try:
            results: list[Any] = separate_observations(
                [p.obs for p in group], prior, config, [p.seed for p in group], device=device
            )
        except Exception as exc:  # noqa: BLE001 - isolate the failing cutout below
            if len(group) == 1:
                results = [exc]
            else:
                for p in group:  # retry alone: same per-cutout generators, same results
                    process([p])
                return
        share = (time.perf_counter() - t0) / len(group)
        for p, res in zip(group, results, strict=True):
            where = {"index": p.index, "modelled": modelled_region(p.obs)}
            if isinstance(res, BaseException):
                report(
                    InputRecord(
                        p.path,
                        str(p.output),
                        "error",
                        p.seconds + share,
                        p.seed,
                        error=_error_text(res, p.path),
                        **where,
                    )
                )
                continue
            t1 = time.perf_counter()
            try:
                write_result(res, p.output, prior, config, device=device)
            except Exception as exc:  # noqa: BLE001 - one unwritable output must not stop the run
                report(
                    InputRecord(
                        p.path,
                        str(p.output),
                        "error",
                        p.seconds + share,
                        p.seed,
                        error=_error_text(exc, p.path),
                        **where,
                    )
                )
                continue
            seconds = p.seconds + share + time.perf_counter() - t1
            report(
                InputRecord(
                    p.path,
                    str(p.output),
                    "ok",
                    seconds,
                    p.seed,
                    sources=res.flux_summary(),
                    chi2=float(np.mean(res.chi2_samples)),
                    **where,
                )
            )

    for path in inputs:
        path = str(path)
        if config.shard is not None and not in_shard(path, *config.shard):
            continue
        t0 = time.perf_counter()
        out = (
            Path(config.output)
            if config.output is not None
            else output_path(path, config.output_dir)
        )
        seed = cutout_seed(config.seed, path)
        index, position = position, position + 1
        key = os.path.abspath(out)
        if key in seen:
            report(
                InputRecord(
                    path,
                    str(out),
                    "error",
                    0.0,
                    seed,
                    error=f"{path}: writes the same output {out} as {seen[key]}",
                    index=index,
                )
            )
            continue
        seen[key] = path
        for tmp in stale.remove(out):
            warn.warn(
                "stale temporary removed",
                f"{tmp}: removed, a temporary file of {out.name} left by an interrupted run",
            )
        if out.exists():
            if config.skip_existing:
                report(InputRecord(path, str(out), "skipped", 0.0, seed, index=index))
                continue
            if not config.overwrite:
                exc = OutputExistsError(
                    f"{out}: output exists; pass --overwrite to replace it or --skip-existing"
                )
                report(
                    InputRecord(
                        path,
                        str(out),
                        "error",
                        0.0,
                        seed,
                        error=_error_text(exc, path),
                        index=index,
                    )
                )
                continue
        try:
            obs, factor = prepare_observation(path, prior, config, warn)
        except Exception as exc:  # noqa: BLE001 - a bad file never stops the batch
            report(
                InputRecord(
                    path,
                    str(out),
                    "error",
                    time.perf_counter() - t0,
                    seed,
                    error=_error_text(exc, path),
                    index=index,
                )
            )
            continue
        _warn_notes(obs, prior, warn)
        group_key = (obs.shape, factor)
        pending.setdefault(group_key, []).append(
            _Pending(path, out, obs, seed, time.perf_counter() - t0, index)
        )
        if len(pending[group_key]) >= config.batch_size:
            flush(group_key)
    for key in list(pending):
        flush(key)
    warn.finish()
    summary.seconds = time.perf_counter() - t_run
    return summary


def _warn_notes(obs: Observation, prior: Separator, warn: RunWarnings) -> None:
    for note in obs.notes:
        if note.startswith("noise estimated"):
            warn.warn("noise estimated", f"{obs.name}: {note}")
        elif note.startswith("PSF") and "renormalised" in note:
            warn.warn("PSF renormalised", f"{obs.name}: {note}")
        elif note.startswith("PSF") and "re-centred" in note:
            warn.warn("PSF re-centred", f"{obs.name}: {note}")
    zp = prior_zeropoint(prior)
    if obs.zeropoint is None and zp is not None:
        warn.warn(
            "zero point assumed",
            f"{obs.name}: no --zeropoint, MAGZERO/MAGZPT/ZP or flux BUNIT; assuming the prior's AB zero point {zp:.4g}",
        )
    elif obs.zeropoint is not None and zp is None:
        warn.warn(
            "prior zero point unknown",
            f"prior {prior.name!r} records no zero point; fluxes of {obs.name} used as they are",
        )

"""Posterior samples of cropped cutouts: :func:`separate_observations` and its result."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import GalprismError, ShapeError
from ..freeform import Box, build_freeform, find_residual_boxes
from ..io.read import read_cutout
from ..notes import Note, NoteKind
from ..observation import Observation, stack_observations
from ..operators import LinearOperator, LowRankUpdate, SourceSum, Weight
from ..support import (
    resolve_support_masks,
    zero_outside_supports,
)
from .config import SeparateConfig, resolve_precision
from .precision import network_precision
from .prior import Separator, effective_support, prior_zeropoint

if TYPE_CHECKING:
    from .runner import RunWarnings

__all__ = [
    "MODELLED",
    "modelled_region",
    "FREEFORM_SALT",
    "SeparationResult",
    "prepare_observation",
    "fit_to_prior",
    "separate_observations",
]


#: XORed into each cutout's seed for the free-form components' draws (after the sampler).
FREEFORM_SALT = 0xF4EE


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
        ``(n, K, C, H, W)`` float32 on the prior's grid, in all the prior's ``C`` bands.
    model
        ``(c, h, w)`` posterior mean of the predicted data on the cutout's grid, in the
        cutout's ``c`` bands.
    resid
        ``(c, h, w)`` ``(data - model) / sigma``; NaN at masked pixels.
    chi2_samples
        ``(n,)`` reduced chi^2 over unmasked pixels of each sample's predicted data: the
        posterior-predictive check. Its expectation is 1 when the posterior is calibrated,
        whereas ``mean(resid**2)`` is below 1 by the effective number of parameters the
        data constrain, divided by the number of pixels.
    seed
        The cutout's seed.
    grid_factor
        Cutout pixel scale / prior pixel scale.
    flux_factors
        ``(c,)`` multiplier from each cutout band's units to the prior's.
    band_index
        Index of each cutout band among the prior's bands.
    source_factors
        ``(C,)`` the multiplier that converted each band of ``samples`` from the prior's
        units: a band's of ``flux_factors``; for a band the cutout lacks, the cutout's
        common factor when its bands share one, else 1 (the prior's units).
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
    grid_factor: int
    flux_factors: np.ndarray
    band_index: tuple[int, ...]
    source_factors: np.ndarray
    zeropoint_assumed: bool = False
    support_radii: dict[str, float] = field(default_factory=dict)
    freeform: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)

    @property
    def flux_factor(self) -> float:
        """The multiplier from the cutout's units to the prior's when every band has the same
        one, else NaN (see ``flux_factors``)."""
        f = self.flux_factors
        return float(f[0]) if np.ptp(f) == 0 else float("nan")

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


def prepare_observation(
    path: str | os.PathLike[str],
    prior: Separator,
    config: SeparateConfig,
    warnings: RunWarnings | None = None,
) -> tuple[Observation, int]:
    """Read a cutout and crop it to the prior's footprint.

    Returns
    -------
    observation, grid_factor
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
    _, h, w = (int(s) for s in prior.frame.shape)
    obs.band_index(prior.frame, f"prior {prior.name!r}")
    if obs.pixel_scale is None and prior.frame.pixel_scale is not None and warnings is not None:
        warnings.warn(
            "pixel scale assumed",
            f"{obs.name}: no pixel scale (WCS, PIXSCALE or read options); assuming the "
            f"prior's {prior.frame.pixel_scale:g} arcsec/pixel",
        )
    grid_factor = obs.grid_factor(prior.frame.pixel_scale)
    if h % grid_factor or w % grid_factor:
        raise ShapeError(
            f"{obs.name}: prior grid {h}x{w} is not divisible by the downsampling factor "
            f"{grid_factor} "
            f"(cutout {obs.pixel_scale:.6g} vs prior {prior.frame.pixel_scale:.6g} arcsec/pixel)"
        )
    size = (h // grid_factor, w // grid_factor)
    explicit = config.center_radec is not None or config.center is not None
    if not explicit and (obs.shape[1] > size[0] or obs.shape[2] > size[1]):
        # Never model part of an image silently: a cutout must be asked for.
        raise ShapeError(
            f"{obs.name}: image of {obs.shape[2]}x{obs.shape[1]} pixels is larger than the "
            f"{size[1]}x{size[0]}-pixel footprint of prior {prior.name!r}; give a center to "
            "model a cutout of it (x,y = {:g},{:g} is the image center)".format(
                *obs.default_center()
            )
        )
    if config.center_radec is not None:
        center: tuple[float, float] | None = obs.pixel_of(*config.center_radec)
    else:
        center = config.center
    cropped = obs.crop(center, size)
    if cropped is not obs:
        note = Note(NoteKind.MODELLED, _modelled_text(obs, cropped))
        cropped = replace(cropped, notes=(*cropped.notes, note))
    return cropped, grid_factor


#: start of the note that says which input pixels an explicitly centered cutout modelled
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


def modelled_region(obs: Observation) -> str | None:
    """The note of :func:`fit_to_prior` on the input pixels a centered cutout modelled."""
    return next((n.text for n in obs.notes if n.kind is NoteKind.MODELLED), None)


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
        Torch device for the sampler; with ``config.precision`` it decides the networks'
        precision (:func:`~galprism.separate.config.resolve_precision`).

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
    flux_scale = float(prior.frame.flux_scale)
    extra: list[list[Box]] = [[] for _ in observations]
    searched = range(len(results))  # later rounds: only the redrawn cutouts have a new residual
    for _ in range(config.freeform.rounds):
        redo = []
        for i in searched:
            res = results[i]
            obs, flux_factor = res.observation, res.flux_factors[:, None, None]
            found = find_residual_boxes(
                (obs.image - res.model) * flux_factor,
                obs.variance * flux_factor**2,
                obs.valid,
                obs.psf,
                res.boxes,
                config.freeform,
                flux_scale,
                res.grid_factor,
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
    return prior.capabilities.freeform


def _on_device(
    operators: Sequence[LinearOperator], device: str, dtype: torch.dtype
) -> list[LinearOperator]:
    """The free-form whitening operators with their tensors moved once to the sampler's
    device and dtype.

    They hold float64 host tensors (the free-form model is built in float64), and every
    application would otherwise copy them to the sampler's dtype and device: a basis of
    pixels x box pixels per cutout and sample, copied at each product of every step (a
    host-to-device transfer on a GPU, and tens of MB of transient copies per batch). The
    values are those each application's conversion gave, so the samples do not change.
    """
    moved: list[LinearOperator] = []
    for op in operators:
        if isinstance(op, LowRankUpdate):
            moved.append(
                LowRankUpdate(
                    op.basis.to(device=device, dtype=dtype),
                    op.gains.to(device=device, dtype=dtype),
                    op.in_shape,
                )
            )
        elif isinstance(op, Weight):
            moved.append(Weight(op.weights.to(device=device, dtype=dtype), op.in_shape))
        else:
            moved.append(op)
    return moved


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
    batch = stack_observations(observations, prior.frame)
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    freeform = None
    if config.freeform.enabled and _freeform_applies(prior):
        psfs = [o.prior_grid_psf(batch.grid_factor) for o in observations]
        freeform = build_freeform(
            batch.y,
            batch.noise_var,
            batch.valid,
            psfs,
            (len(batch.band_index), *prior.frame.shape[1:]),
            batch.grid_factor,
            float(prior.frame.flux_scale),
            config.freeform,
            extra=extra_boxes,
        )
    y, noise_var, whitening = batch.y, batch.noise_var, []
    if freeform is not None:
        y, noise_var = freeform.whiten(batch.y.to(torch.float64))
        y, noise_var = y.to(batch.y.dtype), noise_var.to(batch.y.dtype)
        whitening = _on_device(freeform.whitening(), device, y.dtype)

    # Normalised sources are scaled by an amplitude measured on each cutout's own data.
    amplitudes = {
        name: spec.measure(batch.y, batch.noise_var, batch.valid, grid_factor=batch.grid_factor)
        for name, spec in getattr(prior, "amplitude", {}).items()
    }

    def operator_for(masks: Mapping[str, torch.Tensor]) -> SourceSum:
        return batch.operator_for(
            prior.sources,
            supports=masks,
            whitening=whitening,
            psf_included=prior.capabilities.psf_included,
            amplitudes=amplitudes,
        )

    # Only the networks change precision; the samples come back in y's dtype.
    precision = resolve_precision(config.precision, device, config.sampler.jacobian)
    with network_precision(prior, precision, device):
        supports, radii = resolve_support_masks(
            effective_support(prior, config),
            prior,
            y,
            noise_var,
            operator_for,
            seeds,
            sampler=config.sampler,
            device=device,
        )
        operator = operator_for(supports)
        samples = prior.separate(
            y, noise_var, operator, config.sampler, generators=generators, device=device
        )
    b, k = len(observations), len(prior.sources)
    shape = tuple(samples.shape)
    if len(shape) != 6 or shape[0] != b or shape[2] != k or shape[3:] != tuple(prior.frame.shape):
        raise ShapeError(
            f"prior {prior.name!r} returned samples of shape {shape}, expected "
            f"({b}, n_samples, {k}, {', '.join(map(str, prior.frame.shape))})"
        )
    x = samples.detach().to("cpu", torch.float64)
    x = zero_outside_supports(x, prior.sources, supports)
    for name, a in amplitudes.items():
        x[:, :, prior.sources.index(name)] *= a.reshape(b, 1, *([1] * (x.ndim - 3)))
    if not torch.isfinite(x).all():
        raise GalprismError(f"prior {prior.name!r}: the sampler returned non-finite values")
    ff_images = None
    # Each sample's predicted data (B, n, C, h, w) in prior units: the model is their mean,
    # and each one's residual is the posterior-predictive check of that sample.
    n_s = x.shape[1]
    rows = torch.arange(b).repeat_interleave(n_s)
    light = (
        batch.model_operator(psf_included=prior.capabilities.psf_included)
        .take(rows)
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
        factors = batch.flux_factors[i].numpy()
        flux_factor = factors[:, None, None]
        sources = _source_factors(factors, batch.band_index, int(prior.frame.shape[0]))
        model = predicted[i].numpy() / flux_factor
        sigma = np.sqrt(obs.variance)
        resid = np.where(obs.valid, (obs.image - model) / sigma, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):  # sigma may be 0 or inf where masked
            per_sample = (obs.image[None] - light[i].numpy() / flux_factor) / sigma[None]
        chi2_samples = np.mean(per_sample[:, obs.valid] ** 2, axis=1)
        results.append(
            SeparationResult(
                observation=obs,
                sources=list(prior.sources),
                samples=(x[i].numpy() / sources[:, None, None]).astype(np.float32),
                model=model,
                resid=resid,
                chi2_samples=chi2_samples,
                seed=int(seeds[i]),
                grid_factor=batch.grid_factor,
                flux_factors=factors,
                band_index=batch.band_index,
                source_factors=sources,
                zeropoint_assumed=obs.zeropoints is None and zp is not None,
                support_radii={name: r[i] for name, r in radii.items()},
                freeform=None
                if ff_images is None or not freeform.boxes[i]
                else (ff_images[i].numpy() / flux_factor).astype(np.float32),
                boxes=[] if freeform is None else list(freeform.boxes[i]),
            )
        )
    return results


def _source_factors(factors: np.ndarray, index: Sequence[int], n_bands: int) -> np.ndarray:
    """``(C,)`` per prior band: the observed band's flux factor; for a band not observed, the
    factor the observed bands share, else 1 (the prior's own units)."""
    common = float(factors[0]) if np.ptp(factors) == 0 else 1.0
    out = np.full(n_bands, common)
    out[list(index)] = factors
    return out

"""One result as a FITS file: header cards, HDU list and the atomic write."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..io.write import image_hdu, primary_hdu, source_hdus, write_atomic
from ..observation import Observation
from ..support import (
    Support,
)
from .config import SeparateConfig, resolve_precision
from .inference import MODELLED, SeparationResult, modelled_region
from .prior import Separator, effective_support, prior_zeropoint

__all__ = ["build_hdulist", "output_zeropoints", "write_result"]


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
            n == 1 and not prior.capabilities.posterior_samples,
            "single point estimate, no posterior spread",
        ),
        "PSFINCL": (
            prior.capabilities.psf_included,
            "source images include the PSF (asvd bases)",
        ),
        "NSTEPS": (int(config.sampler.steps), "sampler steps"),
        "NCGITER": (int(config.sampler.cg_iterations), "conjugate-gradient iterations per step"),
        "TRUST": (float(config.sampler.trust), "MMPS trust radius (0 = off)"),
        "SAMPLER": (config.sampler.method, "posterior sampler"),
        "JACOBIAN": (config.sampler.jacobian, "network Jacobian products: vjp or difference"),
        "RHO": (float(config.sampler.rho), "step spacing: 0 log-uniform, else Karras rho"),
        "NPARTIC": (int(config.sampler.particles), "chains per sample (smc sampler only)"),
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
        "RUNSEED": (int(config.seed), "run seed"),
        "DEVICE": (device, "torch device"),
        "PRECISN": (
            resolve_precision(config.precision, device, config.sampler.jacobian),
            "diffusion networks' arithmetic",
        ),
        "INFILE": (obs.name, "input file"),
        "INSHA256": (obs.checksum, ""),
        "CROPX0": (int(obs.origin[0]), "input pixel x (0-based) of output pixel 0"),
        "CROPY0": (int(obs.origin[1]), "input pixel y (0-based) of output pixel 0"),
        "MODELLED": (
            _modelled_card(obs),
            "input pixels modelled (0-based, inclusive)",
        ),
        "GRIDFAC": (int(result.grid_factor), "cutout pixel / prior pixel (downsampling)"),
        "PIXSCALE": (obs.pixel_scale, "[arcsec] cutout pixel scale"),
        "ZPINPUT": (obs.zeropoint, "AB zero point of the input (and outputs)"),
        "ZPPRIOR": (zp_prior, "AB zero point of the prior"),
        "ZPASSUME": (bool(result.zeropoint_assumed), "input zero point unknown, prior's assumed"),
    }
    if prior.frame.bands is not None:
        cards["PBANDS"] = (",".join(prior.frame.bands), "bands of the prior (source HDUs)")
    if obs.bands is not None:
        cards["BANDS"] = (",".join(obs.bands), "bands of the input (MODEL, RESID)")
    factors = result.flux_factors
    if np.ptp(factors) == 0:
        cards["FLUXFAC"] = (float(factors[0]), "input units -> prior units")
    else:
        for i, f in enumerate(factors):
            cards[f"FLUXFAC{i + 1}"] = (float(f), f"input band {i} units -> prior units")
    if obs.band_zeropoints is not None:
        for i, z in enumerate(obs.band_zeropoints):
            cards[f"ZPINPUT{i + 1}"] = (z, f"AB zero point of input band {i}")
    return cards


def _zeropoint_cards(zeropoints: list[float | None]) -> dict[str, tuple[Any, str]]:
    """``MAGZERO`` when every band has the same zero point, else ``MAGZERO1``.. per band."""
    if len(set(zeropoints)) == 1:
        return {"MAGZERO": (zeropoints[0], "AB zero point of the values")}
    return {
        f"MAGZERO{i + 1}": (z, f"AB zero point of band {i}")
        for i, z in enumerate(zeropoints)
        if z is not None
    }


def _band_cards(bands: tuple[str, ...] | None, n_bands: int) -> dict[str, tuple[Any, str]]:
    if bands is None or n_bands < 2:
        return {}
    return {"BANDS": (",".join(bands), "band names, in BAND axis order")}


def output_zeropoints(
    result: SeparationResult, prior: Separator
) -> tuple[list[float | None], list[float | None]]:
    """AB zero points of the output values: per prior band (sources), per input band (MODEL).

    An input band's is the input's (the prior's when it had none and it was assumed); a
    prior band the input lacks has the input bands' common zero point, else the prior's
    (as :class:`~galprism.separate.inference.SeparationResult` converts its samples).
    """
    obs = result.observation
    zp_prior = prior_zeropoint(prior)
    zps: tuple[float, ...] | None = obs.zeropoints
    if zps is None and result.zeropoint_assumed and zp_prior is not None:
        zps = (zp_prior,) * obs.n_bands
    observed: list[float | None] = list(zps) if zps is not None else [None] * obs.n_bands
    common = observed[0] if len(set(observed)) == 1 else zp_prior
    per_source: list[float | None] = [common] * int(prior.frame.shape[0])
    for j, b in enumerate(result.band_index):
        per_source[b] = observed[j]
    return per_source, observed


def _modelled_card(obs: Observation) -> str:
    text = modelled_region(obs)
    if text is None:
        return "whole input"
    return text.removeprefix(MODELLED).replace(" (0-based) of the ", " of ").strip()


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
        primary.header.add_comment(note.text)
    bunit = obs.bunit or (prior.frame.bunit if result.zeropoint_assumed else None)
    source_zps, input_zps = output_zeropoints(result, prior)
    n_prior = int(prior.frame.shape[0])
    extra = {**_zeropoint_cards(source_zps), **_band_cards(prior.frame.bands, n_prior)}
    input_extra = {**_zeropoint_cards(input_zps), **_band_cards(obs.bands, obs.n_bands)}
    fine_wcs = obs.prior_grid_wcs(result.grid_factor)
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
            **input_extra,
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
            model,
            "MODEL",
            wcs=obs.wcs,
            bunit=bunit,
            leading=leading,
            cards=input_extra,
            cache=cache,
        )
    )
    resid_cards = {
        "RESIDDEF": ("(data - MODEL) / sigma", "NaN at masked pixels"),
        **_band_cards(obs.bands, obs.n_bands),
    }
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

"""``galprism sample``: draws from a prior's sources written as FITS cubes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from astropy.io import fits

from .. import __version__
from ..errors import ConfigError, ShapeError
from .inputs import derive_seed
from .write import image_hdu, primary_hdu

__all__ = ["prior_samples_hdulist", "select_sources"]


def select_sources(prior: Any, sources: Sequence[str] | None) -> list[str]:
    """The prior's names of the requested sources (all of them when none is requested).

    Parameters
    ----------
    prior
        A :class:`galprism.priorset.PriorSet` (``name``, ``sources``).
    sources
        Source names, case-insensitive; None or empty for every source.

    Returns
    -------
    list of str
        The names as the prior spells them, in the requested order.

    Raises
    ------
    ConfigError
        If a requested source is not one of the prior's.
    """
    known = {s.lower(): s for s in prior.sources}
    if not sources:
        return list(prior.sources)
    wanted = []
    for s in sources:
        if s.lower() not in known:
            raise ConfigError(
                f"prior {prior.name!r} has no source {s!r} (sources: {', '.join(prior.sources)})"
            )
        wanted.append(known[s.lower()])
    return wanted


def prior_samples_hdulist(
    prior: Any,
    *,
    n: int,
    steps: int,
    seed: int,
    sources: Sequence[str] | None = None,
    sampler: str = "pc",
    device: str = "cpu",
    command_line: str | None = None,
) -> tuple[fits.HDUList, dict[str, dict[str, Any]]]:
    """Sample ``n`` images of each requested source of a prior.

    Parameters
    ----------
    prior
        A :class:`galprism.priorset.PriorSet` (``sample_prior``, ``sources``, ``shape``...).
    n
        Samples per source.
    steps
        Sampler steps.
    seed
        Run seed; source ``s`` uses ``sha256(f"{seed}:{s}")`` (recorded as ``SEED``).
    sources
        Sources to sample (default all), by name, case-insensitive.
    sampler
        Sampler method of the prior (``"pc"``, ``"ddim"``, ``"heun"``).
    device
        Torch device.
    command_line
        Recorded in ``HISTORY``.

    Returns
    -------
    hdul, summary
        The FITS layout (primary provenance, then one ``<SOURCE>`` cube per source of
        shape ``(n, ny, nx)`` or ``(n, C, ny, nx)`` in the prior's flux units) and, per
        source, its seed and the mean/std over samples of the total flux per band.

    Raises
    ------
    ConfigError
        If a requested source is not one of the prior's, or ``n`` < 1.
    ShapeError
        If the prior returns samples of another shape than ``(n, C, H, W)``.
    """
    if n < 1:
        raise ConfigError(f"sample count must be at least 1, got {n}")
    wanted = select_sources(prior, sources)
    cards = {
        "GPVERS": (__version__, "galprism version"),
        "PRIOR": (prior.name, "prior name"),
        "PRIORSHA": (prior.sha256, ""),
        "METHOD": (prior.method, "method of the prior"),
        "SOURCES": (",".join(wanted), "sources, in HDU order"),
        "NSAMPLE": (int(n), "samples per source"),
        "NSTEPS": (int(steps), "sampler steps"),
        "SAMPLER": (sampler, "sampler"),
        "RUNSEED": (int(seed), "run seed"),
        "DEVICE": (device, "torch device"),
        "PIXSCALE": (prior.frame.pixel_scale, "[arcsec] pixel scale of the prior grid"),
    }
    hdus: list = [
        primary_hdu(cards, [f"galprism {__version__}: {command_line}"] if command_line else [])
    ]
    summary: dict[str, dict[str, Any]] = {}
    for name in wanted:
        s_seed = derive_seed(seed, name)
        gen = torch.Generator(device=device).manual_seed(s_seed)
        t0 = time.perf_counter()
        x = prior.sample_prior(name, n, steps=steps, sampler=sampler, generator=gen, device=device)
        x = x.detach().to("cpu", torch.float64).numpy()
        seconds = time.perf_counter() - t0
        if x.ndim != 4 or x.shape[0] != n:
            raise ShapeError(
                f"prior {prior.name!r} returned samples of shape {x.shape} for {name!r}, "
                f"expected ({n}, C, H, W)"
            )
        data = x if x.shape[1] > 1 else x[:, 0]
        leading = ("SAMPLE", "BAND") if x.shape[1] > 1 else ("SAMPLE",)
        extra = {
            "SOURCE": (name, "source of the prior"),
            "SEED": (s_seed, "seed of this source: sha256(RUNSEED:source)"),
            "MAGZERO": (prior.frame.zeropoint, "AB zero point of the values"),
        }
        if prior.frame.bands is not None and x.shape[1] > 1:
            extra["BANDS"] = (",".join(prior.frame.bands), "band of each plane of the BAND axis")
        hdus.append(
            image_hdu(
                data, name.upper(), wcs=None, bunit=prior.frame.bunit, leading=leading, cards=extra
            )
        )
        totals = x.sum(axis=(-2, -1))
        summary[name] = {
            "seed": s_seed,
            "seconds": round(seconds, 4),
            "flux_mean": [float(v) for v in totals.mean(axis=0)],
            "flux_std": [
                float(v) for v in (totals.std(axis=0, ddof=1) if n > 1 else np.zeros(x.shape[1]))
            ],
        }
    return fits.HDUList(hdus), summary

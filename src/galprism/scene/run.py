"""``galprism separate --scene``: every source of an image, blend by blend.

For each input (:func:`run_scene`):

1. read the image; take its sources from a catalogue (:func:`~galprism.scene.read_catalog`)
   or detect them (:func:`~galprism.scene.detect`, each detection classified as a star or
   a galaxy by :func:`~galprism.scene.star_or_galaxy`);
2. group the sources into blends (:func:`~galprism.scene.group_blends`); each blend's box
   covers its members' footprints and the prior's footprint around each, and the part of
   a box beyond the image is kept as masked pixels, so nothing is cropped;
3. for each blend, crop the image, noise, mask and PSF to its box, build the joint model
   (:func:`~galprism.scene.model.build_blend_model`: each galaxy a draw of the galaxy prior
   at its position and flux scale, stars and a background integrated out) and draw its
   joint posterior (:func:`~galprism.scene.model.sample_blend`);
4. write one FITS file with the catalogue (``CATALOG``), each source's posterior mean and
   standard deviation stamp (``STAMPS``), the scene's ``MODEL``, ``BACKGROUND``,
   normalised residual ``RESID`` and flux-conserving ``CHILDREN``, and the catalogue as
   ECSV beside it, both atomically.

Blends are modelled independently: the light of a source of one blend that reaches into
another blend's box is not in that blend's model.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import torch
from astropy.io import fits
from astropy.table import Column, Table
from scipy.stats import t as student_t

from .. import __version__
from ..amplitude import Amplitude
from ..errors import ConfigError, GalprismError, InputError, OutputExistsError, ShapeError
from ..io.hdf5 import write_hdf5
from ..io.inputs import cutout_seed, derive_seed, in_shard, output_path
from ..io.read import _sidecar_path, read_cutout
from ..io.write import image_hdu, primary_hdu, write_atomic
from ..observation import Observation
from ..separate.config import SeparateConfig
from ..separate.runner import InputRecord, RunSummary, RunWarnings, _error_text
from .blends import Blend, group_blends
from .catalog import (
    _find,
    _read_table,
    catalog_hdu,
    catalog_path_for,
    normalize_catalog,
    write_catalog,
)
from .classify import star_or_galaxy
from .detect import _background, detect
from .joint import ViewBox, build_joint_model, sample_joint
from .model import build_blend_model, flux_scales, sample_blend, typical_flux
from .placement import PlaceStamp, StarOperator
from .views import MODEL_FWHM, MatchedView, crop_padded, match_view, model_kernel

__all__ = [
    "SceneResult",
    "ViewResult",
    "galaxy_prior",
    "separate_scene",
    "write_scene",
    "run_scene",
    "flux_bound",
]

#: quantiles of each source's flux written to the catalogue (column suffix, level)
QUANTILES = (("q025", 0.025), ("q16", 0.16), ("q84", 0.84), ("q975", 0.975))


def flux_bound(fluxes: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` bound of each source's flux interval from its ``S`` posterior draws,
    ``fluxes`` ``(N, S, ...)``: ``mean + t_{S-1}(q) std sqrt(1 + 1/S)``.

    The truth of a calibrated posterior is one more draw of it, and this is the interval
    that covers one more draw of a normal distribution known only through ``S`` draws
    with probability exactly ``q`` (the prediction interval). The draws' own quantiles do
    not: with 8 draws their 16-84 % and 2.5-97.5 % ranges cover another draw 53 % and
    75 % of the time. With one draw the bound is the draw.
    """
    n = fluxes.shape[1]
    mean = fluxes.mean(1)
    if n < 2:
        return mean
    spread = fluxes.std(1, ddof=1) * math.sqrt(1.0 + 1.0 / n)
    return mean + float(student_t.ppf(q, n - 1)) * spread


#: XORed into a blend's seed for the draws of its stars and background
LINEAR_SALT = 0x5CE7E
#: A galaxy brighter than this quantile of the galaxy prior's draws' fluxes is shown to
#: the prior at that flux (its flux scale s > 1). Measured on 20 simulated scenes (74
#: matched sources; docs/evaluation.md, "Scenes"): the median gave median abs flux error
#: 0.12 and 66 % / 85 % interval coverage, the 0.8 quantile 0.16 and 43 % / 66 %, the 0.95
#: quantile 0.22 and 26 % / 38 % (galaxies shown to the prior among its brightest draws are
#: pulled fainter); only galaxies 100x brighter than the training set favour the upper
#: quantiles (+10 % to +21 % at the median, -3 % to +8 % at 0.8, -7 % to -2 % at 0.95).
SCALE_QUANTILE = 0.5

#: Pixels of the image around each blend's galaxy stamps (``group_blends(border=...)``):
#: where no stamp reaches, the background is seen alone. Without them a blend's box is a
#: stamp, and the background's constant and a galaxy's faint outskirts trade light freely:
#: three test galaxies 100x brighter than the training set came out +9 %, +19 %, +12 %
#: too bright with the background at -18 to -35 sigma per pixel; with 8 pixels,
#: +7 %, +4 %, +3 % (normalised prior: -1 %, 0 %, +1 %).
BACKGROUND_BORDER = 8


def galaxy_prior(prior: Any) -> tuple[torch.nn.Module, Any]:
    """The galaxy source's prior module of a prior set, and its frame.

    Raises
    ------
    ConfigError
        If the prior has no ``galaxy`` source with a prior module on an image grid.
    """
    sources = list(prior.sources)
    if "galaxy" not in sources or not prior.capabilities.posterior_samples:
        raise ConfigError(
            f"prior {prior.name!r}: scene mode needs a prior with a 'galaxy' source it can "
            f"draw posterior samples from; it has {sources} ({prior.method})"
        )
    if not prior.frame.is_image:
        raise ConfigError(f"prior {prior.name!r}: its grid {prior.frame.shape} is not an image")
    return prior.priors[sources.index("galaxy")], prior.frame


@dataclass(eq=False)
class ViewResult:
    """A further view's posterior-mean model on the model frame, in the view's units.

    Attributes
    ----------
    matched
        The view brought to the model frame (:func:`~galprism.scene.views.match_view`).
    model, background
        ``(C_v, H f, W f)`` posterior mean of the whole model and of its background.
    """

    matched: MatchedView
    model: np.ndarray
    background: np.ndarray

    @property
    def resid(self) -> np.ndarray:
        """``(data - model) / sigma`` against the noise bound, NaN where not valid."""
        m = self.matched
        return np.where(m.valid, (m.image - self.model) / np.sqrt(m.variance), np.nan)

    @property
    def chi2(self) -> float:
        """Mean squared :attr:`resid` over valid pixels (pure noise gives
        ``matched.noise_chi2``, not 1: the bound exceeds the noise)."""
        r = self.resid[self.matched.valid]
        return float(np.mean(r**2))


@dataclass(eq=False)
class SceneResult:
    """Everything :func:`write_scene` writes for one image, in the image's units.

    Attributes
    ----------
    observation
        The whole image.
    catalog
        One row per source (see :func:`separate_scene`).
    stamps
        ``(N, 2, C, sh, sw)`` each source's light on the image's pixels: posterior mean
        and standard deviation, in a window whose first pixel is the catalogue's
        ``stamp_x0``, ``stamp_y0``.
    model, background
        ``(C, H, W)`` posterior mean of the whole model and of its background.
    children
        ``(N, C, bh, bw)`` ``(data - background) * model_k / sum_j model_j`` in each
        source's blend box, whose first pixel is the catalogue's ``child_x0``, ``child_y0``
        (all windows of the largest box's size, zero beyond a source's own box).
    blends
        The blends, in order.
    seed
        The image's seed.
    device, precision
        Where and in what arithmetic the galaxy networks ran.
    views
        The further views jointly modelled, in order (none for one image).
    frame_sources
        ``(C, H f, W f)`` the sources' posterior mean on the model frame without the
        image's PSF, at the prior's resolution (stars as its kernel), image units; None
        when no pixel scale is known.
    flux_samples
        ``(N, S, C)`` each source's flux in each posterior sample (catalogue order).
    samples
        ``(N, S, C, sh, sw)`` each source's light in each posterior sample, in the
        window of :attr:`stamps`.
    """

    observation: Observation
    catalog: Table
    stamps: np.ndarray
    model: np.ndarray
    background: np.ndarray
    children: np.ndarray
    blends: list[Blend]
    seed: int
    device: str = "cpu"
    precision: str = "float32"
    views: list[ViewResult] = field(default_factory=list)
    frame_sources: np.ndarray | None = None
    flux_samples: np.ndarray | None = None
    samples: np.ndarray | None = None

    @property
    def resid(self) -> np.ndarray:
        """``(data - model) / sigma``, NaN at masked pixels."""
        obs = self.observation
        return np.where(obs.valid, (obs.image - self.model) / np.sqrt(obs.variance), np.nan)

    @property
    def chi2(self) -> float:
        """Mean squared :attr:`resid` over valid pixels."""
        r = self.resid[self.observation.valid]
        return float(np.mean(r**2))


def _sources(
    obs: Observation, catalog: str | None, warnings: RunWarnings | None
) -> tuple[Table, bool]:
    """The image's sources and whether they were detected (not read from a catalogue).

    Detected sources, and those of a catalogue without a ``kind`` column, are classified
    by :func:`~galprism.scene.star_or_galaxy` on the background-subtracted image.
    """
    if catalog is not None:
        path = Path(_sidecar_path(catalog, obs.name))
        raw = _read_table(path)
        table = normalize_catalog(raw, str(path), shape=obs.shape, wcs=obs.wcs)
        if _find(raw, "kind") is not None:
            return table, False
        background = _background(obs.image, obs.valid, None, obs.name)
    else:
        found = detect(obs.image, obs.variance, obs.valid, wcs=obs.wcs, name=obs.name)
        if len(found) == 0:
            raise InputError(f"{obs.name}: no source detected")
        table, background = found.table.copy(), found.background
    data = obs.image - background
    xy = np.stack([np.asarray(table["x"], float), np.asarray(table["y"], float)], axis=1)
    _, h, w = obs.shape
    r = max(obs.psf.shape[-2:]) // 2
    kinds = []
    for k, (x, y) in enumerate(xy):
        # The PSF-sized window around the source, with the pixels nearer another source
        # left out: a neighbour's core must not make a star look extended (its smooth
        # wings go to the fit's local background).
        y0, y1 = max(int(round(y)) - r, 0), min(int(round(y)) + r + 1, h)
        x0, x1 = max(int(round(x)) - r, 0), min(int(round(x)) + r + 1, w)
        near = np.flatnonzero(np.abs(xy - (x, y)).max(1) <= 2 * r + 1)
        owner = _nearest_member((y1 - y0, x1 - x0), xy[near] - (x0, y0))
        valid = obs.valid[..., y0:y1, x0:x1] & (near[owner] == k)
        fit = star_or_galaxy(
            data[..., y0:y1, x0:x1],
            np.broadcast_to(obs.variance, obs.shape)[..., y0:y1, x0:x1],
            obs.psf,
            (float(x) - x0, float(y) - y0),
            valid=valid,
            name=obs.name,
        )
        kinds.append(fit.kind)
        if fit.kind == "star" and catalog is None:
            # A detection's centroid is refined to the PSF fit's position; a catalogue's
            # positions are the user's and stay as given.
            table["x"][k] = fit.position[0] + x0
            table["y"][k] = fit.position[1] + y0
    table["kind"] = Column(np.array(kinds, dtype="<U6"), description="galaxy or star")
    if catalog is None and "ra" in table.colnames and obs.wcs is not None:
        ra, dec = obs.wcs.celestial.pixel_to_world_values(table["x"], table["y"])
        table["ra"][:], table["dec"][:] = ra, dec
    return table, catalog is None


def _nearest_member(shape: tuple[int, int], positions: np.ndarray) -> np.ndarray:
    """``(H, W)`` index of the nearest of ``positions`` ``(n, 2)`` to each pixel."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    dx = xx[None] - positions[:, 0, None, None]
    dy = yy[None] - positions[:, 1, None, None]
    return (dx * dx + dy * dy).argmin(0)


def _mask_neighbours(box: Observation, positions: np.ndarray, rows: np.ndarray) -> Observation:
    """``box`` with the pixels nearer a source outside the blend than to any member
    masked: a blend's box reaches past its members' stamps (its border), and a
    neighbour's light there belongs to no source of this blend.

    ``positions`` ``(n, 2)`` are every source's, in the box's pixels; ``rows`` the
    members'.
    """
    _, h, w = box.shape
    inside = np.flatnonzero(
        (positions[:, 0] > -0.5 * w)
        & (positions[:, 0] < 1.5 * w)
        & (positions[:, 1] > -0.5 * h)
        & (positions[:, 1] < 1.5 * h)
    )
    others = np.setdiff1d(inside, rows)
    if others.size == 0:
        return box
    near = np.concatenate([rows, others])
    owner = _nearest_member((h, w), positions[near])
    theirs = owner >= len(rows)
    if theirs.all():
        return box
    return replace(box, valid=box.valid & ~theirs)


def _measured_fluxes(
    box: Observation, positions: np.ndarray, radius: float, weights: np.ndarray | None = None
) -> np.ndarray:
    """Each source's sum of valid data within ``radius`` pixels, pixels nearer another
    member going to that member (image units, all bands, each times its ``weights``)."""
    _, h, w = box.shape
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(xx[None] - positions[:, 0, None, None], yy[None] - positions[:, 1, None, None])
    nearest = d.argmin(0)
    image = box.image if weights is None else box.image * weights[:, None, None]
    data = np.where(box.valid, image, 0.0).sum(0)
    return np.array(
        [float(data[(nearest == k) & (d[k] <= radius)].sum()) for k in range(len(positions))]
    )


def _amplitudes(
    box: Observation,
    positions: np.ndarray,
    galaxies: np.ndarray,
    norm: np.ndarray,
    amplitude: Amplitude,
    grid_factor: int,
) -> np.ndarray:
    """The amplitude of each galaxy of a blend (:mod:`galprism.amplitude`), in the prior's
    normalised units: its aperture on the box, pixels nearer another member (star or
    galaxy) going to that member."""
    owner = _nearest_member(box.shape[1:], positions)
    owned = torch.from_numpy(owner[None] == np.arange(len(positions))[:, None, None])
    k = norm[:, None, None]
    image = torch.from_numpy(box.image * k)[None].expand(len(positions), -1, -1, -1)
    var = torch.from_numpy(np.broadcast_to(box.variance, box.image.shape) * k**2)[None]
    valid = torch.from_numpy(np.broadcast_to(box.valid, box.image.shape).copy())[None]
    a = amplitude.measure(
        image,
        var.expand_as(image),
        valid.expand_as(image),
        torch.from_numpy(positions),
        grid_factor=grid_factor,
        owned=owned,
    )
    return a.numpy()[galaxies]


def _table_fluxes(
    table: Table, rows: tuple[int, ...], n_bands: int | None = None
) -> np.ndarray | None:
    """The catalogue's ``flux`` of ``rows`` summed over bands, or ``(rows, n_bands)`` per
    band when ``n_bands`` is given (None when the column has another number of bands)."""
    if "flux" not in table.colnames:
        return None
    values = np.ma.filled(np.ma.asarray(table["flux"], dtype=np.float64), np.nan)
    values = values.reshape(len(table), -1)
    if n_bands is None:
        return values.sum(1)[list(rows)]
    return values[list(rows)] if values.shape[1] == n_bands else None


def separate_scene(
    obs: Observation,
    prior: Any,
    config: SeparateConfig,
    seed: int,
    *,
    catalog: str | None = None,
    warnings: RunWarnings | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    views: Sequence[Observation] = (),
) -> SceneResult:
    """Separate every source of one image (steps 1 to 3 of the module docstring).

    Parameters
    ----------
    obs
        The whole image.
    prior
        A prior set with a ``galaxy`` source (:func:`galaxy_prior`).
    config
        Sampler settings (``config.sampler``).
    seed
        The image's seed; each blend's derives from it and the blend's index.
    catalog
        Catalogue file (``{stem}``, ``{name}``, ``{dir}`` templates allowed), or None to
        detect the sources.
    log
        Called with one line per blend.
    views
        Further images of the same sky, modelled jointly with ``obs``: one posterior of
        every blend over all of them (:mod:`~galprism.scene.views`,
        :mod:`~galprism.scene.joint`). Sources are detected on ``obs`` (or read from the
        catalogue) and catalogue fluxes are in ``obs``'s units.

    Raises
    ------
    GalprismError
        One line naming the file and the problem (a bad catalogue row, no source...).
    """
    # Imported here: galprism.separate imports this module.
    from ..separate.config import resolve_precision
    from ..separate.precision import network_precision

    module, frame = galaxy_prior(prior)
    # Only the galaxy network changes precision, as for cutouts; the flux-scale reference
    # below is drawn in float32 so that it does not depend on the device's precision.
    precision = resolve_precision(config.precision, device, config.sampler.jacobian)
    _, ph, pw = frame.shape
    c = obs.n_bands
    index = list(obs.band_index(frame, f"prior {prior.name!r}"))
    f = obs.grid_factor(frame.pixel_scale)
    if ph % f or pw % f:
        raise ShapeError(f"{obs.name}: prior grid {ph}x{pw} is not divisible by {f}")
    footprint = (ph // f, pw // f)
    matched = [match_view(obs, v, frame) for v in views]
    table, _ = _sources(obs, catalog, warnings)
    blends = group_blends(table, obs.shape, footprint, border=BACKGROUND_BORDER)
    # A normalised galaxy prior is scaled by each galaxy's amplitude, measured as when it
    # was learned; an unnormalised one shows a bright galaxy scaled to a typical draw.
    amplitude = getattr(prior, "amplitude", {}).get("galaxy")
    typical = (
        typical_flux(module, device=device, quantile=SCALE_QUANTILE) if amplitude is None else 1.0
    )
    _, h, w = obs.shape
    n = len(table)
    n_s = config.sampler.n_samples
    sh, sw = footprint
    stamps = np.zeros((n, 2, c, sh, sw))
    stamp_samples = np.zeros((n, n_s, c, sh, sw), dtype=np.float32)
    origins = np.zeros((n, 2), dtype=np.int64)
    fluxes = np.zeros((n, n_s, c))
    # Each source's posterior-mean light inside its blend's box (clipped to the image):
    # memory grows with the boxes, not with sources x image pixels.
    light_box: list[tuple[int, int, np.ndarray]] = [(0, 0, np.zeros((c, 0, 0)))] * n
    sources = np.zeros((c, h, w))
    bkg_sum = np.zeros((c, h, w))
    cover = np.zeros((h, w))
    chi2 = np.zeros(n)
    share = np.zeros(n)
    stamp_frac = np.full(n, np.nan)
    blend_of = np.zeros(n, dtype=np.int64)
    fine = (h * f, w * f)
    # Without a pixel scale the model kernel has no size in pixels: no frame sources.
    scale = obs.pixel_scale if obs.pixel_scale is not None else frame.pixel_scale
    frame_sources = np.zeros((c, *fine)) if scale else None
    kernel_fwhm = MODEL_FWHM / (scale / f) if scale else math.nan
    view_sum = [np.zeros((m.n_bands, *fine)) for m in matched]
    view_bkg = [np.zeros((m.n_bands, *fine)) for m in matched]
    view_cover = np.zeros(fine)
    kinds = np.asarray(table["kind"]).astype(str)
    xy = np.stack([np.asarray(table["x"], float), np.asarray(table["y"], float)], axis=1)
    for blend in blends:
        t0 = time.perf_counter()
        y0, y1, x0, x1 = blend.requested
        ny, nx = y1 - y0, x1 - x0
        box = obs.crop((x0 + nx // 2, y0 + ny // 2), (ny, nx))
        bx0, by0 = box.origin[0] - obs.origin[0], box.origin[1] - obs.origin[1]
        rows = np.asarray(blend.rows)
        box = _mask_neighbours(box, xy - np.array([bx0, by0], dtype=np.float64), rows)
        pos = xy[rows] - np.array([bx0, by0], dtype=np.float64)
        is_star = kinds[rows] == "star"
        gal_rows, star_rows = rows[~is_star], rows[is_star]
        norm = box.flux_factors_to(frame.ab_zeropoint) / frame.flux_scale
        if amplitude is not None:
            scales = _amplitudes(box, pos, ~is_star, norm, amplitude, f)
        elif np.ptp(norm) == 0:
            measured = _table_fluxes(table, tuple(gal_rows.tolist()))
            if measured is None or not np.isfinite(measured).all():
                measured = _measured_fluxes(box, pos, min(sh, sw) / 2.0)[~is_star]
            scales = flux_scales(measured * norm[0], typical)
        else:  # bands on different zero points: each band's flux normalised by its own
            per_band = _table_fluxes(table, tuple(gal_rows.tolist()), c)
            if per_band is None or not np.isfinite(per_band).all():
                per_band = _measured_fluxes(box, pos, min(sh, sw) / 2.0, norm)[~is_star]
            else:
                per_band = per_band @ norm
            scales = flux_scales(per_band, typical)
        bseed = derive_seed(seed, f"blend {blend.index}")
        gens = (
            torch.Generator(device=device).manual_seed(bseed),
            torch.Generator().manual_seed(bseed ^ LINEAR_SALT),
        )
        if matched:
            windows = [_view_window(m, bx0 * f, by0 * f, ny * f, nx * f) for m in matched]
            model = build_joint_model(box, windows, frame, pos[~is_star], scales, pos[is_star])
            with network_precision(prior, precision, device):
                per_view = sample_joint(model, module, config.sampler, *gens, device=device)
            draws = per_view[0]
            _add_views(per_view[1:], matched, view_sum, view_bkg, bx0 * f, by0 * f)
            fy = slice(max(by0 * f, 0), min((by0 + ny) * f, fine[0]))
            fx = slice(max(bx0 * f, 0), min((bx0 + nx) * f, fine[1]))
            view_cover[fy, fx] += 1.0
        else:
            model = build_blend_model(box, frame, pos[~is_star], scales, pos[is_star])
            with network_precision(prior, precision, device):
                draws = sample_blend(model, module, config.sampler, *gens, device=device)
        k1 = 1.0 / model.flux_factor  # (C,) per band
        k = k1[:, None, None]
        order = np.concatenate([gal_rows, star_rows])  # the sources' axis of the draws
        lights = draws.sources.numpy() * k  # (S, M, C, ny, nx)
        total = draws.model.numpy() * k
        data = box.image
        sq = np.where(box.valid[None], (data[None] - total) ** 2 / box.variance[None], 0.0)
        blend_chi2 = float(sq.sum((1, 2, 3)).mean() / max(int(box.valid.sum()), 1))
        galaxies = draws.galaxies.numpy()
        gal_flux = (
            # (S, K, C), the bands the image has: each stamp and its wing beyond it
            (galaxies.sum((-2, -1))[..., index] + draws.wing_flux.numpy()) * k1
            if galaxies.shape[1]
            else np.zeros((n_s, 0, c))
        )
        star_flux = draws.coefficients[:, : model.n_stars * c].numpy().reshape(n_s, -1, c) * k1
        all_flux = np.concatenate([gal_flux, star_flux], axis=1)
        mean_light = lights.mean(0)
        source_total = mean_light.sum()
        # The box's pixels inside the image, in box and image coordinates.
        iy = slice(max(by0, 0), min(by0 + ny, h))
        ix = slice(max(bx0, 0), min(bx0 + nx, w))
        sy = slice(iy.start - by0, iy.stop - by0)
        sx = slice(ix.start - bx0, ix.stop - bx0)
        for m, row in enumerate(order):
            fluxes[row] = all_flux[:, m]
            light_box[row] = (ix.start, iy.start, mean_light[m][:, sy, sx])
            sources[:, iy, ix] += mean_light[m][:, sy, sx]
            share[row] = float(mean_light[m].sum() / source_total) if source_total else math.nan
            chi2[row] = blend_chi2
            blend_of[row] = blend.index
            px, py = xy[row]
            ox = int(math.floor(px + 0.5)) - sw // 2
            oy = int(math.floor(py + 0.5)) - sh // 2
            origins[row] = (ox, oy)
            stamps[row, 0] = _window(lights[:, m].mean(0), ox - bx0, oy - by0, sh, sw)
            stamps[row, 1] = _window(lights[:, m].std(0), ox - bx0, oy - by0, sh, sw)
            for j in range(n_s):
                stamp_samples[row, j] = _window(lights[j, m], ox - bx0, oy - by0, sh, sw)
            light_total = float(mean_light[m].sum())
            if light_total:
                stamp_frac[row] = float(stamps[row, 0].sum()) / light_total
        bkg_sum[:, iy, ix] += draws.background.numpy().mean(0)[:, sy, sx] * k
        if frame_sources is not None:
            _add_frame_sources(
                frame_sources,
                galaxies.mean(0),
                pos[~is_star],
                star_flux.mean(0),
                pos[is_star],
                model.band_index,
                k1,
                f,
                (bx0 * f, by0 * f, ny * f, nx * f),
                kernel_fwhm,
            )
        cover[iy, ix] += 1.0
        if log is not None:
            log(
                f"{obs.name}: {blend.describe()}: chi2 {blend_chi2:.2f}, "
                f"{time.perf_counter() - t0:.1f} s"
            )
    # Overlapping boxes each fitted a background there: their mean is the scene's.
    background = np.divide(bkg_sum, cover, out=np.zeros_like(bkg_sum), where=cover > 0)
    model = sources + background
    children, child_origins = _children(obs.image - background, sources, light_box)
    suffixes = None
    if frame.shape[0] > 1:
        suffixes = list(obs.bands) if obs.bands is not None else [str(i) for i in range(c)]
    catalog = _catalog(
        table, obs, blend_of, fluxes, chi2, share, origins, child_origins, stamp_frac, suffixes
    )
    view_results = []
    for m, vsum, vbkg in zip(matched, view_sum, view_bkg, strict=True):
        vb = np.divide(vbkg, view_cover, out=np.zeros_like(vbkg), where=view_cover > 0)
        view_results.append(ViewResult(m, vsum + vb, vb))
    return SceneResult(
        obs,
        catalog,
        stamps,
        model,
        background,
        children,
        blends,
        int(seed),
        device,
        precision,
        view_results,
        frame_sources,
        fluxes,
        stamp_samples,
    )


def _add_frame_sources(
    out: np.ndarray,
    galaxies: np.ndarray,
    gal_pos: np.ndarray,
    star_flux: np.ndarray,
    star_pos: np.ndarray,
    band_index: tuple[int, ...],
    k1: np.ndarray,
    f: int,
    window: tuple[int, int, int, int],
    kernel_fwhm: float,
) -> None:
    """Add one blend's posterior-mean sources on the model frame, without the image's
    PSF (galaxies as the prior draws them, stars as the model kernel), image units."""
    x0, y0, ny, nx = window
    c = out.shape[0]
    box = np.zeros((c, ny, nx))
    for g, pos in zip(galaxies, gal_pos, strict=True):
        stamp = torch.from_numpy(g[list(band_index)] * k1[:, None, None])
        place = PlaceStamp(pos * f + (f - 1) / 2.0, tuple(stamp.shape), (c, ny, nx))
        box += place.apply(stamp[None])[0].numpy()
    if len(star_pos):
        size = 2 * int(math.ceil(3.0 * kernel_fwhm)) + 1
        kern = np.stack([model_kernel(kernel_fwhm, size)] * c)
        for flux, pos in zip(star_flux, star_pos, strict=True):
            star = StarOperator(kern, pos * f + (f - 1) / 2.0, (c, ny, nx), per_band=True)
            box += star.apply(torch.from_numpy(flux)[None])[0].numpy()
    _, h, w = out.shape
    ys, xs = slice(max(y0, 0), min(y0 + ny, h)), slice(max(x0, 0), min(x0 + nx, w))
    out[:, ys, xs] += box[:, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def _view_window(m: MatchedView, x0: int, y0: int, ny: int, nx: int) -> ViewBox:
    """A matched view's window on a blend box of the model frame (masked beyond it)."""
    return ViewBox(
        image=crop_padded(m.image, y0, x0, ny, nx, 0.0),
        variance=crop_padded(m.variance, y0, x0, ny, nx, 1.0),
        valid=crop_padded(m.valid, y0, x0, ny, nx, False),
        to_normalised=m.to_normalised,
        band_index=m.band_index,
        kernel_fwhm=m.kernel_fwhm,
    )


def _add_views(
    draws: Sequence[Any],
    matched: Sequence[MatchedView],
    sums: list[np.ndarray],
    bkgs: list[np.ndarray],
    x0: int,
    y0: int,
) -> None:
    """Add each view's posterior-mean source light and background of one blend (view
    units) to the scene's, on the model frame."""
    for d, m, total, bkg in zip(draws, matched, sums, bkgs, strict=True):
        k = (1.0 / m.to_normalised)[:, None, None]
        light = d.sources.numpy().mean(0).sum(0) * k
        back = d.background.numpy().mean(0) * k
        _, h, w = total.shape
        _, ny, nx = light.shape
        ys, xs = slice(max(y0, 0), min(y0 + ny, h)), slice(max(x0, 0), min(x0 + nx, w))
        sy, sx = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
        total[:, ys, xs] += light[:, sy, sx]
        bkg[:, ys, xs] += back[:, sy, sx]


def _children(
    signal: np.ndarray, sources: np.ndarray, light_box: list[tuple[int, int, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Flux-conserving children ``signal * m_k / sum_j m_j``, each in its blend's box.

    Returns ``(N, C, bh, bw)`` windows, all of the largest box's size (zero beyond a
    source's own box), and their first pixels ``(N, 2)`` (x, y). A source's light lies
    inside its blend's box, so placing every window back sums to ``signal`` wherever the
    model has light, with no image-sized array per source.
    """
    n = len(light_box)
    c = signal.shape[0]
    bh = max((lb[2].shape[1] for lb in light_box), default=0)
    bw = max((lb[2].shape[2] for lb in light_box), default=0)
    out = np.zeros((n, c, bh, bw))
    origins = np.zeros((n, 2), dtype=np.int64)
    for row, (x0, y0, light) in enumerate(light_box):
        _, ny, nx = light.shape
        region = (slice(None), slice(y0, y0 + ny), slice(x0, x0 + nx))
        total = sources[region]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[row, :, :ny, :nx] = np.where(total != 0, signal[region] * light / total, 0.0)
        origins[row] = (x0, y0)
    return out, origins


def _window(img: np.ndarray, x0: int, y0: int, sh: int, sw: int) -> np.ndarray:
    """``img[:, y0:y0+sh, x0:x0+sw]`` with zeros beyond its edges."""
    c, h, w = img.shape
    out = np.zeros((c, sh, sw))
    ys, xs = slice(max(y0, 0), min(y0 + sh, h)), slice(max(x0, 0), min(x0 + sw, w))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[:, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = img[:, ys, xs]
    return out


def _catalog(
    table: Table,
    obs: Observation,
    blend_of: np.ndarray,
    fluxes: np.ndarray,
    chi2: np.ndarray,
    share: np.ndarray,
    origins: np.ndarray,
    child_origins: np.ndarray,
    stamp_frac: np.ndarray,
    suffixes: list[str] | None = None,
) -> Table:
    """The output catalogue: positions, kinds, blends, flux summaries and stamp origins.

    With ``suffixes`` (one per image band: a prior of several bands) each flux column
    is one per band, ``flux_i``, ``flux_err_i``...; without, one column per statistic.
    """
    squeeze = (lambda a: a[..., 0]) if obs.n_bands == 1 else (lambda a: a)
    unit = obs.bunit
    out = Table()
    out["id"] = Column(np.asarray(table["id"], np.int64), description="source id")
    out["blend"] = Column(blend_of, description="blend index")
    out["kind"] = Column(np.asarray(table["kind"]).astype("<U6"), description="galaxy or star")
    out["x"] = Column(np.asarray(table["x"], float), unit=u.pix, description="0-based column")
    out["y"] = Column(np.asarray(table["y"], float), unit=u.pix, description="0-based row")
    if "ra" in table.colnames:
        out["ra"] = Column(
            np.asarray(table["ra"], float), unit=u.deg, description="right ascension"
        )
        out["dec"] = Column(np.asarray(table["dec"], float), unit=u.deg, description="declination")
    n = fluxes.shape[1]
    stats = {
        "flux": (fluxes.mean(1), "posterior mean flux"),
        "flux_err": (
            fluxes.std(1, ddof=1) if n > 1 else np.zeros_like(fluxes[:, 0]),
            "posterior standard deviation of the flux",
        ),
    }
    for suffix, q in QUANTILES:
        stats[f"flux_{suffix}"] = (
            flux_bound(fluxes, q),
            f"{q:g} bound of the flux's posterior interval (Student t from the samples)",
        )
    for name, (values, text) in stats.items():
        if suffixes is None:
            out[name] = Column(squeeze(values), unit=unit, description=text)
        else:
            for b, band in enumerate(suffixes):
                out[f"{name}_{band}"] = Column(
                    values[:, b], unit=unit, description=f"{text}, band {band}"
                )
    out["chi2"] = Column(chi2, description="blend reduced chi^2 (posterior-predictive mean)")
    out["light_share"] = Column(share, description="share of the blend's source light")
    out["stamp_x0"] = Column(origins[:, 0], unit=u.pix, description="STAMPS first column")
    out["stamp_y0"] = Column(origins[:, 1], unit=u.pix, description="STAMPS first row")
    out["stamp_frac"] = Column(
        stamp_frac, description="share of the source's mean light inside its STAMPS window"
    )
    out["child_x0"] = Column(child_origins[:, 0], unit=u.pix, description="CHILDREN first column")
    out["child_y0"] = Column(child_origins[:, 1], unit=u.pix, description="CHILDREN first row")
    return out


def write_scene(
    result: SceneResult, path: Path, prior: Any, config: SeparateConfig
) -> tuple[Path, Path]:
    """Write the FITS file and its ECSV catalogue beside it, each atomically.

    Raises
    ------
    OutputExistsError
        If either exists without ``config.overwrite``.
    GalprismError
        If either cannot be written.
    """
    obs = result.observation
    history = [f"galprism {__version__}: {config.command_line or shlex.join(sys.argv)}"]
    s = config.sampler
    cards = {
        "INPUT": (Path(obs.name).name, "input file"),
        "PRIOR": (str(prior.name), "prior"),
        "MODE": ("scene", "every source of the image, blend by blend"),
        "SEED": (int(result.seed), "image seed"),
        "SAMPLER": (s.method, "posterior sampler"),
        "STEPS": (int(s.steps), "sampler steps"),
        "NSAMPLE": (int(s.n_samples), "posterior samples per blend"),
        "NCGITER": (int(s.cg_iterations), "conjugate-gradient iterations per step"),
        "JACOBIAN": (s.jacobian, "network Jacobian products: vjp or difference"),
        "RHO": (float(s.rho), "step spacing: 0 log-uniform, else Karras rho"),
        "DEVICE": (result.device, "torch device"),
        "PRECISN": (result.precision, "diffusion networks' arithmetic"),
        "NBLEND": (len(result.blends), "blends"),
        "NSOURCE": (len(result.catalog), "sources"),
    }
    if obs.bands is not None:
        cards["BANDS"] = (",".join(obs.bands), "bands of the image, in BAND axis order")
    if result.views:
        cards["NVIEW"] = (1 + len(result.views), "views modelled jointly; view 1 is INPUT")
        cards["VIEW1"] = (Path(obs.name).name, "view 1: MODEL, RESID")
        cards["CHI2_1"] = (result.chi2, "view 1 reduced chi^2 of the posterior mean")
        for n, v in enumerate(result.views, start=2):
            cards[f"VIEW{n}"] = (Path(v.matched.name).name, f"view {n}: DATA_{n}, MODEL_{n}")
            cards[f"CHI2_{n}"] = (v.chi2, f"view {n} reduced chi^2 against its noise bound")
            cards[f"CHI2N_{n}"] = (v.matched.noise_chi2, f"view {n} reduced chi^2 of pure noise")
    primary = primary_hdu(cards, history)
    for blend in result.blends:
        primary.header.add_comment(blend.describe())
    banded = obs.n_bands > 1
    lead = ("BAND",) if banded else ()

    def plane(a: np.ndarray) -> np.ndarray:
        return a if banded else a[..., 0, :, :]

    cache: dict = {}
    hdus = [
        primary,
        catalog_hdu(result.catalog),
        image_hdu(
            plane(result.stamps),
            "STAMPS",
            wcs=None,
            bunit=obs.bunit,
            leading=("SOURCE", "STAT", *lead),
            cards={
                "STATDEF": ("0 mean, 1 std", "STAT axis"),
                "ORIGIN": ("catalogue stamp_x0, stamp_y0", "first pixel"),
            },
        ),
    ]
    if result.samples is not None:
        hdus.append(
            image_hdu(
                result.samples if banded else result.samples[:, :, 0],
                "SAMPLES",
                wcs=None,
                bunit=obs.bunit,
                leading=("SOURCE", "SAMPLE", *lead),
                cards={"ORIGIN": ("catalogue stamp_x0, stamp_y0", "first pixel")},
            )
        )
    hdus += [
        image_hdu(
            plane(result.model), "MODEL", wcs=obs.wcs, bunit=obs.bunit, leading=lead, cache=cache
        ),
        image_hdu(
            plane(result.background),
            "BACKGROUND",
            wcs=obs.wcs,
            bunit=obs.bunit,
            leading=lead,
            cache=cache,
        ),
        image_hdu(
            plane(result.resid),
            "RESID",
            wcs=obs.wcs,
            bunit=None,
            leading=lead,
            cards={"RESIDDEF": ("(data - MODEL) / sigma", "NaN at masked pixels")},
            cache=cache,
        ),
        image_hdu(
            plane(result.children),
            "CHILDREN",
            wcs=None,
            bunit=obs.bunit,
            leading=("SOURCE", *lead),
            cards={
                "CHILDDEF": ("(data - BACKGROUND) * m_k / sum m", "catalogue order"),
                "ORIGIN": ("catalogue child_x0, child_y0", "first pixel"),
            },
        ),
    ]
    for n, v in enumerate(result.views, start=2):
        m = v.matched
        vlead = ("BAND",) if m.n_bands > 1 else ()

        def vplane(a: np.ndarray, banded: bool = m.n_bands > 1) -> np.ndarray:
            return a if banded else a[0]

        grid = {"VGRID": ("model frame", "the prior's grid on view 1's sky")}
        hdus += [
            image_hdu(
                vplane(np.where(m.valid, m.image, np.nan)),
                f"DATA_{n}",
                wcs=m.wcs,
                bunit=m.bunit,
                leading=vlead,
                cards={**grid, "DATADEF": ("view matched to the model kernel", "NaN: unseen")},
            ),
            image_hdu(vplane(v.model), f"MODEL_{n}", wcs=m.wcs, bunit=m.bunit, leading=vlead),
            image_hdu(
                vplane(v.resid),
                f"RESID_{n}",
                wcs=m.wcs,
                bunit=None,
                leading=vlead,
                cards={"RESIDDEF": ("(DATA - MODEL) / sigma", "sigma: the noise bound")},
            ),
        ]
    ecsv = catalog_path_for(path)
    if not config.overwrite:
        for p in (path, ecsv):
            if p.exists():
                raise OutputExistsError(f"{p}: output exists and overwriting is not allowed")
    path.parent.mkdir(parents=True, exist_ok=True)
    if config.output_format == "hdf5":
        write_hdf5(fits.HDUList(hdus), result.catalog, path, overwrite=config.overwrite)
    else:
        write_atomic(fits.HDUList(hdus), path, overwrite=config.overwrite)
    write_catalog(result.catalog, ecsv, overwrite=True)
    return path, ecsv


def run_scene(
    inputs: Iterable[str],
    prior: Any,
    config: SeparateConfig,
    *,
    catalog: str | None = None,
    on_record: Callable[[InputRecord], None] | None = None,
    warnings: RunWarnings | None = None,
    log: Callable[[str], None] | None = None,
    views: Sequence[str] = (),
) -> RunSummary:
    """Separate each input image blend by blend; a failing input does not stop the run.

    ``views`` are further FITS images of each input's sky, modelled jointly with it (see
    :func:`separate_scene`); they are read with their own headers and extensions only
    (PSF, noise, zero point), not with ``config.read``, which describes the inputs.

    Returns
    -------
    RunSummary
        Counts; ``exit_code`` is 1 when any input failed.
    """
    from ..separate.config import resolve_device, resolve_precision

    galaxy_prior(prior)
    device = resolve_device(config.device)
    # A precision the device cannot run is the run's error, not every input's.
    resolve_precision(config.precision, device, config.sampler.jacobian)
    summary = RunSummary()
    t_run = time.perf_counter()
    index = 0
    for path in inputs:
        if config.shard is not None and not in_shard(path, *config.shard):
            continue
        t0 = time.perf_counter()
        out = config.output if config.output is not None else output_path(path, config.output_dir)
        if config.output is None and config.output_format == "hdf5":
            out = out.with_name(out.name[: -len(".fits")] + ".h5")
        seed = cutout_seed(config.seed, path)
        if config.skip_existing and out.exists():
            rec = InputRecord(path, str(out), "skipped", 0.0, seed, index=index)
            summary.skipped += 1
        else:
            try:
                if out.exists() and not config.overwrite:
                    raise OutputExistsError(f"{out}: output exists and overwriting is not allowed")
                obs = read_cutout(path, config.read)
                others = [read_cutout(v) for v in views]
                result = separate_scene(
                    obs,
                    prior,
                    config,
                    seed,
                    catalog=catalog,
                    warnings=warnings,
                    device=device,
                    log=log,
                    views=others,
                )
                write_scene(result, Path(out), prior, config)
                chi2 = [float(v) for v in result.catalog["chi2"]]
                rec = InputRecord(
                    path,
                    str(out),
                    "ok",
                    time.perf_counter() - t0,
                    seed,
                    chi2=float(np.mean(chi2)) if chi2 else None,
                    index=index,
                )
                summary.ok += 1
            except (GalprismError, OSError, ValueError, RuntimeError) as exc:
                rec = InputRecord(
                    path,
                    None,
                    "error",
                    time.perf_counter() - t0,
                    seed,
                    error=_error_text(exc, path),
                    index=index,
                )
                summary.errors += 1
        if on_record is not None:
            on_record(rec)
        index += 1
    summary.seconds = time.perf_counter() - t_run
    if warnings is not None:
        warnings.finish()
    return summary

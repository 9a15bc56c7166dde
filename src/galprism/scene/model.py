"""The joint linear model of one blend and its posterior samples.

A blend's observation ``y`` (its box of the image, ``(C, H, W)``) is modelled as

    y = sum_k A P_k s_k x_k + sum_j S_j f_j + G b + n,

* ``x_k`` ``(C, h, w)``: galaxy ``k`` on the prior's grid, a draw of the galaxy prior
  in the units it was trained on; ``s_k >= 1`` its flux scale (:func:`flux_scales`), so
  that a galaxy brighter than the training set is a scaled training-like galaxy;
* ``P_k``: :class:`~galprism.scene.placement.PlaceStamp` at the galaxy's sub-pixel
  position in the blend frame (the box on the prior's grid);
* ``A``: the observation's PSF, downsampling to the image's pixels and mask;
* ``S_j f_j``: star ``j``, its PSF image times one flux per band
  (:class:`~galprism.scene.placement.StarOperator`);
* ``G b``: the background, a constant and an x and a y gradient per band.

Stars and background are linear with broad Gaussian priors, so they are integrated out
of the likelihood by the low-rank whitening of :class:`galprism.freeform.FreeformModel`
and the galaxies are drawn by MMPS from the marginal likelihood with one joint solve;
given each galaxy draw the linear coefficients are drawn from their exact Gaussian
conditional (:meth:`~galprism.freeform.FreeformModel.sample`).

Everything here is in the prior's normalised units (data at the prior's zero point
divided by its ``flux_scale``); :class:`BlendSamples` converts back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..diffusion.samplers import SamplerConfig
from ..diffusion.schedule import VESchedule
from ..errors import ConfigError, ShapeError
from ..frame import Frame
from ..freeform import FreeformModel
from ..observation import Observation
from ..operators import (
    Composition,
    Convolve,
    Downsample,
    LinearOperator,
    Mask,
    Scale,
    SelectBands,
    SourceSum,
    Weight,
)
from ..sampling import sample_posterior, sample_prior
from .placement import PlaceStamp, StarOperator
from .profiles import Profiles, fit_profiles, ownership
from .refine import refine_galaxies

__all__ = [
    "BlendModel",
    "BlendSamples",
    "build_blend_model",
    "sample_blend",
    "typical_flux",
    "flux_scales",
    "BACKGROUND_TERMS",
]

#: background columns per band: constant, x gradient, y gradient
BACKGROUND_TERMS = 3
#: prior standard deviation of a star's flux or a background coefficient, in units of the
#: data's own scale for it: broad enough that the data alone decide
BROAD = 10.0

#: Softness of the galaxies' ownership of pixels (:func:`.profiles.ownership`): 1 gives
#: each galaxy its fitted profile's share of the light. A galaxy's light is its prior
#: draw times its ownership: a bright galaxy is its draw scaled up, and the faint texture
#: its draws carry across the whole stamp, scaled up with it, would otherwise trade light
#: with a neighbour's far outside either galaxy's light. Stars own no area: they are the
#: PSF at a fitted position.
OWNERSHIP_SOFTNESS = 1.0
#: Least share of a galaxy's fitted light on its blend's box beyond its stamp for which
#: the galaxy gets a wing term (:func:`wings`).
WING_MIN = 0.01
#: Prior standard deviation of a galaxy's wing flux, relative to its fitted flux: the
#: profiles fix the wing's shape and scale, the data refine its flux (a broad prior let
#: a wing trade light with a faint neighbour's stamp on its outskirts).
WING_SPREAD = 0.5
#: mixed into the blend's seed for the fine-structure layer's draws (:mod:`.refine`)
REFINE_SALT = 0x5EED_F1E5

_TYPICAL: dict[int, tuple[nn.Module, Tensor]] = {}


def typical_flux(
    prior: nn.Module,
    *,
    n: int = 64,
    steps: int = 32,
    seed: int = 0,
    device: str = "cpu",
    quantile: float = 0.5,
) -> float:
    """The ``quantile`` of the total flux (all bands, normalised units) of ``n`` draws of
    ``prior``: by default the median, the flux of a typical training galaxy.

    The draws are made once per prior object and cached.

    Raises
    ------
    ConfigError
        If ``quantile`` is not in [0, 1] or the flux there is not positive (the prior
        draws no light to scale).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"typical_flux: quantile {quantile!r} is not in [0, 1]")
    key = id(prior)
    hit = _TYPICAL.get(key)
    if hit is None or hit[0] is not prior:
        x = sample_prior(
            [prior],
            n,
            config=SamplerConfig(steps=steps),
            generators=torch.Generator(device=device).manual_seed(seed),
            device=device,
        )
        hit = (prior, x[:, 0].flatten(1).sum(1).to("cpu", torch.float64))
        _TYPICAL[key] = hit
    fluxes = hit[1]
    # torch's median (the lower middle value) keeps the default what it always was.
    value = float(fluxes.median() if quantile == 0.5 else fluxes.quantile(quantile))
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"galaxy prior: the {quantile:g} quantile of its draws' total flux is {value:g}, "
            "not > 0"
        )
    return value


def flux_scales(measured: Sequence[float] | np.ndarray, typical: float) -> np.ndarray:
    """``s_k = max(1, measured_k / typical)``: faint galaxies stay at the prior's scale.

    ``typical`` is the flux a scaled galaxy is shown to the prior at (e.g. an upper
    quantile of the prior's fluxes, :func:`typical_flux`).
    """
    m = np.asarray(measured, dtype=np.float64)
    s = np.where(np.isfinite(m), m / float(typical), 1.0)
    return np.maximum(s, 1.0)


@dataclass(eq=False)
class BlendModel:
    """The linear pieces of one blend (:func:`build_blend_model`), in normalised units.

    Attributes
    ----------
    y, noise_var, valid
        ``(1, C, H, W)`` data, noise variance (1 where masked) and mask of the box.
    operator
        The galaxies' operator on the marginal (whitened) likelihood, one term per galaxy
        with ``s_k`` folded in, or None without galaxies.
    light
        Per galaxy, ``(C, h, w) -> (C, H, W)``: its light on the box, masked pixels
        included (``Downsample o Convolve o P_k [o SelectBands] o s_k``, the selection
        keeping the prior's bands the image observes).
    linear
        Stars and background integrated out of the likelihood, or None when there are
        none.
    y_white, noise_white
        Data and noise (ones) of the marginal likelihood the sampler sees.
    n_galaxies, n_stars
        Source counts; star ``j``'s fluxes are columns ``j C .. (j + 1) C`` of the
        linear coefficients, the background's the last ``3 C``.
    scales
        ``(n_galaxies,)`` the ``s_k``.
    flux_factor
        ``(C,)`` image units to normalised units, per band of the image.
    band_index
        Index of each image band among the galaxy prior's bands.
    support
        ``(K, 1, h, w)`` each galaxy's soft ownership of its stamp's pixels
        (:func:`~galprism.scene.profiles.ownership` of the galaxies' fitted
        profiles): a galaxy's light is its draw times it.
    wing_owner
        ``(W,)`` the galaxies with a wing term (:func:`wings`): their light beyond their
        stamps, linear coefficients ``J C + i C .. J C + (i + 1) C`` (flux per band on
        the box, normalised units) of the ``i``-th.
    linear_mean
        ``(k,)`` the linear coefficients' prior mean (the wings' fitted fluxes, zero
        for the others); ``y`` is the data less its light.
    """

    y: Tensor
    noise_var: Tensor
    valid: Tensor
    operator: SourceSum | None
    light: list[LinearOperator]
    linear: FreeformModel | None
    y_white: Tensor
    noise_white: Tensor
    n_galaxies: int
    n_stars: int
    background: bool
    scales: np.ndarray
    flux_factor: np.ndarray
    band_index: tuple[int, ...]
    support: Tensor
    wing_owner: np.ndarray
    linear_mean: Tensor


def wings(
    profiles: Profiles, shape: Sequence[int], stamp: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The galaxies of a blend that get a wing term, its shape and its fitted flux.

    A galaxy whose fitted profile (:class:`~galprism.scene.profiles.Profiles`) puts at
    least :data:`WING_MIN` of its light on the box ``(C, H, W)`` outside its stamp of
    ``(h, w)`` image pixels, at least half of it where its profile outshines the
    others', gets a wing: its profile's light there, all bands summed and normalised to
    unit flux. Its flux per band is a linear term of the blend with prior mean the
    fitted wing's and standard deviation :data:`WING_SPREAD` times that.

    Returns
    -------
    owners, shapes, flux
        ``(n,)`` the galaxies' indices, ``(n, H, W)`` the unit-flux shapes and
        ``(n, C)`` the fitted wings' fluxes per band (normalised units).
    """
    c, h, w = (int(v) for v in shape)
    light = profiles.wings(shape, stamp)  # (K, C, H, W)
    # A galaxy whose fitted wing lies mostly where a neighbour's light dominates has
    # taken that neighbour's outskirts into its profile: a wing term would trade light
    # with it (a faint galaxy on a bright one's outskirts came out negative).
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    logp = profiles.log_density(xx, yy)
    share = np.exp(logp - np.logaddexp.reduce(logp, axis=0)) if len(logp) else logp
    own = (light.sum(1) * share).sum((1, 2))
    per_band = light.sum((2, 3))
    outside = per_band.sum(1)
    total = profiles.total().sum(1)
    owners = np.flatnonzero((outside > 0) & (outside >= WING_MIN * total) & (own >= outside / 2))
    shapes = light[owners].sum(1) / outside[owners, None, None]
    return owners, shapes, per_band[owners]


def _wing_prior(flux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prior mean and standard deviation of the wing terms' coefficients (flattened
    ``(n, C)``): the fitted flux, and :data:`WING_SPREAD` times it (at least a thousandth
    of the wing's flux over all bands, so that no band's term is pinned to 0)."""
    floor = 1e-3 * flux.sum(1, keepdims=True)
    return flux.reshape(-1), (WING_SPREAD * np.maximum(flux, floor)).reshape(-1)


@dataclass(frozen=True, eq=False)
class GalaxyShares:
    """How a blend's galaxies share its light (:func:`galaxy_shares`).

    Attributes
    ----------
    support
        ``(K, 1, h, w)`` each galaxy's ownership of its stamp's pixels.
    wing_owner, wing_shapes
        The galaxies with a wing term and its unit-flux shape ``(n, H, W)`` on the box.
    wing_mean, wing_sd
        Prior mean and standard deviation of the wing terms' fluxes, flattened
        ``(n, C)``.
    """

    support: Tensor
    wing_owner: np.ndarray
    wing_shapes: np.ndarray
    wing_mean: np.ndarray
    wing_sd: np.ndarray

    def linear_mean(self, n_columns: int, n_stars: int, n_bands: int) -> Tensor:
        """``(n_columns,)`` prior mean of a blend's linear coefficients: star fluxes
        (``n_stars x n_bands``, zero), the wings' fluxes, then zeros."""
        mean = torch.zeros(n_columns, dtype=torch.float64)
        first = n_stars * n_bands
        mean[first : first + self.wing_mean.size] = torch.from_numpy(self.wing_mean)
        return mean


def galaxy_shares(
    obs: Observation,
    galaxies: np.ndarray,
    stars: np.ndarray,
    flux_factor: np.ndarray,
    stamp: Sequence[int],
    grid_factor: int,
) -> GalaxyShares:
    """Fit the galaxies' profiles on a blend's box ``obs`` and derive their ownership of
    their stamps (``stamp`` ``(C, h, w)`` on a grid ``grid_factor`` times finer) and
    their wing terms (:func:`wings`)."""
    f = int(grid_factor)
    profiles = fit_profiles(obs, galaxies, stars, flux_factor)
    support = ownership(profiles, stamp, f, OWNERSHIP_SOFTNESS)
    owners, shapes, flux = wings(profiles, obs.shape, (stamp[1] // f, stamp[2] // f))
    mean, sd = _wing_prior(flux)
    return GalaxyShares(support, owners, shapes, mean, sd)


def _columns(
    obs: Observation, stars: np.ndarray, background: bool, wing_shapes: np.ndarray | None = None
) -> Tensor:
    """``(n_pixels, k)``: each star's unit-flux image per band, each wing's unit-flux
    shape per band (``(n, H, W)``), then the background planes."""
    c, h, w = obs.shape
    cols = []
    for pos in stars:
        op = StarOperator(np.array(obs.psf), pos, obs.shape, per_band=True, name=f"{obs.name} PSF")
        cols.append(op.columns.reshape(c, -1).T)
    for shape in wing_shapes if wing_shapes is not None else []:
        block = torch.zeros(c, c, h, w, dtype=torch.float64)
        for band in range(c):
            block[band, band] = torch.from_numpy(shape)
        cols.append(block.reshape(c, -1).T)
    if background:
        yy, xx = torch.meshgrid(
            torch.linspace(-1.0, 1.0, h, dtype=torch.float64),
            torch.linspace(-1.0, 1.0, w, dtype=torch.float64),
            indexing="ij",
        )
        for plane in (torch.ones_like(xx), xx, yy):
            for band in range(c):
                img = torch.zeros((c, h, w), dtype=torch.float64)
                img[band] = plane
                cols.append(img.reshape(-1, 1))
    return torch.cat(cols, dim=1) if cols else torch.zeros(c * h * w, 0, dtype=torch.float64)


def build_blend_model(
    obs: Observation,
    frame: Frame,
    galaxies: np.ndarray,
    scales: np.ndarray,
    stars: np.ndarray,
    *,
    star_scale: np.ndarray | None = None,
    background: bool = True,
    background_scale: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> BlendModel:
    """The joint linear model of one blend.

    Parameters
    ----------
    obs
        The blend's box of the image (padded pixels masked).
    frame
        The galaxy prior's grid and flux convention.
    galaxies, stars
        ``(K, 2)`` and ``(J, 2)`` positions ``(x, y)`` in ``obs``'s pixels (0-based).
    scales
        ``(K,)`` flux scales ``s_k`` (:func:`flux_scales`).
    star_scale
        ``(J,)`` prior standard deviation of each star's flux per band, normalised units;
        default :data:`BROAD` times the box's brightest pixel divided by the PSF's peak.
    background
        Model a constant plus gradient background per band.
    background_scale
        Prior standard deviation of each background coefficient, normalised units;
        default :data:`BROAD` times the larger of the box's brightest pixel and its noise.
    dtype
        Floating dtype of the sampler's tensors.

    Raises
    ------
    ShapeError, InputError
        If the image's bands are not the prior's (:func:`~galprism.observation.match_bands`),
        the positions are malformed or there is nothing to model.
    """
    c, h, w = obs.shape
    index = obs.band_index(frame, "the galaxy prior")
    galaxies = np.asarray(galaxies, dtype=np.float64).reshape(-1, 2)
    stars = np.asarray(stars, dtype=np.float64).reshape(-1, 2)
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    if scales.shape[0] != galaxies.shape[0]:
        raise ShapeError(f"{obs.name}: {scales.shape[0]} flux scales for {len(galaxies)} galaxies")
    if len(galaxies) == 0 and len(stars) == 0:
        raise ShapeError(f"{obs.name}: a blend needs at least one source")
    f = obs.grid_factor(frame.pixel_scale)
    fine = (c, h * f, w * f)
    flux_factor = obs.flux_factors_to(frame.ab_zeropoint) / frame.flux_scale
    uniform = bool(np.ptp(flux_factor) == 0)
    per_band = flux_factor[:, None, None]
    stamp = tuple(int(s) for s in frame.shape)
    shares = galaxy_shares(obs, galaxies, stars, flux_factor, stamp, f)
    support = shares.support
    y = torch.from_numpy(obs.image * per_band)[None]
    noise_var = torch.from_numpy(np.where(obs.valid, obs.variance * per_band**2, 1.0))[None]
    valid = torch.from_numpy(obs.valid.copy())[None]

    cols = _columns(obs, stars, background, shares.wing_shapes)
    linear = None
    if cols.shape[1]:
        if uniform:
            peak = float(np.abs(np.where(obs.valid, obs.image, 0.0)).max()) * flux_factor[0]
            sigma = float(np.sqrt(np.median(obs.variance[obs.valid]))) * flux_factor[0]
        else:
            peak = float(np.abs(np.where(obs.valid, obs.image * per_band, 0.0)).max())
            sigma = float(np.sqrt(np.median((obs.variance * per_band**2)[obs.valid])))
        if star_scale is None:
            psf_peak = float(obs.psf.max())
            star_scale = np.full(len(stars), BROAD * max(peak, sigma) / psf_peak)
        star_scale = np.asarray(star_scale, dtype=np.float64).reshape(-1)
        if star_scale.shape[0] != len(stars) or not (star_scale > 0).all():
            raise ShapeError(f"{obs.name}: star flux scales must be {len(stars)} positive values")
        diag = [np.repeat(star_scale, c), shares.wing_sd]
        if background:
            bs = BROAD * max(peak, sigma) if background_scale is None else background_scale
            diag.append(np.full(BACKGROUND_TERMS * c, float(bs)))
        factors = torch.diag(torch.from_numpy(np.concatenate(diag)))[None]
        # The free-form model is the low-rank marginalisation itself; its boxes and grid
        # only serve its own images(), which a scene does not use.
        linear = FreeformModel(
            [[]], cols[None], factors, noise_var.sqrt(), valid, 0, (c, h * f, w * f)
        )
    linear_mean = shares.linear_mean(cols.shape[1], len(stars), c)
    # The linear terms are drawn about their prior mean: the data less the mean's light.
    y = y - (cols @ linear_mean).reshape(y.shape)
    if linear is not None:
        y_white, noise_white = linear.whiten(y)
        whitening = linear.whitening()
    else:
        y_white, noise_white, whitening = y, noise_var, []

    psf = torch.from_numpy(np.array(obs.prior_grid_psf(f), dtype=np.float64))
    blur: list[LinearOperator] = [Downsample(f, fine)] if f > 1 else []
    blur.append(Convolve(psf, fine, name=f"{obs.name} PSF"))
    observed = (c, *stamp[1:])
    select: list[LinearOperator] = (
        [SelectBands(index, stamp)] if index != tuple(range(stamp[0])) else []
    )
    # Image pixel i covers fine pixels i f .. i f + f - 1, centered at i f + (f - 1) / 2.
    light, terms = [], []
    for k, (pos, s) in enumerate(zip(galaxies, scales, strict=True)):
        place = PlaceStamp(pos * f + (f - 1) / 2.0, observed, fine)
        window = Weight(support[k].expand(stamp), stamp)
        own = [*blur, place, *select, window, Scale(float(s), stamp)]
        light.append(Composition(own))
        terms.append(Composition([*whitening, Mask(valid[0]), *own]))
    return BlendModel(
        y=y.to(dtype),
        noise_var=noise_var.to(dtype),
        valid=valid,
        operator=SourceSum(terms) if terms else None,
        light=light,
        linear=linear,
        y_white=y_white.to(dtype),
        noise_white=noise_white.to(dtype),
        n_galaxies=len(galaxies),
        n_stars=len(stars),
        background=background,
        scales=scales,
        flux_factor=flux_factor,
        band_index=index,
        support=support,
        wing_owner=shares.wing_owner,
        linear_mean=linear_mean,
    )


@dataclass(eq=False)
class BlendSamples:
    """Posterior samples of one blend, in normalised units (:func:`sample_blend`).

    Attributes
    ----------
    galaxies
        ``(S, K, C, h, w)`` the galaxies on the prior's grid, ``s_k x_k``.
    coefficients
        ``(S, k)`` star fluxes (per band) then background coefficients.
    sources
        ``(S, K + J, C, H, W)`` each source's light on the box (galaxies then stars).
    background
        ``(S, C, H, W)`` the background's light on the box.
    wing_flux
        ``(S, K, C)`` each galaxy's flux beyond its stamp on the box (its wing term;
        zero without one), normalised units.
    """

    galaxies: Tensor
    coefficients: Tensor
    sources: Tensor
    background: Tensor
    wing_flux: Tensor

    @property
    def model(self) -> Tensor:
        """``(S, C, H, W)`` every component's light."""
        return self.sources.sum(1) + self.background


def draw_galaxies(
    model: Any,
    prior: nn.Module | None,
    sampler: SamplerConfig,
    generator: torch.Generator,
    device: str,
    what: str,
) -> Tensor | None:
    """``(S, K, C, h, w)`` float64 MMPS draws of a blend's galaxies on the prior's grid, in
    the prior's units, or None when the blend has none (:func:`sample_blend` and the joint
    model of several views share it)."""
    if not model.n_galaxies:
        return None
    if prior is None:
        raise ConfigError(f"{what}: the blend has galaxies but no galaxy prior was given")
    sampler, sigma_min = schedule_to_noise(prior, sampler, noise_floor(model))
    with lowered_sigma_min(prior, sigma_min):
        x = sample_posterior(
            [prior] * model.n_galaxies,
            model.operator,
            model.y_white.to(device),
            model.noise_white.to(device),
            sampler,
            generators=[generator],
        )[0]
    x = x.detach().to("cpu", torch.float64)
    # The refinement runs on the CPU in float64: its own generator derives from the
    # sampler's seed so that a run on another device draws the same corrections.
    cpu = torch.Generator().manual_seed(generator.initial_seed() ^ REFINE_SALT)
    x, _ = refine_galaxies(
        model.operator, model.y_white, model.valid[0], x, cpu, support=model.support
    )
    return x


def noise_floor(model: Any) -> float:
    """The data's noise in the units of the blend's brightest galaxy's draw: the median
    noise sigma of the valid pixels (normalised units) over the largest flux scale."""
    valid = model.valid.expand_as(model.noise_var)
    sigma = float(model.noise_var[valid].to(torch.float64).sqrt().median())
    return sigma / float(np.max(model.scales))


def schedule_to_noise(
    prior: nn.Module, sampler: SamplerConfig, floor: float
) -> tuple[SamplerConfig, float | None]:
    """The sampler settings that take a blend's galaxies down to the data's noise.

    A galaxy shown to the prior scaled down by ``s`` has noise ``sigma / s`` in the
    prior's units; below the prior's ``sigma_min`` the sampler would stop short of it and
    leave the galaxy fitted only to ``s sigma_min`` (a bright galaxy then misses the data
    by tens of sigma per pixel). When ``floor`` is below ``sigma_min`` the run ends at
    ``floor`` instead, with steps added in proportion to the extra decades of noise level
    so that the steps above ``sigma_min`` stay as dense as the sampler's. Returns the
    settings and the lowered ``sigma_min`` (None: unchanged). The networks' EDM
    preconditioning makes the denoiser tend to the identity as the noise level goes to
    zero, so the levels below the prior's are the likelihood's.
    """
    schedule = getattr(prior, "schedule", None)
    if schedule is None or not (0.0 < floor < schedule.sigma_min):
        return sampler, None
    full = math.log(schedule.sigma_max / schedule.sigma_min)
    extended = math.log(schedule.sigma_max / floor)
    return replace(sampler, steps=math.ceil(sampler.steps * extended / full)), floor


@contextmanager
def lowered_sigma_min(prior: nn.Module, sigma_min: float | None) -> Iterator[None]:
    """``prior``'s schedule ending at ``sigma_min`` within the block (no change for None)."""
    if sigma_min is None:
        yield
        return
    old = prior.schedule
    prior.schedule = VESchedule(sigma_min, old.sigma_max)
    try:
        yield
    finally:
        prior.schedule = old


def draw_linear(
    model: Any, residual: Tensor, n_bands: int, linear_generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Star fluxes, galaxies' wings and background given the galaxies' stamps, from their
    exact conditional.

    ``residual`` is ``(S, *obs_shape)``, the model's ``y`` (the data less the linear
    terms' prior mean light) minus each sample's galaxy light at valid pixels. Returns
    the coefficients ``(S, k)`` (prior mean included), each star's light ``(S, J, n)``,
    each wing's light ``(S, W, n)`` and the background ``(S, n)`` over the ``n``
    flattened pixels of the linear model's columns.
    """
    # Drawn about the prior mean (the residual is that of the data less its light).
    coefficients = model.linear.sample(residual[None], [linear_generator])[0]
    coefficients = coefficients + model.linear_mean.to(coefficients)[None]
    cols = model.linear.columns[0]  # (n, k)
    c = n_bands

    def blocks(first: int, count: int) -> Tensor:
        parts = [
            coefficients[:, first + j * c : first + (j + 1) * c]
            @ cols[:, first + j * c : first + (j + 1) * c].T
            for j in range(count)
        ]
        if not parts:
            return torch.zeros(coefficients.shape[0], 0, cols.shape[0], dtype=torch.float64)
        return torch.stack(parts, dim=1)

    n_star, n_wing = model.n_stars * c, len(model.wing_owner) * c
    stars = blocks(0, model.n_stars)
    wing = blocks(n_star, len(model.wing_owner))
    rest = n_star + n_wing
    return coefficients, stars, wing, coefficients[:, rest:] @ cols[:, rest:].T


def wing_fluxes(model: Any, coefficients: Tensor, n_bands: int) -> Tensor:
    """``(S, K, C)`` each galaxy's wing flux from the linear coefficients ``(S, k)``."""
    n_s = coefficients.shape[0]
    out = torch.zeros(n_s, model.n_galaxies, n_bands, dtype=torch.float64)
    first = model.n_stars * n_bands
    for i, k in enumerate(model.wing_owner):
        out[:, int(k)] = coefficients[:, first + i * n_bands : first + (i + 1) * n_bands]
    return out


def sample_blend(
    model: BlendModel,
    prior: nn.Module | None,
    sampler: SamplerConfig,
    generator: torch.Generator,
    linear_generator: torch.Generator,
    *,
    device: str = "cpu",
) -> BlendSamples:
    """Joint posterior samples of a blend's galaxies, stars and background.

    The galaxies are drawn by MMPS on the marginal likelihood, the same network (or
    Gaussian) ``prior`` for each; the stars' fluxes and the background are drawn given
    each galaxy sample from their exact conditional with ``linear_generator``.
    """
    n_s = sampler.n_samples
    _, c, h, w = model.y.shape
    x = draw_galaxies(model, prior, sampler, generator, device, "sample_blend")
    if x is not None:
        lights = torch.stack(
            [op.apply(x[:, k]) for k, op in enumerate(model.light)], dim=1
        )  # (S, K, C, H, W)
        galaxies = x * model.support[None] * torch.from_numpy(model.scales)[:, None, None, None]
    else:
        lights = torch.zeros(n_s, 0, c, h, w, dtype=torch.float64)
        galaxies = torch.zeros(n_s, 0, c, 1, 1, dtype=torch.float64)
    y = model.y.to(torch.float64)
    if model.linear is None:
        coefficients = torch.zeros(n_s, 0, dtype=torch.float64)
        stars = torch.zeros(n_s, 0, c, h, w, dtype=torch.float64)
        bkg = torch.zeros(n_s, c, h, w, dtype=torch.float64)
    else:
        residual = (y - lights.sum(1)) * model.valid.to(torch.float64)
        coefficients, stars, wing, bkg = draw_linear(model, residual, c, linear_generator)
        stars = stars.reshape(n_s, -1, c, h, w)
        lights[:, model.wing_owner] += wing.reshape(n_s, -1, c, h, w)
        bkg = bkg.reshape(n_s, c, h, w)
    return BlendSamples(
        galaxies=galaxies,
        coefficients=coefficients,
        sources=torch.cat([lights, stars], dim=1),
        background=bkg,
        wing_flux=wing_fluxes(model, coefficients, c),
    )

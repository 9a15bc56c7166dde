"""The joint linear model of one blend seen by several views, and its posterior samples.

View 0 is the blend's box of the primary image, modelled exactly as in
:func:`~galprism.scene.model.build_blend_model`. Every further view is a
:class:`~galprism.scene.views.MatchedView`: data already brought to the model frame and its
resolution, so galaxy ``k`` reaches it through ``P_k s_k x_k`` alone (placement on the
frame's box, flux scale, the view's bands and mask). One galaxy state serves every view:

    y_0 = A_0 sum_k P_k s_k x_k + stars_0 + G_0 b_0 + n_0
    y_v =       sum_k P_k s_k x_k + stars_v + G_v b_v + n_v      (v >= 1)

A star has one flux per prior band shared by the views (the model kernel's image on a
matched view, the PSF on the primary); each view has its own constant-plus-gradient
background. Stars and backgrounds are integrated out together, and the views' pixels are
stacked into one vector (:class:`StackViews`), so the sampler sees one linear-Gaussian
likelihood: the joint posterior of all views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..diffusion.samplers import SamplerConfig
from ..errors import InputError, ShapeError
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
    numel,
)
from .model import (
    BACKGROUND_TERMS,
    BROAD,
    BlendSamples,
    draw_galaxies,
    draw_linear,
    galaxy_shares,
    wing_fluxes,
)
from .placement import PlaceStamp, StarOperator
from .views import model_kernel

__all__ = ["StackViews", "ViewBox", "JointModel", "build_joint_model", "sample_joint"]


class StackViews(LinearOperator):
    """``x -> concat_v(flatten(A_v x))``: one source seen by views of different shapes.

    Every operator maps the same input; the output is the vector of all their pixels in
    view order. The adjoint splits it and sums the views' adjoints.
    """

    def __init__(self, ops: Sequence[LinearOperator]) -> None:
        ops = list(ops)
        if not ops:
            raise ShapeError("StackViews: needs at least one operator")
        if len({op.in_shape for op in ops}) != 1:
            raise ShapeError(f"StackViews: operators disagree on the input shape: {ops!r}")
        sizes = {op.batch_size for op in ops} - {None}
        if len(sizes) > 1:
            raise ShapeError(f"StackViews: operators hold different batches {sorted(sizes)}")
        self.ops = ops
        self.in_shape = ops[0].in_shape
        self.sizes = [numel(op.out_shape) for op in ops]
        self.out_shape = (sum(self.sizes),)
        self.batch_size = sizes.pop() if sizes else None

    def _apply(self, x: Tensor) -> Tensor:
        return torch.cat([op._apply(x).reshape(x.shape[0], -1) for op in self.ops], dim=1)

    def _adjoint(self, y: Tensor) -> Tensor:
        out = None
        for op, part in zip(self.ops, torch.split(y, self.sizes, dim=1), strict=True):
            term = op._adjoint(part.reshape(y.shape[0], *op.out_shape))
            out = term if out is None else out + term
        return out

    def take(self, index: Tensor) -> StackViews:
        return StackViews([op.take(index) for op in self.ops])


@dataclass(eq=False)
class ViewBox:
    """One matched view's window on a blend's box of the model frame.

    Attributes
    ----------
    image, variance, valid
        ``(C_v, h, w)`` in the view's units (variance 1 where not valid).
    to_normalised
        ``(C_v,)`` the view's units to normalised units.
    band_index
        Index of each view band among the prior's bands.
    kernel_fwhm
        The model kernel's FWHM in frame pixels (a star's image on the view).
    """

    image: np.ndarray
    variance: np.ndarray
    valid: np.ndarray
    to_normalised: np.ndarray
    band_index: tuple[int, ...]
    kernel_fwhm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]


@dataclass(eq=False)
class JointModel:
    """The pieces of one blend's joint model over several views (normalised units).

    ``y``, ``noise_var``, ``valid`` are ``(1, N)`` over all views' pixels (view 0 first,
    each view's ``(C_v, h_v, w_v)`` flattened); ``shapes`` the views' shapes.
    ``light[k][v]`` maps galaxy ``k``'s stamp to its light on view ``v``. Star ``j``'s
    fluxes are coefficient columns ``j C .. (j + 1) C`` (the primary's bands), then each
    view's background terms in view order; between them, the wings of the galaxies
    ``wing_owner`` (:func:`~galprism.scene.model.galaxy_shares`, on the primary view),
    whose prior mean ``linear_mean`` holds (``y`` is the data less its light).
    """

    y: Tensor
    noise_var: Tensor
    valid: Tensor
    shapes: list[tuple[int, int, int]]
    operator: SourceSum | None
    light: list[list[LinearOperator]]
    linear: FreeformModel | None
    y_white: Tensor
    noise_white: Tensor
    n_galaxies: int
    n_stars: int
    scales: np.ndarray
    flux_factor: np.ndarray
    band_index: tuple[int, ...]
    to_normalised: list[np.ndarray]
    support: Tensor
    wing_owner: np.ndarray
    linear_mean: Tensor

    def split(self, flat: Tensor) -> list[Tensor]:
        """``(..., N)`` into each view's ``(..., C_v, h_v, w_v)``."""
        sizes = [int(np.prod(s)) for s in self.shapes]
        parts = torch.split(flat, sizes, dim=-1)
        return [p.reshape(*flat.shape[:-1], *s) for p, s in zip(parts, self.shapes, strict=True)]


def _planes(h: int, w: int) -> list[Tensor]:
    yy, xx = torch.meshgrid(
        torch.linspace(-1.0, 1.0, h, dtype=torch.float64),
        torch.linspace(-1.0, 1.0, w, dtype=torch.float64),
        indexing="ij",
    )
    return [torch.ones_like(xx), xx, yy]


def build_joint_model(
    obs: Observation,
    views: Sequence[ViewBox],
    frame: Frame,
    galaxies: np.ndarray,
    scales: np.ndarray,
    stars: np.ndarray,
    *,
    star_scale: np.ndarray | None = None,
    background: bool = True,
    background_scale: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> JointModel:
    """The joint linear model of one blend over the primary box ``obs`` and ``views``.

    Parameters are those of :func:`~galprism.scene.model.build_blend_model`; ``views``
    are the matched views' windows on the box's model frame (``f`` times the box's size,
    ``f`` the primary's grid factor). ``background_scale`` applies to every view.

    Raises
    ------
    ShapeError, InputError
        As :func:`~galprism.scene.model.build_blend_model`, or a view's window is not the
        box's model frame, or a star is modelled in a band the primary lacks.
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
    for v in views:
        if v.shape[1:] != fine[1:]:
            raise ShapeError(f"{obs.name}: view window {v.shape} is not the box's frame {fine}")
        if len(stars) and not set(v.band_index) <= set(index):
            raise InputError(
                f"{obs.name}: a view has bands the image lacks; their star fluxes are not modelled"
            )
    flux_factor = obs.flux_factors_to(frame.ab_zeropoint) / frame.flux_scale
    stamp = tuple(int(s) for s in frame.shape)
    # Ownership and wings fitted on the primary view, as in build_blend_model; the wings
    # are seen in every view.
    shares = galaxy_shares(obs, galaxies, stars, flux_factor, stamp, f)
    support = shares.support
    norms = [flux_factor, *(np.asarray(v.to_normalised, np.float64) for v in views)]
    images = [obs.image, *(v.image for v in views)]
    variances = [obs.variance, *(v.variance for v in views)]
    valids = [obs.valid, *(v.valid for v in views)]
    shapes = [tuple(int(s) for s in a.shape) for a in images]
    y_parts, var_parts = [], []
    for img, var, ok, k in zip(images, variances, valids, norms, strict=True):
        y_parts.append(torch.from_numpy(img * k[:, None, None]).reshape(-1))
        var_parts.append(
            torch.from_numpy(np.where(ok, var * k[:, None, None] ** 2, 1.0)).reshape(-1)
        )
    y = torch.cat(y_parts)[None]
    noise_var = torch.cat(var_parts)[None]
    valid = torch.from_numpy(np.concatenate([np.asarray(v).reshape(-1) for v in valids]))[None]

    # Broad priors for the linear terms from the primary box, as in build_blend_model.
    pv = obs.valid
    peak = float(np.abs(np.where(pv, obs.image * flux_factor[:, None, None], 0.0)).max())
    sigma = float(np.sqrt(np.median((obs.variance * flux_factor[:, None, None] ** 2)[pv])))
    n_total = int(y.shape[1])
    cols: list[Tensor] = []
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    for pos in stars:
        block = torch.zeros(n_total, c, dtype=torch.float64)
        op = StarOperator(np.array(obs.psf), pos, obs.shape, per_band=True, name=f"{obs.name} PSF")
        block[offsets[0] : offsets[1]] = op.columns.reshape(c, -1).T
        for v, view in enumerate(views, start=1):
            cv = view.shape[0]
            size = 2 * int(math.ceil(3.0 * view.kernel_fwhm)) + 1
            kern = np.stack([model_kernel(view.kernel_fwhm, size)] * cv)
            star = StarOperator(kern, pos * f + (f - 1) / 2.0, view.shape, per_band=True)
            vcols = star.columns.reshape(cv, -1).T  # (n_v, C_v)
            for b, prior_band in enumerate(view.band_index):
                block[offsets[v] : offsets[v + 1], index.index(prior_band)] += vcols[:, b]
        cols.append(block)
    for shape in shares.wing_shapes:
        block = torch.zeros(n_total, c, dtype=torch.float64)
        for band in range(c):
            img = torch.zeros((c, h, w), dtype=torch.float64)
            img[band] = torch.from_numpy(shape)
            block[offsets[0] : offsets[1], band] = img.reshape(-1)
        # On the model frame of the views: the same unit-flux shape, each image pixel
        # spread over its f x f model pixels (the wing is smooth on that scale).
        fine_shape = torch.from_numpy(np.kron(shape, np.ones((f, f))) / f**2)
        for v, view in enumerate(views, start=1):
            cv = view.shape[0]
            for b, prior_band in enumerate(view.band_index):
                if prior_band not in index:
                    continue  # a band the primary lacks: its wing flux is not modelled
                img = torch.zeros((cv, h * f, w * f), dtype=torch.float64)
                img[b] = fine_shape
                block[offsets[v] : offsets[v + 1], index.index(prior_band)] += img.reshape(-1)
        cols.append(block)
    if background:
        for v, (cv, hv, wv) in enumerate(shapes):
            for plane in _planes(hv, wv):
                for band in range(cv):
                    img = torch.zeros((cv, hv, wv), dtype=torch.float64)
                    img[band] = plane
                    col = torch.zeros(n_total, 1, dtype=torch.float64)
                    col[offsets[v] : offsets[v + 1], 0] = img.reshape(-1)
                    cols.append(col)
    linear = None
    columns = torch.cat(cols, dim=1) if cols else torch.zeros(n_total, 0, dtype=torch.float64)
    if columns.shape[1]:
        if star_scale is None:
            star_scale = np.full(len(stars), BROAD * max(peak, sigma) / float(obs.psf.max()))
        star_scale = np.asarray(star_scale, dtype=np.float64).reshape(-1)
        if star_scale.shape[0] != len(stars) or not (star_scale > 0).all():
            raise ShapeError(f"{obs.name}: star flux scales must be {len(stars)} positive values")
        diag = [np.repeat(star_scale, c), shares.wing_sd]
        if background:
            for v, (cv, _, _) in enumerate(shapes):
                if background_scale is not None:
                    bs = float(background_scale)
                elif v == 0:
                    bs = BROAD * max(peak, sigma)
                else:
                    k = norms[v][:, None, None]
                    ok = valids[v]
                    vpeak = float(np.abs(np.where(ok, images[v] * k, 0.0)).max()) if ok.any() else 0
                    vsig = float(np.sqrt(np.median((variances[v] * k**2)[ok]))) if ok.any() else 0
                    bs = BROAD * max(vpeak, vsig, peak, sigma)
                diag.append(np.full(BACKGROUND_TERMS * cv, bs))
        factors = torch.diag(torch.from_numpy(np.concatenate(diag)))[None]
        linear = FreeformModel([[]], columns[None], factors, noise_var.sqrt(), valid, 0, fine)
    linear_mean = shares.linear_mean(columns.shape[1], len(stars), c)
    # The linear terms are drawn about their prior mean: the data less the mean's light.
    y = y - (columns @ linear_mean)[None]
    if linear is not None:
        y_white, noise_white = linear.whiten(y)
        whitening = linear.whitening()
    else:
        y_white, noise_white, whitening = y, noise_var, []

    psf = torch.from_numpy(np.array(obs.prior_grid_psf(f), dtype=np.float64))
    blur: list[LinearOperator] = [Downsample(f, fine)] if f > 1 else []
    blur.append(Convolve(psf, fine, name=f"{obs.name} PSF"))
    full = tuple(range(stamp[0]))

    def chain(
        place: LinearOperator, bands: tuple[int, ...], s: float, k: int
    ) -> list[LinearOperator]:
        select = [SelectBands(bands, stamp)] if bands != full else []
        return [place, *select, Weight(support[k].expand(stamp), stamp), Scale(float(s), stamp)]

    light, terms = [], []
    for k, (pos, s) in enumerate(zip(galaxies, scales, strict=True)):
        centre = pos * f + (f - 1) / 2.0
        own = [Composition([*blur, *chain(PlaceStamp(centre, (c, *stamp[1:]), fine), index, s, k)])]
        for view in views:
            cv = view.shape[0]
            place = PlaceStamp(centre, (cv, *stamp[1:]), view.shape)
            own.append(Composition(chain(place, tuple(view.band_index), s, k)))
        light.append(own)
        terms.append(Composition([*whitening, Mask(valid[0]), StackViews(own)]))
    return JointModel(
        y=y.to(dtype),
        noise_var=noise_var.to(dtype),
        valid=valid,
        shapes=shapes,
        operator=SourceSum(terms) if terms else None,
        light=light,
        linear=linear,
        y_white=y_white.to(dtype),
        noise_white=noise_white.to(dtype),
        n_galaxies=len(galaxies),
        n_stars=len(stars),
        scales=scales,
        flux_factor=flux_factor,
        band_index=index,
        to_normalised=norms,
        support=support,
        wing_owner=shares.wing_owner,
        linear_mean=linear_mean,
    )


def sample_joint(
    model: JointModel,
    prior: nn.Module | None,
    sampler: SamplerConfig,
    generator: torch.Generator,
    linear_generator: torch.Generator,
    *,
    device: str = "cpu",
) -> list[BlendSamples]:
    """Joint posterior samples of a blend over all its views, one
    :class:`~galprism.scene.model.BlendSamples` per view (the same galaxy draws in each;
    ``coefficients`` hold every view's terms).
    """
    n_s = sampler.n_samples
    n_total = int(model.y.shape[1])
    c = model.shapes[0][0]
    x = draw_galaxies(model, prior, sampler, generator, device, "sample_joint")
    if x is not None:
        lights = torch.stack(
            [
                torch.cat([op.apply(x[:, k]).reshape(n_s, -1) for op in ops], dim=1)
                for k, ops in enumerate(model.light)
            ],
            dim=1,
        )  # (S, K, N)
        galaxies = x * model.support[None] * torch.from_numpy(model.scales)[:, None, None, None]
    else:
        lights = torch.zeros(n_s, 0, n_total, dtype=torch.float64)
        galaxies = torch.zeros(n_s, 0, c, 1, 1, dtype=torch.float64)
    y = model.y.to(torch.float64)
    if model.linear is None:
        coefficients = torch.zeros(n_s, 0, dtype=torch.float64)
        stars = torch.zeros(n_s, 0, n_total, dtype=torch.float64)
        bkg = torch.zeros(n_s, n_total, dtype=torch.float64)
    else:
        residual = (y - lights.sum(1)) * model.valid.to(torch.float64)
        coefficients, stars, wing, bkg = draw_linear(model, residual, c, linear_generator)
        lights[:, model.wing_owner] += wing
    sources = torch.cat([lights, stars], dim=1)
    wing_flux = wing_fluxes(model, coefficients, c)
    out = []
    for src, back in zip(model.split(sources), model.split(bkg), strict=True):
        out.append(
            BlendSamples(
                galaxies=galaxies,
                coefficients=coefficients,
                sources=src,
                background=back,
                wing_flux=wing_flux,
            )
        )
    return out

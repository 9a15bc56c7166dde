"""One observed cutout with everything needed to model it, and batches of them.

An :class:`Observation` holds a cutout's image, noise variance, valid-pixel mask, PSF,
celestial WCS and photometric convention, and checks that they agree (in the spirit of
scarlet2's ``Observation``). It knows how to crop itself around a center to a prior's
size and how to build its forward operator from a prior's :class:`~galprism.frame.Frame`
(:meth:`Observation.operator_for`), each source's term in one piece:

``A_k = [whitening] o Mask(valid) o Downsample(f) o Convolve(PSF on the prior grid)
o [SelectBands] o [Mask(support of source k)]``

with ``f`` = cutout pixel scale / prior pixel scale (the grid factor), ``SelectBands``
the prior's bands that the cutout observes (:meth:`Observation.band_index`), the whitening of
free-form components (:mod:`galprism.freeform`) and source supports
(:mod:`galprism.support`) passed in when the operator is built, and the PSF left out
for priors whose sources already contain it. :func:`stack_observations` turns a list of
equally shaped observations into the batched tensors the posterior sampler takes.

Conventions: arrays are ``(C, H, W)`` in the cutout's own flux units; masked pixels hold
0 in the image and 1 in the variance so that every tensor handed to a sampler is finite
while the mask operator removes them; pixel coordinates are 0-based (``x`` = column,
``y`` = row), as in numpy and astropy's ``pixel_to_world``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from astropy.wcs import WCS
from torch import Tensor

from .errors import InputError, PSFError, ShapeError
from .frame import Frame
from .io.flux import flux_factor
from .io.psf import pad_psf, prepare_psf, refine_psf
from .io.wcsutil import refine_wcs, shift_wcs
from .notes import Note, NoteKind
from .operators import (
    Composition,
    Convolve,
    Downsample,
    Identity,
    LinearOperator,
    Mask,
    SelectBands,
    SourceSum,
)
from .support import source_operator

__all__ = [
    "Note",
    "NoteKind",
    "Observation",
    "ObservationBatch",
    "grid_factor",
    "match_bands",
    "stack_observations",
]

#: relative tolerance when deciding that one pixel scale is an integer multiple of another
SCALE_TOLERANCE = 1e-3


@dataclass(frozen=True, eq=False)
class Observation:
    """A cutout and its noise, mask, PSF, WCS and flux convention.

    Parameters
    ----------
    image
        ``(C, H, W)`` or ``(H, W)`` pixel values in linear flux units.
    variance
        Per-pixel noise variance, same shape as ``image`` (or broadcastable to it).
    psf
        ``(kh, kw)`` or ``(C, kh, kw)``; odd-sized, centered; normalised to unit sum here.
    valid
        True where a pixel is valid (observed and usable); default all valid. Pixels with
        a non-finite image or variance value are removed automatically.
    wcs
        Celestial WCS of the image plane, or None.
    bunit
        Flux unit of the image (the ``BUNIT`` keyword), or None.
    pixel_scale
        Arcseconds per pixel, or None when unknown.
    zeropoint
        AB zero point of the image values (every band), or None when unknown.
    name
        How the observation is named in messages (its file name).
    checksum
        SHA-256 of the source file, recorded in outputs.
    origin
        Pixel ``(x, y)`` of the source file that is pixel ``(0, 0)`` here (changes when
        cropping).
    notes
        Facts about how the observation was assembled (noise estimated, PSF
        renormalised...), recorded in outputs.
    bands
        Band names, one per image band, or None when unnamed (then the bands are a
        prior's own, in order, and their number must be the prior's).
    band_zeropoints
        AB zero point of each band, or None; when given it replaces ``zeropoint``.

    Raises
    ------
    ShapeError, PSFError, InputError
        If the pieces disagree, the PSF is unusable or larger than the image, the noise
        variance is not positive at a valid pixel, or no pixel is valid.
    """

    image: np.ndarray
    variance: np.ndarray
    psf: np.ndarray
    valid: np.ndarray | None = None
    wcs: WCS | None = None
    bunit: str | None = None
    pixel_scale: float | None = None
    zeropoint: float | None = None
    name: str = "<observation>"
    checksum: str | None = None
    origin: tuple[int, int] = (0, 0)
    notes: tuple[Note, ...] = field(default_factory=tuple)
    bands: tuple[str, ...] | None = None
    band_zeropoints: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        name = self.name
        image = np.array(self.image, dtype=np.float64, copy=True)
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise ShapeError(
                f"{name}: image must be (H, W) or (bands, H, W), got shape {image.shape}"
            )
        if min(image.shape) == 0:
            raise ShapeError(f"{name}: image is empty (shape {image.shape})")
        try:
            variance = np.array(
                np.broadcast_to(np.asarray(self.variance, dtype=np.float64), image.shape)
            )
        except ValueError as exc:
            raise ShapeError(
                f"{name}: variance of shape {np.shape(self.variance)} does not match the image "
                f"{image.shape}"
            ) from exc
        if self.valid is None:
            valid = np.ones(image.shape, bool)
        else:
            try:
                valid = np.array(np.broadcast_to(np.asarray(self.valid, dtype=bool), image.shape))
            except ValueError as exc:
                raise ShapeError(
                    f"{name}: valid-pixel mask of shape {np.shape(self.valid)} does not match "
                    f"the image {image.shape}"
                ) from exc
        finite = np.isfinite(image)
        if not finite.any():
            raise InputError(f"{name}: image has no finite pixel (all NaN or inf)")
        valid &= finite & np.isfinite(variance)
        bad_var = valid & (variance <= 0)
        if bad_var.any():
            raise InputError(
                f"{name}: noise variance is zero or negative at {int(bad_var.sum())} unmasked "
                "pixel(s)"
            )
        if not valid.any():
            raise InputError(f"{name}: all pixels are masked (no valid pixel left)")
        image[~valid] = 0.0
        variance[~valid] = 1.0
        c, h, w = image.shape
        psf, _ = prepare_psf(self.psf, c, f"{name} PSF")
        kh, kw = psf.shape[-2:]
        if kh > 2 * h - 1 or kw > 2 * w - 1:
            raise PSFError(
                f"{name}: PSF of {kh}x{kw} pixels is larger than the {h}x{w} image can use"
            )
        if self.wcs is not None and (not self.wcs.has_celestial or self.wcs.naxis != 2):
            raise InputError(
                f"{name}: WCS must be a 2-axis celestial WCS, got {self.wcs.naxis} axes"
            )
        if self.pixel_scale is not None and not (
            math.isfinite(self.pixel_scale) and self.pixel_scale > 0
        ):
            raise InputError(f"{name}: pixel scale must be positive, got {self.pixel_scale}")
        if self.zeropoint is not None and not math.isfinite(self.zeropoint):
            raise InputError(f"{name}: zero point must be finite, got {self.zeropoint}")
        if self.bands is not None:
            bands = tuple(str(b).strip() for b in self.bands)
            if len(bands) != c or not all(bands):
                raise InputError(f"{name}: {len(bands)} band name(s) for an image of {c} band(s)")
            if len({b.lower() for b in bands}) != c:
                raise InputError(f"{name}: band names {', '.join(bands)} are not distinct")
            object.__setattr__(self, "bands", bands)
        if self.band_zeropoints is not None:
            zps = tuple(float(z) for z in self.band_zeropoints)
            if len(zps) != c or not all(math.isfinite(z) for z in zps):
                raise InputError(
                    f"{name}: band zero points must be {c} finite value(s), got {list(zps)}"
                )
            object.__setattr__(self, "band_zeropoints", zps)
        for attr, value in (
            ("image", image),
            ("variance", variance),
            ("valid", valid),
            ("psf", psf),
        ):
            value.setflags(write=False)
            object.__setattr__(self, attr, value)
        notes = tuple(self.notes)
        if not all(isinstance(n, Note) for n in notes):
            raise InputError(f"{name}: notes must be galprism.observation.Note objects")
        object.__setattr__(self, "notes", notes)

    # -- shape ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.image.shape)  # type: ignore[return-value]

    @property
    def n_bands(self) -> int:
        return int(self.image.shape[0])

    # -- geometry ------------------------------------------------------------------
    def default_center(self) -> tuple[float, float]:
        """Pixel ``(x, y)`` around which a same-size crop is the identity: ``(W//2, H//2)``."""
        _, h, w = self.shape
        return float(w // 2), float(h // 2)

    def pixel_of(self, ra: float, dec: float) -> tuple[float, float]:
        """0-based pixel ``(x, y)`` of a sky position (degrees) through the WCS.

        Raises
        ------
        InputError
            If the observation has no WCS or the position does not project.
        """
        if self.wcs is None:
            raise InputError(
                f"{self.name}: has no celestial WCS, cannot place RA,Dec = {ra},{dec}; "
                "give the center in pixels"
            )
        x, y = self.wcs.all_world2pix([[ra, dec]], 0)[0]
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(f"{self.name}: RA,Dec = {ra},{dec} does not project onto the image")
        return float(x), float(y)

    def crop(self, center: tuple[float, float] | None, size: tuple[int, int]) -> Observation:
        """Crop or pad to ``size`` = (ny, nx) pixels around ``center`` = (x, y).

        The output's pixel ``(nx//2, ny//2)`` is the input pixel nearest to ``center``,
        so the default center with an equal size returns the same pixels. Padding is
        masked (image 0, variance 1); the WCS is shifted accordingly.

        Raises
        ------
        InputError
            If the center is outside the image or the crop holds no valid pixel.
        """
        ny, nx = (int(s) for s in size)
        if ny < 1 or nx < 1:
            raise ShapeError(f"{self.name}: crop size must be positive, got {ny}x{nx}")
        c, h, w = self.shape
        cx, cy = self.default_center() if center is None else center
        if not (np.isfinite(cx) and np.isfinite(cy)) or not (
            -0.5 <= cx < w - 0.5 and -0.5 <= cy < h - 0.5
        ):
            raise InputError(
                f"{self.name}: center ({cx:.2f}, {cy:.2f}) is outside the {w}x{h} image"
            )
        x0 = math.floor(cx + 0.5) - nx // 2
        y0 = math.floor(cy + 0.5) - ny // 2
        if (x0, y0) == (0, 0) and (ny, nx) == (h, w):
            return self
        image = np.zeros((c, ny, nx))
        variance = np.ones((c, ny, nx))
        valid = np.zeros((c, ny, nx), bool)
        sy = slice(max(y0, 0), min(y0 + ny, h))
        sx = slice(max(x0, 0), min(x0 + nx, w))
        dy = slice(sy.start - y0, sy.stop - y0)
        dx = slice(sx.start - x0, sx.stop - x0)
        image[:, dy, dx] = self.image[:, sy, sx]
        variance[:, dy, dx] = self.variance[:, sy, sx]
        valid[:, dy, dx] = self.valid[:, sy, sx]
        if not valid.any():
            raise InputError(
                f"{self.name}: no valid pixel in the {nx}x{ny} crop around ({cx:.2f}, {cy:.2f})"
            )
        # Kernel offsets beyond +-(n - 1) never link two pixels of an n-pixel image, so
        # trimming the PSF to 2n - 1 only loses flux that falls outside the crop anyway
        # (Convolve renormalises the trimmed kernel: a change of the dropped wings' flux).
        psf = self.psf
        kh, kw = psf.shape[-2:]
        th, tw = min(kh, 2 * ny - 1), min(kw, 2 * nx - 1)
        if (th, tw) != (kh, kw):
            oy, ox = (kh - th) // 2, (kw - tw) // 2
            psf = psf[:, oy : oy + th, ox : ox + tw]
        wcs = None if self.wcs is None else shift_wcs(self.wcs, x0, y0)
        return replace(
            self,
            image=image,
            variance=variance,
            valid=valid,
            psf=psf,
            wcs=wcs,
            origin=(self.origin[0] + x0, self.origin[1] + y0),
        )

    # -- modelling -----------------------------------------------------------------
    def grid_factor(self, prior_pixel_scale: float | None) -> int:
        """Integer ratio of this cutout's pixel scale to a prior's (1 when either is unknown).

        Raises
        ------
        InputError
            If the ratio is not a positive integer, naming both scales.
        """
        return grid_factor(self.pixel_scale, prior_pixel_scale, self.name)

    @property
    def zeropoints(self) -> tuple[float, ...] | None:
        """AB zero point of each band (``band_zeropoints``, else ``zeropoint`` for every band),
        or None when unknown."""
        if self.band_zeropoints is not None:
            return self.band_zeropoints
        if self.zeropoint is None:
            return None
        return (float(self.zeropoint),) * self.n_bands

    def flux_factors_to(self, zeropoint: float | None) -> np.ndarray:
        """``(C,)`` factors converting each band's fluxes to ``zeropoint`` (1 when either is
        unknown)."""
        zps = self.zeropoints
        if zeropoint is None or zps is None:
            return np.ones(self.n_bands)
        return np.array([flux_factor(z, zeropoint) for z in zps])

    def flux_factor_to(self, zeropoint: float | None) -> float:
        """Factor converting this cutout's fluxes to ``zeropoint`` (1 when either is unknown).

        Raises
        ------
        InputError
            If the bands have different zero points (see :meth:`flux_factors_to`).
        """
        factors = self.flux_factors_to(zeropoint)
        if np.ptp(factors) > 0:
            raise InputError(
                f"{self.name}: bands have different zero points; one flux factor does not apply"
            )
        return float(factors[0])

    def band_index(self, frame: Frame, prior: str = "the prior") -> tuple[int, ...]:
        """Index of each of this cutout's bands among ``frame``'s bands (see
        :func:`match_bands`)."""
        return match_bands(self, frame, prior)

    def prior_grid_psf(self, grid_factor: int) -> np.ndarray:
        """The PSF on a grid ``grid_factor`` times finer (see :mod:`galprism.io.psf`)."""
        return refine_psf(self.psf, grid_factor)

    def prior_grid_wcs(self, grid_factor: int) -> WCS | None:
        """The celestial WCS of the prior's grid covering this cutout."""
        return None if self.wcs is None else refine_wcs(self.wcs, grid_factor)

    def operator_for(
        self,
        frame: Frame,
        sources: Sequence[str],
        *,
        supports: Mapping[str, Tensor] | None = None,
        whitening: Sequence[LinearOperator] = (),
        psf_included: bool = False,
    ) -> SourceSum:
        """The whole operator from the sources on ``frame``'s grid to this cutout.

        Parameters
        ----------
        frame
            The prior's grid: its shape and pixel scale give the grid factor.
        sources
            Source names, in the order of the stacked state.
        supports
            Source name -> ``(C, H, W)`` boolean mask on the prior grid outside which that
            source is zero (:mod:`galprism.support`).
        whitening
            Operators applied to the data after the mask, outermost first (free-form
            components integrated out, :meth:`galprism.freeform.FreeformModel.whitening`).
        psf_included
            The sources already contain the PSF (adversarial-SVD bases): no convolution.

        Raises
        ------
        ShapeError, InputError
            If the cutout is not the frame's size divided by the grid factor, or its pixel
            scale is no integer multiple of the frame's.
        """
        index = self.band_index(frame)
        grid_factor = self.grid_factor(frame.pixel_scale)
        shape = _check_prior_shape(self, frame.shape, grid_factor, len(index))
        psf = torch.from_numpy(np.array(self.prior_grid_psf(grid_factor), dtype=np.float64))
        blur = _blur_operators(psf, shape, index, grid_factor, f"{self.name} PSF")
        if psf_included:
            blur = [op for op in blur if not isinstance(op, Convolve)]
        pieces = [*whitening, Mask(torch.from_numpy(self.valid.copy())), *blur]
        return source_operator(sources, pieces, supports or {})


def match_bands(obs: Observation, frame: Frame, prior: str = "the prior") -> tuple[int, ...]:
    """Index of each band of ``obs`` among the bands of ``frame`` (a prior's grid).

    Named bands are matched by name (ignoring case), so an input may observe any of the
    prior's bands in any order; unnamed bands (on either side) are the prior's own, in
    order, and must be as many.

    Raises
    ------
    InputError
        Naming the cutout, if a band is not the prior's or the band counts differ where
        the bands have no names.
    """
    if not frame.is_image:
        raise ShapeError(f"{obs.name}: prior {prior} has no image grid (shape {frame.shape})")
    c = int(frame.shape[0])
    if frame.bands is None or obs.bands is None:
        if obs.n_bands == c:
            return tuple(range(c))
        if frame.bands is None:
            raise ShapeError(f"{obs.name}: cutout has {obs.n_bands} band(s) but {prior} models {c}")
        raise InputError(
            f"{obs.name}: cutout has {obs.n_bands} band(s) without names, which cannot be matched "
            f"to the {c} bands ({', '.join(frame.bands)}) of {prior}"
        )
    lookup = {b.lower(): i for i, b in enumerate(frame.bands)}
    index = [_band_lookup(b, lookup) for b in obs.bands]
    unknown = [b for b, i in zip(obs.bands, index, strict=True) if i is None]
    if unknown:
        raise InputError(
            f"{obs.name}: band(s) {', '.join(unknown)} of the cutout's {obs.n_bands} band(s) are "
            f"not modelled by {prior} (bands {', '.join(frame.bands)})"
        )
    if len(set(index)) != len(index):
        raise InputError(
            f"{obs.name}: bands {', '.join(obs.bands)} name the same band of {prior} twice"
        )
    return tuple(int(i) for i in index)


def _band_lookup(name: str, lookup: dict[str, int]) -> int | None:
    """A prior band's index for an input band name: the name itself (any case), else its
    last part after ``-``, ``_`` or ``.`` (survey headers write ``FILTER = 'HSC-I'``)."""
    key = name.strip().lower()
    if key in lookup:
        return lookup[key]
    tail = key.replace("_", "-").replace(".", "-").rsplit("-", 1)[-1]
    return lookup.get(tail)


def _blur_operators(
    psf: Tensor, shape: tuple[int, int, int], index: Sequence[int], factor: int, name: str
) -> list[LinearOperator]:
    """``Downsample o Convolve o SelectBands`` from a prior grid ``shape`` to a cutout that
    observes the bands ``index``, outermost first (no selection when it observes them all)."""
    c, h, w = shape
    observed = (len(index), h, w)
    ops: list[LinearOperator] = [Downsample(factor, observed)] if factor > 1 else []
    ops.append(Convolve(psf, observed, name=name))
    if tuple(index) != tuple(range(c)):
        ops.append(SelectBands(index, shape))
    return ops


def grid_factor(cutout_scale: float | None, prior_scale: float | None, name: str) -> int:
    """Integer ratio ``cutout_scale / prior_scale``; 1 when either is unknown.

    Raises
    ------
    InputError
        If the cutout's pixels are smaller than the prior's or the ratio is not an
        integer, naming both scales.
    """
    if cutout_scale is None or prior_scale is None:
        return 1
    ratio = cutout_scale / prior_scale
    n = round(ratio)
    if n < 1 or abs(ratio - n) > SCALE_TOLERANCE * ratio:
        raise InputError(
            f"{name}: pixel scale {cutout_scale:.6g} arcsec is not an integer multiple of the "
            f"prior's {prior_scale:.6g} arcsec (ratio {ratio:.4g})"
        )
    return int(n)


def _check_prior_shape(
    obs: Observation, prior_shape: Sequence[int], grid_factor: int, n_bands: int | None = None
) -> tuple[int, int, int]:
    """The prior's ``(C, H, W)`` after checking that ``obs`` is its grid downsampled by
    ``grid_factor``, with ``n_bands`` of its bands (all by default)."""
    shape = tuple(int(s) for s in prior_shape)
    if len(shape) != 3:
        raise ShapeError(f"prior shape must be (C, H, W), got {shape}")
    c, h, w = shape
    if h % grid_factor or w % grid_factor:
        raise ShapeError(
            f"prior grid {h}x{w} is not divisible by the downsampling factor {grid_factor}"
        )
    observed = (c if n_bands is None else n_bands, h // grid_factor, w // grid_factor)
    if obs.shape != observed:
        raise ShapeError(
            f"{obs.name}: cutout shape {obs.shape} does not match the prior grid {shape} "
            f"downsampled by {grid_factor}; crop it first"
        )
    return shape  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class ObservationBatch:
    """Batched tensors of equally shaped observations, ready for a posterior sampler.

    Attributes
    ----------
    frame
        The prior's grid the observations are modelled on.
    y
        ``(B, c, h, w)`` data converted to the prior's flux scale (0 at masked pixels),
        ``c`` the bands observed.
    noise_var
        ``(B, c, h, w)`` noise variance on that scale (1 at masked pixels).
    forward
        ``Downsample o Convolve [o SelectBands]`` without the mask, one source: the model
        image of a source everywhere, masked pixels included.
    valid
        ``(B, c, h, w)`` boolean.
    flux_factors
        ``(B, c)`` factor from each cutout band's units to the prior's.
    grid_factor
        Cutout pixel / prior pixel, shared by the batch.
    band_index
        Index of each observed band among the prior's (:func:`match_bands`), shared by
        the batch.
    """

    frame: Frame
    y: Tensor
    noise_var: Tensor
    forward: Composition
    valid: Tensor
    flux_factors: Tensor
    grid_factor: int
    band_index: tuple[int, ...]

    def operator_for(
        self,
        sources: Sequence[str],
        *,
        supports: Mapping[str, Tensor] | None = None,
        whitening: Sequence[LinearOperator] = (),
        psf_included: bool = False,
        amplitudes: Mapping[str, Tensor] | None = None,
    ) -> SourceSum:
        """The batched operator of :meth:`Observation.operator_for`, built in one piece.

        ``supports`` masks are ``(C, H, W)`` (shared) or ``(B, C, H, W)`` (one per
        observation); ``whitening`` operators are batched like the data; ``amplitudes``
        ``(B,)`` scale the normalised sources (:mod:`galprism.amplitude`).
        """
        mask = Mask(self.valid, shape=tuple(self.valid.shape[1:]))
        return source_operator(
            sources, [*whitening, mask, *self._blur(psf_included)], supports or {}, amplitudes
        )

    def model_operator(self, *, psf_included: bool = False) -> Composition:
        """``Downsample o Convolve`` without the mask (no convolution when the sources
        already contain the PSF): a source's light on the cutout grid, masked pixels
        included."""
        ops = self._blur(psf_included)
        return Composition(ops) if ops else Composition([Identity(self.frame.shape)])

    def _blur(self, psf_included: bool) -> list[LinearOperator]:
        return [op for op in self.forward.ops if not (psf_included and isinstance(op, Convolve))]


def stack_observations(
    observations: Sequence[Observation],
    frame: Frame,
    *,
    dtype: torch.dtype = torch.float32,
) -> ObservationBatch:
    """Stack observations into batched data and noise on ``frame``'s grid and flux scale.

    Parameters
    ----------
    observations
        Cutouts already cropped to the frame's size (divided by the grid factor), all
        with the same shape and grid factor.
    frame
        The prior's grid and flux convention (grid factor and flux conversion).
    dtype
        Floating dtype of the tensors.

    Raises
    ------
    ShapeError
        If the observations disagree in shape, bands or grid factor.
    InputError
        If an observation's bands are not the frame's (:func:`match_bands`).
    """
    if not observations:
        raise ShapeError("stack_observations: no observation given")
    indices = {o.band_index(frame) for o in observations}
    if len(indices) != 1:
        raise ShapeError(
            "stack_observations: observations observe different bands of the prior "
            f"{sorted(indices)}"
        )
    index = indices.pop()
    factors = {o.grid_factor(frame.pixel_scale) for o in observations}
    if len(factors) != 1:
        raise ShapeError(
            f"stack_observations: observations have different grid factors {sorted(factors)}"
        )
    f = factors.pop()
    shape = _check_prior_shape(observations[0], frame.shape, f, len(index))
    for o in observations[1:]:
        _check_prior_shape(o, shape, f, len(index))
    zeropoint = frame.ab_zeropoint
    flux = np.stack([o.flux_factors_to(zeropoint) for o in observations])  # (B, c)
    k3 = flux[:, :, None, None]
    y = np.stack([o.image for o in observations]) * k3
    var = np.where(
        np.stack([o.valid for o in observations]),
        np.stack([o.variance for o in observations]) * k3**2,
        1.0,
    )
    valid = np.stack([o.valid for o in observations])
    psfs = [o.prior_grid_psf(f) for o in observations]
    kh = max(p.shape[-2] for p in psfs)
    kw = max(p.shape[-1] for p in psfs)
    psf = np.stack([pad_psf(p, (kh, kw)) for p in psfs])
    blur = Composition(_blur_operators(torch.from_numpy(psf), shape, index, f, "batch PSF"))
    return ObservationBatch(
        frame=frame,
        y=torch.from_numpy(y).to(dtype),
        noise_var=torch.from_numpy(var).to(dtype),
        forward=blur,
        valid=torch.from_numpy(valid),
        flux_factors=torch.from_numpy(flux),
        grid_factor=f,
        band_index=index,
    )

"""One observed cutout with everything needed to model it, and batches of them.

An :class:`Observation` holds a cutout's image, noise variance, valid-pixel mask, PSF,
celestial WCS and photometric convention, and checks that they agree (in the spirit of
scarlet2's ``Observation``). It knows how to crop itself around a centre to a prior's
size and how to build its forward operator onto a prior's grid:

``A = Mask o Downsample(f) o Convolve(PSF on the prior grid)``

with ``f`` = cutout pixel scale / prior pixel scale. :func:`stack_observations` turns a
list of equally shaped observations into the batched tensors the posterior sampler takes.

Conventions: arrays are ``(C, H, W)`` in the cutout's own flux units; masked pixels hold
0 in the image and 1 in the variance so that every tensor handed to a sampler is finite
while the mask operator removes them; pixel coordinates are 0-based (``x`` = column,
``y`` = row), as in numpy and astropy's ``pixel_to_world``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from astropy.wcs import WCS
from torch import Tensor

from .errors import InputError, PSFError, ShapeError
from .io.flux import flux_factor
from .io.psf import pad_psf, prepare_psf, refine_psf
from .io.wcsutil import refine_wcs, shift_wcs
from .operators import Composition, Convolve, Downsample, Mask, SourceSum

__all__ = [
    "Note",
    "NoteKind",
    "Observation",
    "ObservationBatch",
    "grid_factor",
    "stack_observations",
]

#: relative tolerance when deciding that one pixel scale is an integer multiple of another
SCALE_TOLERANCE = 1e-3


class NoteKind(enum.Enum):
    """What a :class:`Note` is about; the pipeline warns on the kinds that assume something."""

    MASK = "mask"
    NOISE = "noise"
    NOISE_ESTIMATED = "noise estimated"
    PSF_RENORMALISED = "PSF renormalised"
    ZEROPOINT = "zero point"


@dataclass(frozen=True)
class Note:
    """A fact about how an observation was assembled: its kind, and the sentence recorded in
    the outputs' header comments."""

    kind: NoteKind
    text: str

    def __str__(self) -> str:
        return self.text


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
        ``(kh, kw)`` or ``(C, kh, kw)``; odd-sized, centred; normalised to unit sum here.
    mask
        True where a pixel is valid; default all valid. Pixels with a non-finite image or
        variance value are removed automatically.
    wcs
        Celestial WCS of the image plane, or None.
    bunit
        Flux unit of the image (the ``BUNIT`` keyword), or None.
    pixel_scale
        Arcseconds per pixel, or None when unknown.
    zeropoint
        AB zero point of the image values, or None when unknown.
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

    Raises
    ------
    ShapeError, PSFError, InputError
        If the pieces disagree, the PSF is unusable or larger than the image, the noise
        variance is not positive at a valid pixel, or no pixel is valid.
    """

    image: np.ndarray
    variance: np.ndarray
    psf: np.ndarray
    mask: np.ndarray | None = None
    wcs: WCS | None = None
    bunit: str | None = None
    pixel_scale: float | None = None
    zeropoint: float | None = None
    name: str = "<observation>"
    checksum: str | None = None
    origin: tuple[int, int] = (0, 0)
    notes: tuple[Note, ...] = field(default_factory=tuple)

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
                f"{name}: variance of shape {np.shape(self.variance)} does not match the image {image.shape}"
            ) from exc
        if self.mask is None:
            valid = np.ones(image.shape, bool)
        else:
            try:
                valid = np.array(np.broadcast_to(np.asarray(self.mask, dtype=bool), image.shape))
            except ValueError as exc:
                raise ShapeError(
                    f"{name}: mask of shape {np.shape(self.mask)} does not match the image {image.shape}"
                ) from exc
        finite = np.isfinite(image)
        if not finite.any():
            raise InputError(f"{name}: image has no finite pixel (all NaN or inf)")
        valid &= finite & np.isfinite(variance)
        bad_var = valid & (variance <= 0)
        if bad_var.any():
            raise InputError(
                f"{name}: noise variance is zero or negative at {int(bad_var.sum())} unmasked pixel(s)"
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
        for attr, value in (
            ("image", image),
            ("variance", variance),
            ("mask", valid),
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

    @property
    def valid(self) -> np.ndarray:
        """``(C, H, W)`` boolean, True at valid pixels (alias of ``mask``)."""
        assert self.mask is not None
        return self.mask

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
                f"{self.name}: has no celestial WCS, cannot place RA,Dec = {ra},{dec}; use --center X,Y"
            )
        x, y = self.wcs.all_world2pix([[ra, dec]], 0)[0]
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(f"{self.name}: RA,Dec = {ra},{dec} does not project onto the image")
        return float(x), float(y)

    def crop(self, center: tuple[float, float] | None, size: tuple[int, int]) -> Observation:
        """Crop or pad to ``size`` = (ny, nx) pixels around ``center`` = (x, y).

        The output's pixel ``(nx//2, ny//2)`` is the input pixel nearest to ``center``,
        so the default centre with an equal size returns the same pixels. Padding is
        masked (image 0, variance 1); the WCS is shifted accordingly.

        Raises
        ------
        InputError
            If the centre is outside the image or the crop holds no valid pixel.
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
                f"{self.name}: centre ({cx:.2f}, {cy:.2f}) is outside the {w}x{h} image"
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
            mask=valid,
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

    def flux_factor_to(self, zeropoint: float | None) -> float:
        """Factor converting this cutout's fluxes to ``zeropoint`` (1 when either is unknown)."""
        if zeropoint is None or self.zeropoint is None:
            return 1.0
        return flux_factor(self.zeropoint, zeropoint)

    def prior_grid_psf(self, factor: int) -> np.ndarray:
        """The PSF on a grid ``factor`` times finer (see :mod:`galprism.io.psf`)."""
        return refine_psf(self.psf, factor)

    def prior_grid_wcs(self, factor: int) -> WCS | None:
        """The celestial WCS of the prior's grid covering this cutout."""
        return None if self.wcs is None else refine_wcs(self.wcs, factor)

    def operator(self, prior_shape: Sequence[int], factor: int = 1) -> Composition:
        """``Mask o Downsample(factor) o Convolve(PSF)`` from the prior's grid to this cutout.

        Parameters
        ----------
        prior_shape
            ``(C, H, W)`` of a source image on the prior's grid.
        factor
            From :meth:`grid_factor`.

        Raises
        ------
        ShapeError
            If the cutout is not the prior's size divided by ``factor``.
        """
        prior_shape = _check_prior_shape(self, prior_shape, factor)
        psf = torch.from_numpy(np.array(self.prior_grid_psf(factor), dtype=np.float64))
        conv = Convolve(psf, prior_shape, name=f"{self.name} PSF")
        ops: list = [Mask(torch.from_numpy(self.valid.copy()))]
        if factor > 1:
            ops.append(Downsample(factor, prior_shape))
        ops.append(conv)
        return Composition(ops)


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
            f"{name}: pixel scale {cutout_scale:.6g} arcsec is not an integer multiple of the prior's "
            f"{prior_scale:.6g} arcsec (ratio {ratio:.4g})"
        )
    return int(n)


def _check_prior_shape(
    obs: Observation, prior_shape: Sequence[int], factor: int
) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in prior_shape)
    if len(shape) != 3:
        raise ShapeError(f"prior shape must be (C, H, W), got {shape}")
    c, h, w = shape
    if h % factor or w % factor:
        raise ShapeError(f"prior grid {h}x{w} is not divisible by the downsampling factor {factor}")
    if obs.shape != (c, h // factor, w // factor):
        raise ShapeError(
            f"{obs.name}: cutout shape {obs.shape} does not match the prior grid {shape} "
            f"downsampled by {factor}; crop it first"
        )
    return shape  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class ObservationBatch:
    """Batched tensors of equally shaped observations, ready for a posterior sampler.

    Attributes
    ----------
    y
        ``(B, C, h, w)`` data converted to the prior's flux scale (0 at masked pixels).
    noise_var
        ``(B, C, h, w)`` noise variance on that scale (1 at masked pixels).
    operator
        Batched :class:`~galprism.operators.SourceSum` over the K sources.
    forward
        ``Downsample o Convolve`` without the mask, one source: the model image of a
        source everywhere, masked pixels included.
    valid
        ``(B, C, h, w)`` boolean.
    flux_factors
        ``(B,)`` factor from each cutout's units to the prior's.
    factor
        Grid factor shared by the batch.
    """

    y: Tensor
    noise_var: Tensor
    operator: SourceSum
    forward: Composition
    valid: Tensor
    flux_factors: Tensor
    factor: int


def stack_observations(
    observations: Sequence[Observation],
    prior_shape: Sequence[int],
    n_sources: int,
    *,
    prior_pixel_scale: float | None = None,
    prior_zeropoint: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> ObservationBatch:
    """Stack observations into batched data, noise and a batched source-sum operator.

    Parameters
    ----------
    observations
        Cutouts already cropped to the prior's size (divided by the grid factor), all
        with the same shape and grid factor.
    prior_shape
        ``(C, H, W)`` of one source on the prior grid.
    n_sources
        Number of sources K of the prior (each gets the same operator).
    prior_pixel_scale, prior_zeropoint
        The prior's grid and flux convention, for the grid factor and flux conversion.
    dtype
        Floating dtype of the tensors.

    Raises
    ------
    ShapeError
        If the observations disagree in shape or grid factor.
    """
    if not observations:
        raise ShapeError("stack_observations: no observation given")
    factors = {o.grid_factor(prior_pixel_scale) for o in observations}
    if len(factors) != 1:
        raise ShapeError(
            f"stack_observations: observations have different grid factors {sorted(factors)}"
        )
    f = factors.pop()
    shape = _check_prior_shape(observations[0], prior_shape, f)
    for o in observations[1:]:
        _check_prior_shape(o, shape, f)
    flux = np.array([o.flux_factor_to(prior_zeropoint) for o in observations])
    y = np.stack([o.image * k for o, k in zip(observations, flux, strict=True)])
    var = np.stack(
        [np.where(o.valid, o.variance * k**2, 1.0) for o, k in zip(observations, flux, strict=True)]
    )
    valid = np.stack([o.valid for o in observations])
    psfs = [o.prior_grid_psf(f) for o in observations]
    kh = max(p.shape[-2] for p in psfs)
    kw = max(p.shape[-1] for p in psfs)
    psf = np.stack([pad_psf(p, (kh, kw)) for p in psfs])
    conv = Convolve(torch.from_numpy(psf), shape, name="batch PSF")
    blur = Composition([Downsample(f, shape), conv]) if f > 1 else Composition([conv])
    single = Composition([Mask(torch.from_numpy(valid), shape=valid.shape[1:]), *blur.ops])
    return ObservationBatch(
        y=torch.from_numpy(y).to(dtype),
        noise_var=torch.from_numpy(var).to(dtype),
        operator=SourceSum([single] * int(n_sources)),
        forward=blur,
        valid=torch.from_numpy(valid),
        flux_factors=torch.from_numpy(flux),
        factor=f,
    )

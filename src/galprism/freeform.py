"""Free-form components: light the priors cannot draw, integrated out of the likelihood exactly.

A learned prior only draws what its training data held. Two kinds of light in a real
cutout fall outside that: sources far brighter than the training set (a star, a bright
compact galaxy: ``hsc_cosmos35_i`` holds a star 586 sigma high, ten times the brightest
simulated training peak, priors/README.md), and light from sources centered just beyond
the prior's grid (the operator convolves only the grid, so their wings cannot be
modelled). Each such source gets a **free-form component**: the intrinsic pixels of a
small box around its peak (the box may reach beyond the grid), each with a broad
Gaussian prior ``N(0, s^2)``, ``s`` set by the source's own brightness. This is the
part scarlet's free-form and point sources play, in linear-Gaussian form, which is why
no new sampler is needed: with ``B`` mapping the boxes' pixels ``c`` to the data,

    y = A x + B c + n,  c ~ N(0, diag(s^2)),  n ~ N(0, Sigma)
    =>  y | x ~ N(A x, Sigma + B diag(s^2) B^T).

Whitened, with ``Sigma^(-1/2) B diag(s) = U S V^T`` (thin SVD), that covariance is
``I + U diag(S^2) U^T`` and its inverse square root ``M = I - U diag(1 - (1 + S^2)^(-1/2)) U^T``
(:class:`~galprism.operators.LowRankUpdate`). The posterior sampler of the priors' sources
therefore runs unchanged on the data ``M Sigma^(-1/2) y``, the operator ``M Sigma^(-1/2) A``
and unit noise: directions of the data that a box explains are down-weighted, the rest
is untouched. Given each posterior sample ``x``, the boxes' pixels are then drawn from
their exact Gaussian conditional ``c | x, y`` (:meth:`FreeformModel.sample`).

Boxes are found on the data (:func:`find_boxes`): a local maximum brighter than
``FreeformConfig.bright`` (in the prior's units, ``flux_scale``), or a local maximum on
the cutout's outermost pixels with a signal-to-noise above ``FreeformConfig.edge``; and,
optionally, on the residual of a first posterior draw (:func:`find_residual_boxes`,
``FreeformConfig.residual``): point sources the priors drew too faint, after which
:func:`galprism.separate.separate_observations` draws the cutout again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .errors import ConfigError
from .operators import Convolve, Downsample, LinearOperator, LowRankUpdate, Weight

__all__ = [
    "FreeformConfig",
    "Box",
    "FreeformModel",
    "find_boxes",
    "find_residual_boxes",
    "build_freeform",
]


@dataclass(frozen=True)
class FreeformConfig:
    """When and how a source gets a free-form component.

    Attributes
    ----------
    bright
        A local maximum of the data above this value, in units of the prior's
        ``flux_scale``, gets a box (``None``: never). The built-in prior's training
        observations peak below 2.9 (2,000 simulated cutouts, docs/user-guide.md).
    edge
        A local maximum on the outermost row or column of the cutout with a
        signal-to-noise above this gets a box reaching beyond the grid (``None``: never).
    residual
        After a first posterior draw, a local maximum of the point-source matched filter
        of its residual with a signal-to-noise above this gets a box, and the cutout is
        drawn again (``None``: one draw only). See :func:`find_residual_boxes`.
    rounds
        With ``residual``: at most this many redraws, each searching the last draw's
        residual (a core the first draw fitted may be left out by the redraw).
    half_width
        Boxes hold ``(2 half_width + 1)^2`` intrinsic pixels per band, on the prior grid.
    correlation
        Correlation length (prior pixels) of the Gaussian prior of a box's pixels: some
        smoothness keeps the directions the data do not constrain (the PSF's null space)
        from filling the box with pixel-scale noise.
    """

    bright: float | None = 5.0
    edge: float | None = 30.0
    residual: float | None = None
    rounds: int = 2
    half_width: int = 4
    correlation: float = 0.7

    def __post_init__(self) -> None:
        for name in ("bright", "edge", "residual"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"freeform {name} must be a positive number or None, got {v!r}")
        if not (isinstance(self.rounds, int) and 1 <= self.rounds <= 8):
            raise ConfigError(f"freeform rounds must be an integer in [1, 8], got {self.rounds!r}")
        if not (isinstance(self.half_width, int) and 0 <= self.half_width <= 16):
            raise ConfigError(
                f"freeform half_width must be an integer in [0, 16], got {self.half_width!r}"
            )
        if not (math.isfinite(self.correlation) and self.correlation >= 0):
            raise ConfigError(f"freeform correlation must be >= 0, got {self.correlation!r}")

    @property
    def enabled(self) -> bool:
        return self.bright is not None or self.edge is not None or self.residual is not None


@dataclass(frozen=True)
class Box:
    """A free-form component: its center on the prior grid (may lie outside it) and why."""

    row: int
    col: int
    kind: str  # "bright", "edge" or "residual"
    peak: float  # the data's (residual's) peak, in the prior's units
    snr: float


def find_boxes(
    y: np.ndarray,
    noise_var: np.ndarray,
    valid: np.ndarray,
    config: FreeformConfig,
    flux_scale: float,
    grid_factor: int = 1,
) -> list[Box]:
    """Boxes of one observation ``(C, h, w)`` (at the prior's zero point), on the prior grid.

    Peaks are local maxima over 5 x 5 pixels of the band sum; an edge peak is one on the
    outermost row or column, whose box is centered one pixel beyond it (its light peaks
    at or past the edge).
    """
    data = np.where(valid, y, 0.0).sum(0)
    ok = valid.any(0)
    sigma = np.sqrt(np.where(valid, noise_var, 0.0).sum(0))
    snr = np.divide(data, sigma, out=np.zeros_like(data), where=ok)
    peak = _local_maxima(data, ok)
    h, w = data.shape
    boxes: list[Box] = []
    for r, c in zip(*np.nonzero(peak), strict=True):
        value = float(data[r, c]) / flux_scale
        s = float(snr[r, c])
        on_edge = r in (0, h - 1) or c in (0, w - 1)
        if config.bright is not None and value > config.bright:
            kind, (br, bc) = "bright", (int(r), int(c))
        elif config.edge is not None and on_edge and s > config.edge:
            kind = "edge"
            br = int(r) + (-1 if r == 0 else 1 if r == h - 1 else 0)
            bc = int(c) + (-1 if c == 0 else 1 if c == w - 1 else 0)
        else:
            continue
        boxes.append(
            Box(
                br * grid_factor + grid_factor // 2,
                bc * grid_factor + grid_factor // 2,
                kind,
                value,
                s,
            )
        )
    return boxes


def _local_maxima(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Pixels of ``ok`` holding the largest of ``values`` in their 5 x 5 neighbourhood of ``ok``."""
    masked = np.where(ok, values, -np.inf)
    return ok & (ndimage.maximum_filter(masked, size=5, mode="constant", cval=-np.inf) == values)


def find_residual_boxes(
    residual: np.ndarray,
    noise_var: np.ndarray,
    valid: np.ndarray,
    psf: np.ndarray,
    existing: Sequence[Box],
    config: FreeformConfig,
    flux_scale: float,
    grid_factor: int = 1,
) -> list[Box]:
    """Boxes where a posterior draw left light unexplained, on the prior grid.

    The residual ``data - model`` ``(C, h, w)`` (prior units, cutout grid) is searched for
    point sources as a detection pipeline does: the matched-filter signal-to-noise

        S(p) = sum_q psi(q - p) r_q / sigma_q^2 / sqrt(sum_q psi(q - p)^2 / sigma_q^2),

    summed over bands, with ``psi`` the cutout's PSF ``(C, ph, pw)`` normalised to unit
    sum and masked pixels weighted 0. Local maxima (5 x 5) with ``S > config.residual``
    get a box unless they lie inside an existing one. A box's ``peak`` is the observed
    peak of the point source the filter fits there (its flux times the PSF's peak), so
    its prior scale (:func:`build_freeform`) is set by the light the priors missed, not
    by the data's: the priors keep explaining the rest.
    """
    if config.residual is None:
        return []
    w = np.where(valid, 1.0 / np.where(valid, noise_var, 1.0), 0.0)
    r = np.where(valid, residual, 0.0)
    num = np.zeros(r.shape[1:])
    den = np.zeros(r.shape[1:])
    peaks = []
    for band in range(r.shape[0]):
        psi = np.asarray(psf[band], dtype=np.float64)
        psi = psi / psi.sum()
        num += ndimage.correlate(r[band] * w[band], psi, mode="constant")
        den += ndimage.correlate(w[band], psi**2, mode="constant")
        peaks.append(psi.max())
    ok = den > 0
    snr = np.divide(
        num, np.sqrt(den, where=ok, out=np.ones_like(den)), out=np.zeros_like(num), where=ok
    )
    flux = np.divide(num, den, out=np.zeros_like(num), where=ok)
    local = _local_maxima(snr, ok)
    hw = config.half_width
    boxes: list[Box] = []
    for rr, cc in zip(*np.nonzero(local & (snr > config.residual)), strict=True):
        row, col = (
            int(rr) * grid_factor + grid_factor // 2,
            int(cc) * grid_factor + grid_factor // 2,
        )
        if any(abs(row - b.row) <= hw and abs(col - b.col) <= hw for b in [*existing, *boxes]):
            continue
        peak = float(flux[rr, cc]) * float(np.mean(peaks)) / flux_scale
        boxes.append(Box(row, col, "residual", peak, float(snr[rr, cc])))
    return boxes


class FreeformModel:
    """The free-form components of a batch, integrated out of its likelihood.

    Built by :func:`build_freeform`. :meth:`whiten` turns the batch's data and noise, and
    :meth:`whitening` gives the operators that turn its operator, into the marginal
    likelihood's; :meth:`sample` draws the boxes' pixels given samples
    of the priors' sources; :meth:`images` puts them on the prior grid.
    """

    def __init__(
        self,
        boxes: list[list[Box]],
        columns: Tensor,
        factors: Tensor,
        sigma: Tensor,
        valid: Tensor,
        half_width: int,
        prior_shape: tuple[int, int, int],
    ) -> None:
        self.boxes = boxes
        self.half_width = half_width
        self.prior_shape = prior_shape
        self.sigma = sigma  # (B, *obs_shape)
        b = columns.shape[0]
        seen = valid.reshape(b, -1, 1).to(columns.dtype)
        # Box pixels are c = F z with z ~ N(0, I): F holds each box's prior scale and
        # pixel-to-pixel correlation (see build_freeform).
        whitened = (columns * seen / sigma.reshape(b, -1, 1)) @ factors  # (B, n, k)
        u, s, vh = torch.linalg.svd(whitened, full_matrices=False)
        self.u, self.s, self.v = u, s, vh.transpose(1, 2)
        self.gains = 1.0 - (1.0 + s**2).rsqrt()
        self.columns, self.factors = columns, factors

    @property
    def n_columns(self) -> int:
        return int(self.columns.shape[2])

    def whitening(self) -> list[LinearOperator]:
        """The operators ``[M, W]`` (outermost first) that map the data and every source's
        term to the marginal likelihood's, whose noise is white: pass them to
        :meth:`galprism.observation.ObservationBatch.operator_for`."""
        shape = tuple(self.sigma.shape[1:])
        return [LowRankUpdate(self.u, self.gains, shape), Weight(1.0 / self.sigma, shape)]

    def whiten(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Data and noise variance (ones) of the marginal likelihood."""
        m, w = self.whitening()
        y_w = m.apply(w.apply(y))
        return y_w, torch.ones_like(y_w)

    def sample(self, residual: Tensor, generator: Sequence[torch.Generator]) -> Tensor:
        """Box pixels ``(B, S, k)`` given residuals ``y - A x`` ``(B, S, *obs_shape)`` of S samples.

        ``c = F z`` with ``z | x, y ~ N(V diag(S / (S^2 + 1)) U^T r, V diag(1 / (S^2 + 1)) V^T)``
        for the whitened residual ``r``: the exact conditional of the linear-Gaussian model.
        """
        b, n_s = residual.shape[:2]
        r = (residual / self.sigma[:, None]).reshape(b, n_s, -1)
        proj = torch.einsum("bnk,bsn->bsk", self.u, r)
        denom = self.s**2 + 1.0
        mean = proj * (self.s / denom)[:, None]
        # z = xi + V (mean + (D^-1/2 - 1) V^T xi) with xi ~ N(0, I_k): the directions the
        # data never see (more box pixels than pixels) keep their prior N(0, 1).
        xi = torch.stack(
            [torch.randn(n_s, self.n_columns, generator=g, dtype=r.dtype) for g in generator]
        )
        along = torch.einsum("bjk,bsj->bsk", self.v, xi)
        draw = mean + (denom.rsqrt() - 1.0)[:, None] * along
        z_post = xi + torch.einsum("bjk,bsk->bsj", self.v, draw)
        return torch.einsum("bij,bsj->bsi", self.factors, z_post)

    def model(self, coefficients: Tensor) -> Tensor:
        """The boxes' light ``(B, S, *obs_shape)``, masked pixels too, of pixels ``(B, S, k)``."""
        b = coefficients.shape[0]
        out = torch.einsum("bnk,bsk->bsn", self.columns, coefficients)
        return out.reshape(b, coefficients.shape[1], *self.sigma.shape[1:])

    def images(self, coefficients: Tensor) -> Tensor:
        """The boxes' intrinsic pixels on the prior grid ``(B, S, C, H, W)``, cut at its edges."""
        c, hh, ww = self.prior_shape
        hw = self.half_width
        side = 2 * hw + 1
        out = coefficients.new_zeros((coefficients.shape[0], coefficients.shape[1], c, hh, ww))
        for i, boxes in enumerate(self.boxes):
            for j, box in enumerate(boxes):
                block = coefficients[i, :, j * c * side * side : (j + 1) * c * side * side].reshape(
                    -1, c, side, side
                )
                r0, c0 = box.row - hw, box.col - hw
                rs, cs = (
                    slice(max(r0, 0), min(r0 + side, hh)),
                    slice(max(c0, 0), min(c0 + side, ww)),
                )
                if rs.start < rs.stop and cs.start < cs.stop:
                    out[i, :, :, rs, cs] += block[
                        :, :, rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0
                    ]
        return out


def _columns(
    boxes: list[Box],
    psf: Tensor,
    prior_shape: tuple[int, int, int],
    grid_factor: int,
    half_width: int,
) -> Tensor:
    """The light ``(n, k)`` of each box pixel at unit value in the cutout, through PSF and binning.

    The PSF is applied on the grid widened by the box size, so that pixels beyond the
    grid send their light in, then the grid is cut out.
    """
    c, hh, ww = prior_shape
    side = 2 * half_width + 1
    pad = side * grid_factor
    big = (c, hh + 2 * pad, ww + 2 * pad)
    conv = Convolve(psf, big, name="free-form PSF")
    deltas = []
    for box in boxes:
        for band in range(c):
            for dr in range(-half_width, half_width + 1):
                for dc in range(-half_width, half_width + 1):
                    img = torch.zeros(big, dtype=torch.float64)
                    img[band, box.row + dr + pad, box.col + dc + pad] = 1.0
                    deltas.append(img)
    x = conv.apply(torch.stack(deltas))[:, :, pad : pad + hh, pad : pad + ww]
    if grid_factor > 1:
        x = Downsample(grid_factor, prior_shape).apply(x)
    return x.reshape(len(deltas), -1).T


def build_freeform(
    y: Tensor,
    noise_var: Tensor,
    valid: Tensor,
    psfs: Sequence[np.ndarray],
    prior_shape: Sequence[int],
    grid_factor: int,
    flux_scale: float,
    config: FreeformConfig,
    extra: Sequence[Sequence[Box]] | None = None,
) -> FreeformModel | None:
    """Find the boxes of a batch and build their model, or ``None`` when no cutout has one.

    Parameters
    ----------
    y, noise_var, valid
        The batch ``(B, C, h, w)`` at the prior's zero point (:class:`ObservationBatch`).
    psfs
        Each observation's PSF on the prior grid.
    prior_shape, grid_factor, flux_scale
        The prior's grid, the grid factor and the prior's flux unit.
    config
        Detection settings.
    extra
        Boxes to add to those found, one list per observation (from
        :func:`find_residual_boxes`).
    """
    if not config.enabled:
        return None
    shape = tuple(int(s) for s in prior_shape)
    hw = config.half_width
    side = 2 * hw + 1
    boxes = [
        find_boxes(
            y[i].numpy(), noise_var[i].numpy(), valid[i].numpy(), config, flux_scale, grid_factor
        )
        + list(extra[i] if extra is not None else [])
        for i in range(y.shape[0])
    ]
    if not any(boxes):
        return None
    per_box = shape[0] * side * side
    k = max(len(b) for b in boxes) * per_box
    n = int(y[0].numel())
    columns = torch.zeros(y.shape[0], n, k, dtype=torch.float64)
    factors = torch.zeros(y.shape[0], k, k, dtype=torch.float64)
    chol = _correlation_factor(shape[0], hw, config.correlation)
    for i, bx in enumerate(boxes):
        if not bx:
            continue
        psf = torch.tensor(np.asarray(psfs[i], dtype=np.float64))
        cols = _columns(bx, psf, shape, grid_factor, hw)
        columns[i, :, : cols.shape[1]] = cols
        # A pixel's prior scale: twice the intrinsic peak of a point source of the box's
        # observed peak (peak / PSF peak): broad for the source, yet still damping the
        # directions the PSF erases.
        psf_peak = float(psf.max()) / float(psf.sum())
        for j, box in enumerate(bx):
            sl = slice(j * per_box, (j + 1) * per_box)
            factors[i, sl, sl] = chol * (2.0 * box.peak * flux_scale / psf_peak)
    sigma = noise_var.to(torch.float64).sqrt()
    return FreeformModel(boxes, columns, factors, sigma, valid, hw, shape)


def _correlation_factor(bands: int, half_width: int, length: float) -> Tensor:
    """Cholesky factor of one box's pixel correlation ``exp(-d^2 / (2 length^2))``, bands apart."""
    side = 2 * half_width + 1
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1).to(torch.float64)
    if length > 0:
        corr = torch.exp(-(torch.cdist(p, p) ** 2) / (2 * length**2)) + 1e-6 * torch.eye(
            side * side, dtype=torch.float64
        )
        one = torch.linalg.cholesky(corr)
    else:
        one = torch.eye(side * side, dtype=torch.float64)
    return torch.block_diag(*([one] * bands))

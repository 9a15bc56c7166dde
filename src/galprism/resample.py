"""Flux-conserving resampling between two celestial WCS grids, as a sparse linear operator.

A source image on one pixel grid (an astropy celestial WCS and a shape ``(H, W)``) is
mapped onto another grid by exact area overlap: each source pixel's footprint, its four
corners carried through both WCS into target pixel coordinates, is clipped against every
target pixel it touches, and the pixel's flux is shared out in proportion to the clipped
areas. The weights form a sparse matrix ``A`` (``h w`` x ``H W``), built once per pair of
grids with numpy and scipy, applied as a sparse matrix product; the adjoint is ``A^T``.

Pixel values are fluxes (as everywhere in galprism), so a column of ``A`` sums to the
fraction of its source pixel that lands inside the target grid: 1 for a pixel wholly
inside, less at the edges. That fraction is :attr:`Resample.coverage`; the light beyond
the target is the only light lost, and callers can refuse or warn on it rather than lose
it silently. Coarse to fine, a source pixel's flux is spread uniformly over its footprint.

Accuracy. The footprint is the quadrilateral through the mapped corners: exact for any
affine relation between the grids (scale, rotation, flip, shear, offset). A projection or
distortion bends each pixel edge by a second-order amount; measured against footprints
split 4 x 4 (``subdivide=4``), the weights move by under 1e-8 between TAN grids whose
tangent points are up to 5 deg apart (0.03" and 0.2" pixels; round-off level) and by
under 1e-6 of a pixel's flux through SIP terms of 2e-5 px per px**2. Clipping is
exact polygon geometry, so a source pixel wholly inside the target keeps its flux to
float64 round-off: the weights partition its area, they are not a supersampled estimate.
Corner positions carry the WCS round trip's error (about 1e-9 px); weights below 1e-7 of a
pixel, the slivers that error leaves where edges of aligned grids coincide, are dropped
and their column rescaled to its previous sum.

Why not an existing resampler. ``reproject``'s ``reproject_exact`` computes the same kind
of overlaps (spherical polygons) and its ``reproject_adaptive`` (DeForest's anti-aliased
kernels) conserves flux on request, but both return a resampled image, not the matrix:
there is no adjoint, and the geometry would be redone on every call. GalSim's
``InterpolatedImage`` draws through an interpolation kernel on each call, again with no
adjoint. scarlet2's multi-resolution renderer resamples in Fourier space inside every
model evaluation, from the grids' affine parts only. The sampler calls the operator and
its adjoint thousands of times, so here the geometry is done once and each call is one
sparse product.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse
import torch
from astropy.wcs import WCS
from astropy.wcs.utils import pixel_to_pixel
from torch import Tensor

from .errors import ConfigError, ShapeError
from .operators import LinearOperator

__all__ = ["Resample", "integer_factor"]

# Candidate (source piece, target pixel) pairs clipped at once: bounds the clipping
# arrays to some 100 MB whatever the grids' sizes and scale ratio.
_CHUNK_PAIRS = 1 << 15
# Weights below this share of a source pixel are round-off slivers, not overlaps.
_SLIVER = 1e-7


class Resample(LinearOperator):
    """Flux-conserving resampling from a source WCS grid onto a target WCS grid.

    Maps ``(B, *lead, H, W)`` to ``(B, *lead, h, w)``: the same sparse matrix acts on every
    band and batch element. Works in both directions (fine to coarse and coarse to fine),
    for any scale ratio, rotation, flip and sub-pixel offset between the grids.

    Parameters
    ----------
    source_wcs, target_wcs
        Celestial WCS of each grid (two pixel axes; 0-based pixel ``(x, y)`` is array
        element ``[y, x]``). Their celestial frames may differ (ICRS, galactic...).
    source_shape, target_shape
        ``(H, W)`` or ``(C, H, W)`` of each grid; leading axes, if any, must agree.
    subdivide
        Split each source pixel into ``subdivide x subdivide`` pieces before clipping
        (only needed when the mapping curves noticeably within one pixel).
    source_name, target_name
        How the grids are called in error messages (e.g. file names).

    Attributes
    ----------
    coverage
        ``(H, W)`` float64: fraction of each source pixel's flux that lands on the target
        grid (1 inside, between 0 and 1 on its edge, 0 outside or where a corner has no
        position on the target's projection).
    target_coverage
        ``(h, w)`` float64: fraction of each target pixel's area that source pixels cover.
    matrix
        The ``(h w, H W)`` weights as a ``scipy.sparse.csr_matrix`` (float64), rows and
        columns in C order of ``(h, w)`` and ``(H, W)``.

    Raises
    ------
    ShapeError
        If a shape is not ``(H, W)`` or ``(C, H, W)`` of positive sizes, or the leading
        axes differ.
    ConfigError
        If a WCS is not a two-axis celestial WCS, or the grids share no sky.
    """

    def __init__(
        self,
        source_wcs: WCS,
        source_shape: Sequence[int],
        target_wcs: WCS,
        target_shape: Sequence[int],
        *,
        subdivide: int = 1,
        source_name: str = "source grid",
        target_name: str = "target grid",
    ) -> None:
        src_shape, tgt_shape = _grid_shape(source_shape), _grid_shape(target_shape)
        if src_shape[:-2] != tgt_shape[:-2]:
            raise ShapeError(
                f"Resample: {source_name} {src_shape} and {target_name} {tgt_shape} differ in "
                "their leading (band) axes"
            )
        try:
            pieces = operator.index(subdivide)
        except TypeError:
            pieces = 0
        if pieces < 1:
            raise ConfigError(f"Resample: subdivide must be a positive integer, got {subdivide}")
        for wcs, name in ((source_wcs, source_name), (target_wcs, target_name)):
            _check_wcs(wcs, name)
        self.in_shape, self.out_shape = src_shape, tgt_shape
        self.source_name, self.target_name = source_name, target_name
        self.matrix, clipped = _overlap_matrix(
            source_wcs, src_shape[-2:], target_wcs, tgt_shape[-2:], pieces
        )
        self.coverage = np.asarray(self.matrix.sum(axis=0)).reshape(src_shape[-2:])
        self.target_coverage = clipped.reshape(tgt_shape[-2:])
        if not (self.coverage > 0).any():
            raise ConfigError(
                f"Resample: {source_name} ({_hw(src_shape)} px) and {target_name} "
                f"({_hw(tgt_shape)} px) have no overlapping sky"
            )
        self._transpose = self.matrix.T.tocsr()
        self._cache: dict[tuple, Tensor] = {}

    def __getstate__(self) -> dict:
        # The torch copies of the matrix are rebuilt on demand: pickles (worker processes)
        # stay free of device tensors.
        return {**self.__dict__, "_cache": {}}

    def flux_fraction(self, x: Tensor) -> Tensor:
        """Fraction of each image's total flux that lands on the target grid.

        Parameters
        ----------
        x
            ``(B, *in_shape)`` images on the source grid.

        Returns
        -------
        Tensor
            ``(B, *lead)``: resampled flux over source flux, per image and band (NaN for
            an image of zero total flux).
        """
        self._check(x, self.in_shape, "input")
        cov = torch.as_tensor(self.coverage, device=x.device, dtype=x.dtype)
        return (x * cov).sum(dim=(-2, -1)) / x.sum(dim=(-2, -1))

    def _sparse(self, like: Tensor, transpose: bool) -> Tensor:
        key = (like.device, like.dtype, transpose)
        if key not in self._cache:
            m = self._transpose if transpose else self.matrix
            with warnings.catch_warnings():
                # torch flags sparse CSR support as beta on first use; the operations used
                # here (construction, CSR @ dense) are the stable core of it.
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
                self._cache[key] = torch.sparse_csr_tensor(
                    torch.from_numpy(m.indptr.astype(np.int64)),
                    torch.from_numpy(m.indices.astype(np.int64)),
                    torch.from_numpy(m.data),
                    size=m.shape,
                    dtype=like.dtype,
                    device=like.device,
                    check_invariants=False,
                )
        return self._cache[key]

    def _matmul(self, t: Tensor, transpose: bool, out_hw: tuple[int, ...]) -> Tensor:
        n_in = t.shape[-2] * t.shape[-1]
        cols = t.reshape(-1, n_in).T
        out = self._sparse(t, transpose) @ cols
        return out.T.reshape(*t.shape[:-2], *out_hw)

    def _apply(self, x: Tensor) -> Tensor:
        return self._matmul(x, False, self.out_shape[-2:])

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._matmul(y, True, self.in_shape[-2:])


def integer_factor(
    source_wcs: WCS,
    source_shape: Sequence[int],
    target_wcs: WCS,
    target_shape: Sequence[int],
    *,
    tolerance: float = 1e-3,
) -> int | None:
    """The factor ``f`` when the source grid is the target grid split ``f x f``, else None.

    Then :class:`galprism.operators.Downsample` with factor ``f`` is the same operator as
    :class:`Resample` between the grids (each target pixel sums exactly its ``f x f``
    source block), and much faster.

    Parameters
    ----------
    source_wcs, target_wcs
        Celestial WCS of the fine (source) and coarse (target) grids.
    source_shape, target_shape
        ``(H, W)`` or ``(C, H, W)``; ``H = f h`` and ``W = f w`` are required.
    tolerance
        Largest allowed mismatch, in target pixels, between a source pixel corner's
        position and where the exact ``f x f`` split puts it.

    Returns
    -------
    int or None
        ``f >= 1`` (1: the same grid), or None when the grids are not aligned that way
        (non-integer ratio, rotation, flip, offset, other distortions, other sizes).
    """
    src, tgt = _grid_shape(source_shape), _grid_shape(target_shape)
    (big_h, big_w), (h, w) = src[-2:], tgt[-2:]
    if src[:-2] != tgt[:-2] or big_h % h or big_w % w or big_h // h != big_w // w:
        return None
    f = big_h // h
    # Corners of a 9 x 9 lattice of source pixels spanning the whole grid, edges included.
    ys, xs = np.meshgrid(
        np.linspace(-0.5, big_h - 0.5, 9), np.linspace(-0.5, big_w - 0.5, 9), indexing="ij"
    )
    try:
        tx, ty = pixel_to_pixel(source_wcs, target_wcs, xs, ys)
    except Exception:  # astropy raises several types for unmappable positions
        return None
    dev = np.hypot(tx - ((xs + 0.5) / f - 0.5), ty - ((ys + 0.5) / f - 0.5))
    if not np.all(np.isfinite(dev)) or dev.max() > tolerance:
        return None
    return f


# -- geometry ------------------------------------------------------------------------


def _grid_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        out = ()
    if len(out) not in (2, 3) or min(out, default=0) < 1:
        raise ShapeError(f"Resample: grid shape must be (H, W) or (C, H, W), got {shape!r}")
    return out


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[-2]}x{shape[-1]}"


def _check_wcs(wcs: WCS, name: str) -> None:
    if not isinstance(wcs, WCS) or wcs.pixel_n_dim != 2 or not wcs.has_celestial:
        raise ConfigError(f"Resample: {name} needs a two-axis celestial astropy WCS, got {wcs!r}")


def _overlap_matrix(
    source_wcs: WCS,
    source_hw: tuple[int, ...],
    target_wcs: WCS,
    target_hw: tuple[int, ...],
    subdivide: int,
) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """Area-overlap weights and the covered area of each target pixel."""
    big_h, big_w = source_hw
    h, w = target_hw
    s = subdivide
    # Piece corners in source pixel coordinates: pixel (i, j) spans [j - 0.5, j + 0.5].
    ys, xs = np.meshgrid(
        np.arange(s * big_h + 1) / s - 0.5, np.arange(s * big_w + 1) / s - 0.5, indexing="ij"
    )
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        # Corners beyond the target's projection come back as NaN (with a warning); their
        # pieces get no weight and show up in `coverage`.
        warnings.simplefilter("ignore")
        tx, ty = pixel_to_pixel(source_wcs, target_wcs, xs, ys)
    tx, ty = np.asarray(tx, dtype=np.float64), np.asarray(ty, dtype=np.float64)
    # Quadrilateral of each piece, corners in cyclic order: (P, 4).
    qx = np.stack([tx[:-1, :-1], tx[:-1, 1:], tx[1:, 1:], tx[1:, :-1]], -1).reshape(-1, 4)
    qy = np.stack([ty[:-1, :-1], ty[:-1, 1:], ty[1:, 1:], ty[1:, :-1]], -1).reshape(-1, 4)
    # Source pixel of each piece (pieces are in C order of the fine (s H, s W) lattice).
    pi, pj = np.divmod(np.arange(qx.shape[0]), s * big_w)
    owner = (pi // s) * big_w + pj // s
    area = _shoelace(qx, qy)
    # A source pixel with any corner off the target's projection gets no weight at all
    # (rather than a wrong share), and coverage 0 says so.
    mapped = np.isfinite(area)
    lost = np.bincount(owner, weights=~mapped, minlength=big_h * big_w) > 0
    usable = ~lost[owner] & (area != 0)
    area = np.where(usable, np.abs(area), 0.0)
    pixel_area = np.bincount(owner, weights=area, minlength=big_h * big_w)
    qx, qy = np.where(usable[:, None], qx, 0.0), np.where(usable[:, None], qy, 0.0)

    # Target pixels each piece's bounding box touches (target pixel c spans [c - .5, c + .5]).
    lo_x, hi_x = np.floor(qx.min(1) + 0.5), np.floor(qx.max(1) + 0.5)
    lo_y, hi_y = np.floor(qy.min(1) + 0.5), np.floor(qy.max(1) + 0.5)
    # A piece whose box lies in one target pixel needs no clipping: all of it lands there.
    on_grid = (lo_x >= 0) & (lo_x < w) & (lo_y >= 0) & (lo_y < h)
    whole = usable & (lo_x == hi_x) & (lo_y == hi_y) & on_grid
    target = (lo_y[whole] * w + lo_x[whole]).astype(np.int64)
    rows, cols, vals = [target], [owner[whole]], [area[whole] / pixel_area[owner[whole]]]
    covered = np.bincount(target, weights=area[whole], minlength=h * w).astype(np.float64)

    c0 = np.clip(lo_x, 0, w).astype(np.int64)
    c1 = np.clip(hi_x, -1, w - 1).astype(np.int64)
    r0 = np.clip(lo_y, 0, h).astype(np.int64)
    r1 = np.clip(hi_y, -1, h - 1).astype(np.int64)
    clip = usable & ~whole
    nx = np.where(clip, c1 - c0 + 1, 0).clip(min=0)
    ny = np.where(clip, r1 - r0 + 1, 0).clip(min=0)
    counts = nx * ny
    bounds = np.cumsum(counts)
    start = 0
    while start < len(counts):
        # Pieces [start, stop) hold at most _CHUNK_PAIRS candidate pairs (at least one piece).
        stop = int(np.searchsorted(bounds, bounds[start] - counts[start] + _CHUNK_PAIRS, "right"))
        stop = max(stop, start + 1)
        piece = np.repeat(np.arange(start, stop), counts[start:stop])
        if piece.size:
            first = np.repeat(bounds[start:stop] - counts[start:stop], counts[start:stop])
            k = np.arange(piece.size) + (bounds[start] - counts[start]) - first
            col = c0[piece] + k % nx[piece]
            row = r0[piece] + k // nx[piece]
            # Clip in the target pixel's own frame (its square is [-0.5, 0.5]^2): small
            # numbers, so the areas keep their precision far from the grid origin.
            px, py = _clip_to_strip(qx[piece] - col[:, None], qy[piece] - row[:, None])
            py, px = _clip_to_strip(py, px)
            clipped = np.abs(_shoelace(px, py))
            keep = clipped > 0
            target = row[keep] * w + col[keep]
            rows.append(target)
            cols.append(owner[piece[keep]])
            vals.append(clipped[keep] / pixel_area[owner[piece[keep]]])
            covered += np.bincount(target, weights=clipped[keep], minlength=h * w)
        start = stop
    matrix = scipy.sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(h * w, big_h * big_w),
    )
    matrix.sum_duplicates()
    # Edges that coincide with target pixel edges (aligned grids) leave slivers of
    # round-off size; dropping them keeps the matrix as sparse as the geometry, and each
    # column is rescaled to its sum before the drop, so no flux is lost.
    before = np.asarray(matrix.sum(axis=0)).ravel()
    matrix.data[matrix.data < _SLIVER] = 0.0
    matrix.eliminate_zeros()
    after = np.asarray(matrix.sum(axis=0)).ravel()
    scale = np.divide(before, after, out=np.zeros_like(before), where=after > 0)
    matrix = matrix @ scipy.sparse.diags(scale)
    return matrix.tocsr(), np.minimum(covered, 1.0)


def _shoelace(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed area of closed polygons given as vertex rows ``(N, M)``."""
    return 0.5 * (px * np.roll(py, -1, 1) - np.roll(px, -1, 1) * py).sum(1)


def _clip_to_strip(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip polygons ``(N, M)`` to the strip ``-0.5 <= u <= 0.5``, for their areas.

    Each edge gets its crossings with the two lines inserted (a missing crossing repeats
    the vertex before it: a zero-length edge), so that every sub-edge lies on one side of
    each line; clamping ``u`` into the strip then maps the parts outside onto the lines,
    where they enclose no area. Inside the strip the winding number is unchanged, so the
    shoelace area of the result is the area of the polygon within the strip (for any
    polygon, convex or not). ``M`` vertices become ``3 M``.
    """
    u1, v1 = np.roll(u, -1, 1), np.roll(v, -1, 1)
    du, dv = u1 - u, v1 - v
    with np.errstate(invalid="ignore", divide="ignore"):
        t_lo, t_hi = (-0.5 - u) / du, (0.5 - u) / du
    # Along the edge the crossing met first is the lower line when u increases.
    t1 = np.where(du > 0, t_lo, t_hi)
    t2 = np.where(du > 0, t_hi, t_lo)
    t1 = np.where((t1 > 0) & (t1 < 1), t1, 0.0)
    t2 = np.where((t2 > 0) & (t2 < 1), t2, t1)
    out_u = np.empty((*u.shape, 3))
    out_v = np.empty((*u.shape, 3))
    out_u[..., 0], out_v[..., 0] = u, v
    out_u[..., 1], out_v[..., 1] = u + t1 * du, v + t1 * dv
    out_u[..., 2], out_v[..., 2] = u + t2 * du, v + t2 * dv
    out_u, out_v = out_u.reshape(len(u), -1), out_v.reshape(len(u), -1)
    return np.clip(out_u, -0.5, 0.5), out_v

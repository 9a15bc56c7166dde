"""Group the sources of an image into blends: the sets that must be modelled together.

Each source gets a footprint, either its detection segment's bounding box dilated by
``margin`` pixels (when the catalogue has the ``bbox_*`` columns of
:func:`~galprism.scene.detect.detect`) or a disc of radius ``radius`` around its
position (a ``radius`` column in pixels, else ``radius_factor`` times a
``kron_semimajor`` column, else the half-size of the model stamp). Two sources whose
footprints overlap are in one blend, and blending is transitive (union-find): a chain
A-B, B-C makes one blend of three. A source that overlaps nothing is a one-source blend.

Each blend's box in the image covers its members' footprints and the model stamps
centered on them, is padded to at least the model grid (and to a multiple of
``multiple`` pixels, e.g. the factor between the prior's and the image's pixels), and is
then clipped to the image. Clipping is recorded in :attr:`Blend.clipped`, never silent:
the pixels beyond the image are the ones the model must treat as unobserved.

Ordering is deterministic and independent of the catalogue's row order: members sorted
by id, blends by their smallest member id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from ..errors import InputError

__all__ = ["Blend", "group_blends", "footprint_overlaps", "connected_groups"]

_BBOX = ("bbox_xmin", "bbox_xmax", "bbox_ymin", "bbox_ymax")


@dataclass(frozen=True)
class Blend:
    """One group of sources modelled together.

    Attributes
    ----------
    index
        Position of the blend in the deterministic order (0-based).
    ids
        Member source ids, ascending.
    rows
        Row of each member in the catalogue given to :func:`group_blends`.
    box
        ``(y0, y1, x0, x1)``: the blend frame in image pixels, half-open, inside the
        image.
    requested
        The box before clipping to the image (may extend beyond it).
    clipped
        Pixels cut from each side, ``(bottom, top, left, right)`` = rows below ``y0``,
        rows from ``y1``, columns left of ``x0``, columns from ``x1``; all zero when the
        box lies inside the image.
    positions
        ``(n, 2)`` member positions ``(x, y)`` in the blend frame (0-based pixels).
    """

    index: int
    ids: tuple[int, ...]
    rows: tuple[int, ...]
    box: tuple[int, int, int, int]
    requested: tuple[int, int, int, int]
    clipped: tuple[int, int, int, int]
    positions: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the blend frame."""
        y0, y1, x0, x1 = self.box
        return y1 - y0, x1 - x0

    @property
    def is_clipped(self) -> bool:
        """Whether the box was cut at the image's edge."""
        return any(self.clipped)

    @property
    def n_sources(self) -> int:
        """Number of members."""
        return len(self.ids)

    def describe(self) -> str:
        """One line: members, box and any clipping."""
        y0, y1, x0, x1 = self.box
        text = (
            f"blend {self.index}: {self.n_sources} source(s) {list(self.ids)} in x {x0}:{x1}, "
            f"y {y0}:{y1}"
        )
        if self.is_clipped:
            b, t, left, right = self.clipped
            text += (
                f"; clipped at the image edge by {b} row(s) below, {t} above, "
                f"{left} column(s) left, {right} right"
            )
        return text


def footprint_overlaps(
    boxes: np.ndarray | None = None,
    centers: np.ndarray | None = None,
    radii: np.ndarray | None = None,
) -> np.ndarray:
    """Pairwise overlap of footprints, an ``(N, N)`` boolean matrix (diagonal true).

    Parameters
    ----------
    boxes
        ``(N, 4)`` closed boxes ``(xmin, xmax, ymin, ymax)`` in pixels; two boxes overlap
        when they share at least one point.
    centers, radii
        ``(N, 2)`` disc centers ``(x, y)`` and ``(N,)`` radii, used when ``boxes`` is
        None; two discs overlap when their centers are closer than the sum of the radii.
    """
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64)
        ox = (b[:, None, 0] <= b[None, :, 1]) & (b[None, :, 0] <= b[:, None, 1])
        oy = (b[:, None, 2] <= b[None, :, 3]) & (b[None, :, 2] <= b[:, None, 3])
        return ox & oy
    if centers is None or radii is None:
        raise InputError("footprint_overlaps: give boxes, or centers and radii")
    c = np.asarray(centers, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    d = np.hypot(c[:, None, 0] - c[None, :, 0], c[:, None, 1] - c[None, :, 1])
    return d < r[:, None] + r[None, :]


def connected_groups(adjacency: np.ndarray) -> list[list[int]]:
    """Connected components of a symmetric boolean adjacency matrix, by union-find.

    Returns
    -------
    list of list of int
        Each component's node indices ascending; components ordered by smallest index.
    """
    n = int(adjacency.shape[0])
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees shallow
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(adjacency, k=1)), strict=True):
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            # The smaller index becomes the root so that roots are the groups' minima.
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [groups[root] for root in sorted(groups)]


def _radii(table: Table, default: float, radius_factor: float) -> np.ndarray:
    n = len(table)
    if "radius" in table.colnames:
        r = np.asarray(table["radius"], dtype=np.float64)
    elif "kron_semimajor" in table.colnames:
        r = radius_factor * np.asarray(table["kron_semimajor"], dtype=np.float64)
    else:
        r = np.full(n, default)
    # A source without a usable size still needs its model stamp's room.
    return np.where(np.isfinite(r) & (r > 0), r, default)


def group_blends(
    table: Table,
    image_shape: Sequence[int],
    model_shape: Sequence[int],
    *,
    margin: float = 2.0,
    radius: float | None = None,
    radius_factor: float = 1.0,
    multiple: int = 1,
    use_bbox: bool | None = None,
    border: int = 0,
) -> list[Blend]:
    """Group a catalogue's sources into blends.

    Parameters
    ----------
    table
        Catalogue with ``id``, ``x``, ``y`` (0-based pixels) and optionally the
        ``bbox_*`` columns of a detection, ``radius`` or ``kron_semimajor``.
    image_shape
        The image's shape; the last two entries are ``(H, W)``.
    model_shape
        ``(h, w)`` (or ``(C, h, w)``) of the model stamp each source needs, in image
        pixels.
    margin
        Pixels by which segment bounding boxes are dilated before testing overlap.
    radius
        Disc radius in pixels for every source (overrides the table's sizes); used only
        when footprints are discs.
    radius_factor
        Multiplies ``kron_semimajor`` to give the disc radius.
    multiple
        Blend boxes are padded to a multiple of this many pixels (before clipping).
    use_bbox
        Footprints from the ``bbox_*`` columns (true), discs (false), or bounding boxes
        when the table has them (None).
    border
        Pixels added on every side of a blend's box beyond its members' stamps and
        footprints: pixels no galaxy stamp covers, where the background is seen alone.

    Returns
    -------
    list of Blend
        Ordered by smallest member id.

    Raises
    ------
    InputError
        If the table lacks ``id``/``x``/``y``, has non-finite positions or duplicate
        ids, or ``use_bbox`` is true without ``bbox_*`` columns.
    """
    for col in ("id", "x", "y"):
        if col not in table.colnames:
            raise InputError(f"group_blends: catalogue has no {col!r} column")
    n = len(table)
    if n == 0:
        return []
    ids = np.asarray(table["id"], dtype=np.int64)
    if np.unique(ids).size != n:
        raise InputError("group_blends: catalogue has duplicate ids")
    xy = np.stack([np.asarray(table["x"], float), np.asarray(table["y"], float)], axis=1)
    if not np.isfinite(xy).all():
        raise InputError("group_blends: catalogue has non-finite positions")
    h_img, w_img = (int(s) for s in tuple(image_shape)[-2:])
    mh, mw = (int(s) for s in tuple(model_shape)[-2:])
    multiple = int(multiple)
    if multiple < 1:
        raise InputError(f"group_blends: multiple must be a positive integer, got {multiple}")
    has_bbox = all(c in table.colnames for c in _BBOX)
    if use_bbox and not has_bbox:
        raise InputError("group_blends: use_bbox needs the bbox_xmin/xmax/ymin/ymax columns")
    boxes_mode = has_bbox if use_bbox is None else bool(use_bbox)

    if boxes_mode:
        boxes = np.stack([np.asarray(table[c], np.float64) for c in _BBOX], axis=1)
        boxes = boxes + np.array([-margin, margin, -margin, margin])
        overlap = footprint_overlaps(boxes=boxes)
    else:
        default = min(mh, mw) / 2.0
        radii = np.full(n, float(radius)) if radius is not None else None
        radii = radii if radii is not None else _radii(table, default, radius_factor)
        overlap = footprint_overlaps(centers=xy, radii=radii)
        boxes = np.stack(
            [xy[:, 0] - radii, xy[:, 0] + radii, xy[:, 1] - radii, xy[:, 1] + radii], axis=1
        )

    # Order rows by id so that groups (ordered by smallest member) follow the ids.
    order = np.argsort(ids, kind="stable")
    groups = connected_groups(overlap[np.ix_(order, order)])
    blends = []
    for index, members in enumerate(groups):
        rows = order[members]
        # Pixels touched by the model stamps centered on the members: a stamp whose first
        # pixel center falls at 12.5 spreads light over pixels 12 and 13 (half-open ends).
        sx = xy[rows, 0] - (mw - 1) / 2
        sy = xy[rows, 1] - (mh - 1) / 2
        b = boxes[rows]
        x0 = int(min(np.floor(sx).min(), math.floor(b[:, 0].min() + 0.5)))
        x1 = int(max(np.ceil(sx + mw - 1).max(), math.floor(b[:, 1].max() + 0.5)) + 1)
        y0 = int(min(np.floor(sy).min(), math.floor(b[:, 2].min() + 0.5)))
        y1 = int(max(np.ceil(sy + mh - 1).max(), math.floor(b[:, 3].max() + 0.5)) + 1)
        x0, x1, y0, y1 = x0 - border, x1 + border, y0 - border, y1 + border
        x0, x1 = _pad_span(x0, x1, max(mw, x1 - x0), multiple)
        y0, y1 = _pad_span(y0, y1, max(mh, y1 - y0), multiple)
        requested = (y0, y1, x0, x1)
        cy0, cy1 = max(y0, 0), min(y1, h_img)
        cx0, cx1 = max(x0, 0), min(x1, w_img)
        clipped = (cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1)
        positions = xy[rows] - np.array([cx0, cy0], dtype=np.float64)
        blends.append(
            Blend(
                index=index,
                ids=tuple(int(i) for i in ids[rows]),
                rows=tuple(int(r) for r in rows),
                box=(cy0, cy1, cx0, cx1),
                requested=requested,
                clipped=clipped,
                positions=positions,
            )
        )
    return blends


def _pad_span(a: int, b: int, need: int, multiple: int) -> tuple[int, int]:
    """Grow ``[a, b)`` symmetrically to ``need`` pixels rounded up to ``multiple``."""
    size = max(b - a, need)
    size = -(-size // multiple) * multiple
    extra = size - (b - a)
    a -= extra // 2
    return a, a + size

"""Detector defects and their mask bits: bad columns, cosmic-ray tracks, missing edges.

Mask bits follow the HSC/LSST convention: an integer image whose bit ``b`` is set where
the mask plane named by the header keyword ``MP_<NAME> = b`` applies. The plane numbers
are those of HSC-SSP PDR2 coadd headers (:data:`MASK_PLANES`). The simulator sets

* ``BAD`` on bad columns (one or two columns, full height or from a random row to an
  end, offset by +-3..30 sigma: hot or dead);
* ``CR`` on cosmic-ray tracks (straight, 3-20 pixels long, +10..200 sigma);
* ``EDGE`` and ``NO_DATA`` on a band 2 to size/4 pixels wide along one side, whose
  pixels are set to 0 (no data, as at the edge of a coadd).

The pixel values under a defect are deliberately wrong; only the mask says so. The
truth images and ``VARIANCE`` are not affected. A fit must ignore the pixels of the planes
in :data:`BAD_PLANES` (``separate`` does by default).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MASK_PLANES", "BAD_PLANES", "DEFECT_KINDS", "bad_bits", "add_defects"]

#: HSC-SSP PDR2 coadd mask planes (MP_<NAME> = bit)
MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "BRIGHT_OBJECT": 9,
    "CROSSTALK": 10,
    "NOT_DEBLENDED": 11,
    "UNMASKEDNAN": 12,
    "REJECTED": 13,
    "CLIPPED": 14,
    "SENSOR_EDGE": 15,
    "INEXACT_PSF": 16,
}
#: planes whose pixels carry no usable data (galprism separate's default bad planes)
BAD_PLANES: tuple[str, ...] = ("BAD", "SAT", "CR", "NO_DATA", "SUSPECT", "EDGE")
DEFECT_KINDS = ("bad_column", "cosmic_ray", "edge")


def bad_bits(planes: dict[str, int] | None = None) -> int:
    """Integer with the bits of :data:`BAD_PLANES` set."""
    planes = MASK_PLANES if planes is None else planes
    return sum(1 << planes[name] for name in BAD_PLANES if name in planes)


def _bad_column(
    rng: np.random.Generator, image: np.ndarray, bits: np.ndarray, sigma: float
) -> None:
    h, w = image.shape
    width = 1 if rng.random() < 0.8 else 2
    x0 = int(rng.integers(0, w - width + 1))
    if rng.random() < 0.5:
        rows = slice(0, h)
    else:
        start = int(rng.integers(0, h))
        rows = slice(start, h) if rng.random() < 0.5 else slice(0, start + 1)
    offset = rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 30.0) * sigma
    image[rows, x0 : x0 + width] += offset
    bits[rows, x0 : x0 + width] |= 1 << MASK_PLANES["BAD"]


def _cosmic_ray(
    rng: np.random.Generator, image: np.ndarray, bits: np.ndarray, sigma: float
) -> None:
    h, w = image.shape
    length = rng.uniform(3.0, 20.0)
    angle = rng.uniform(0.0, math.pi)
    x, y = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
    # Sample the segment every quarter pixel: a thin, connected track.
    t = np.linspace(-0.5 * length, 0.5 * length, max(2, int(4 * length)))
    xs = np.rint(x + t * math.cos(angle)).astype(int)
    ys = np.rint(y + t * math.sin(angle)).astype(int)
    keep = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    pix = np.unique(np.stack([ys[keep], xs[keep]], axis=1), axis=0)
    if len(pix) == 0:
        return
    amp = rng.uniform(10.0, 200.0) * sigma
    image[pix[:, 0], pix[:, 1]] += amp * rng.uniform(0.5, 1.0, len(pix))
    bits[pix[:, 0], pix[:, 1]] |= 1 << MASK_PLANES["CR"]


def _edge(rng: np.random.Generator, image: np.ndarray, bits: np.ndarray, sigma: float) -> None:
    h, w = image.shape
    side = int(rng.integers(4))
    width = int(rng.integers(2, max(3, min(h, w) // 4 + 1)))
    region = [
        (slice(0, width), slice(None)),
        (slice(h - width, h), slice(None)),
        (slice(None), slice(0, width)),
        (slice(None), slice(w - width, w)),
    ][side]
    image[region] = 0.0
    bits[region] |= (1 << MASK_PLANES["EDGE"]) | (1 << MASK_PLANES["NO_DATA"])


_DEFECTS = {"bad_column": _bad_column, "cosmic_ray": _cosmic_ray, "edge": _edge}


def add_defects(
    rng: np.random.Generator,
    image: np.ndarray,
    bits: np.ndarray,
    sigma: float,
    max_defects: int = 3,
) -> list[str]:
    """Add 1 to ``max_defects`` random defects to ``image``, flagging them in ``bits``.

    Parameters
    ----------
    rng
        The cutout's generator.
    image
        ``(H, W)`` float image, modified in place.
    bits
        ``(H, W)`` integer mask, modified in place.
    sigma
        Noise standard deviation that sets the defects' amplitudes.
    max_defects
        Most defects per cutout.

    Returns
    -------
    list of str
        Kinds added, in order.
    """
    kinds = [
        DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
        for _ in range(int(rng.integers(1, max_defects + 1)))
    ]
    for kind in kinds:
        _DEFECTS[kind](rng, image, bits, sigma)
    return kinds

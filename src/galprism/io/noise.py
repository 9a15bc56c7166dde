"""Per-pixel noise variance from whichever convention a file uses.

Accepted HDUs, by ``EXTNAME``: ``VARIANCE``/``VAR`` (variance), ``ERR``/``SIGMA``/``STD``
(standard deviation), ``IVAR``/``WHT``/``WEIGHT``/``INVVAR`` (inverse variance, the
convention of drizzled HST ``WHT`` maps and of the Legacy Surveys). An inverse variance of
zero means "no information" and masks the pixel. A non-positive variance or sigma at a
pixel that is otherwise valid is an error naming the file: it can only come from a
broken noise map, and silently masking it would hide that.

Without any of these, the noise is estimated per band from the image with a
sigma-clipped (MAD) standard deviation, which ignores the galaxy pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.stats import sigma_clipped_stats

from ..errors import InputError

__all__ = [
    "NOISE_HDUS",
    "NoiseKind",
    "NoiseResult",
    "to_variance",
    "estimate_variance",
    "parse_sigma",
]

NoiseKind = str  # "variance" | "sigma" | "ivar"

#: EXTNAME -> what it holds, in the order they are looked for
NOISE_HDUS: dict[str, NoiseKind] = {
    "VARIANCE": "variance",
    "VAR": "variance",
    "ERR": "sigma",
    "SIGMA": "sigma",
    "STD": "sigma",
    "IVAR": "ivar",
    "INVVAR": "ivar",
    "WHT": "ivar",
    "WEIGHT": "ivar",
}


@dataclass(frozen=True)
class NoiseResult:
    """Variance (float64, same shape as the image) and pixels it invalidates."""

    variance: np.ndarray
    invalid: np.ndarray
    description: str


def to_variance(values: np.ndarray, kind: NoiseKind, valid: np.ndarray, what: str) -> NoiseResult:
    """Convert a noise map to variance and check it at the valid pixels.

    Parameters
    ----------
    values
        The noise map, broadcastable to ``valid``'s shape.
    kind
        ``"variance"``, ``"sigma"`` or ``"ivar"``.
    valid
        Pixels that are valid so far (finite data, not flagged by the mask).
    what
        How the noise HDU is named in messages.

    Returns
    -------
    NoiseResult
        ``variance`` holds 1.0 wherever it is not usable; ``invalid`` marks the pixels
        the noise map removes (non-finite values, zero inverse variance).

    Raises
    ------
    InputError
        If the map holds a negative or zero variance (or sigma, or a negative inverse
        variance) at a valid pixel.
    """
    v = np.broadcast_to(np.asarray(values, dtype=np.float64), valid.shape)
    nonfinite = ~np.isfinite(v)
    if kind == "ivar":
        bad = valid & ~nonfinite & (v < 0)
        if bad.any():
            raise InputError(
                f"{what}: negative inverse variance at {int(bad.sum())} unmasked pixel(s)"
            )
        invalid = nonfinite | (v == 0)
        with np.errstate(divide="ignore"):
            var = np.where(invalid, 1.0, 1.0 / np.where(invalid, 1.0, v))
        # An ivar so small that 1/ivar overflows is as good as no data.
        overflow = ~np.isfinite(var)
        invalid = invalid | overflow
        var = np.where(overflow, 1.0, var)
    else:
        label = "variance" if kind == "variance" else "noise sigma"
        bad = valid & ~nonfinite & (v <= 0)
        if bad.any():
            worst = float(v[bad].min())
            raise InputError(
                f"{what}: {label} is zero or negative (min {worst:.3g}) at {int(bad.sum())} "
                "unmasked pixel(s)"
            )
        invalid = nonfinite
        var = v**2 if kind == "sigma" else v
        var = np.where(invalid | ~valid, 1.0, var)
    return NoiseResult(np.ascontiguousarray(var), invalid, f"{kind} map {what}")


def estimate_variance(image: np.ndarray, valid: np.ndarray, what: str) -> NoiseResult:
    """Estimate a constant variance per band from the image's background pixels.

    Uses astropy's ``sigma_clipped_stats`` with the MAD standard deviation, so that the
    sources (a minority of pixels) do not inflate the estimate.

    Parameters
    ----------
    image
        ``(C, H, W)`` pixel values.
    valid
        ``(C, H, W)`` pixels to use.
    what
        How the image is named in messages.

    Raises
    ------
    InputError
        If a band has too few valid pixels or zero scatter (e.g. a constant image).
    """
    var = np.ones(image.shape, dtype=np.float64)
    sigmas = []
    for c in range(image.shape[0]):
        pix = image[c][valid[c]]
        if pix.size < 10:
            raise InputError(
                f"{what}: band {c} has only {pix.size} valid pixel(s), too few to estimate the "
                "noise"
            )
        _, _, std = sigma_clipped_stats(pix, sigma=3.0, maxiters=10, stdfunc="mad_std")
        if not np.isfinite(std) or std <= 0:
            raise InputError(
                f"{what}: band {c} has no pixel-to-pixel scatter, cannot estimate the noise; "
                "give the noise sigma explicitly"
            )
        var[c] = std**2
        sigmas.append(std)
    text = ", ".join(f"{s:.4g}" for s in sigmas)
    return NoiseResult(
        var, np.zeros(image.shape, bool), f"estimated (sigma-clipped MAD) sigma = {text}"
    )


def parse_sigma(spec: str, n_bands: int, what: str) -> np.ndarray:
    """Parse a noise sigma: one value for every band or one per band, comma separated.

    Returns
    -------
    numpy.ndarray
        ``(C, 1, 1)`` standard deviations.
    """
    try:
        values = [float(t) for t in str(spec).split(",") if t.strip()]
    except ValueError as exc:
        raise InputError(
            f"{what}: noise sigma {spec!r} is not a number or comma-separated numbers"
        ) from exc
    if len(values) == 1:
        values = values * n_bands
    if len(values) != n_bands:
        raise InputError(f"{what}: noise sigma gives {len(values)} values for {n_bands} band(s)")
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"{what}: noise sigma must be positive, got {spec}")
    return arr.reshape(-1, 1, 1)

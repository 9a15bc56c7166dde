"""How well a cutout's noise map describes its background pixels.

    python scripts/noise_check.py sample_fits/*.fits

For each cutout, prints one JSON line: the number of source-free pixels (outside a
photutils segmentation at 1.5 sigma of the 2-px Gaussian-smoothed image, dilated by
3 px, and unflagged in ``MASK`` when there is one), the ratio of their variance (about their
median) to the median of the
``VARIANCE`` plane, and the correlation of neighbouring pixels (x, y, diagonal). A model
that explains the data down to the noise has a reduced chi^2 near that ratio, not 1, and
correlated noise is partly fitted by flexible models (priors/README.md, "posterior-
predictive chi^2").
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from astropy.convolution import convolve
from astropy.io import fits
from photutils.segmentation import detect_sources, make_2dgaussian_kernel
from scipy import ndimage


def neighbour_correlation(z: np.ndarray, ok: np.ndarray, dy: int, dx: int) -> float:
    """Correlation of ``z`` with itself shifted by ``(dy, dx)``, over pairs of ``ok`` pixels."""
    h, w = z.shape
    a = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
    b = (slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0)))
    both = ok[a] & ok[b]
    return float((z[a] * z[b])[both].mean() / z[ok].var())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cutouts", nargs="+")
    args = ap.parse_args()
    for path in args.cutouts:
        data = fits.getdata(path, "SCI").astype(float)
        var = fits.getdata(path, "VARIANCE").astype(float)
        sigma = float(np.sqrt(np.median(var)))
        seg = detect_sources(convolve(data, make_2dgaussian_kernel(2.0, 5)), 1.5 * sigma, 5)
        sources = (
            np.zeros(data.shape, bool)
            if seg is None
            else ndimage.binary_dilation(seg.data > 0, iterations=3)
        )
        ok = ~sources & np.isfinite(data)
        with fits.open(path) as hdul:
            if "MASK" in hdul:
                ok &= hdul["MASK"].data == 0  # any flagged bit: not a clean background pixel
        z = np.where(ok, data - np.median(data[ok]), 0.0)
        print(
            json.dumps(
                {
                    "input": path,
                    "background_pixels": int(ok.sum()),
                    "variance_ratio": round(float((z[ok] ** 2).mean() / np.median(var)), 3),
                    "rho_x": round(neighbour_correlation(z, ok, 0, 1), 3),
                    "rho_y": round(neighbour_correlation(z, ok, 1, 0), 3),
                    "rho_diag": round(neighbour_correlation(z, ok, 1, 1), 3),
                }
            )
        )


if __name__ == "__main__":
    main()

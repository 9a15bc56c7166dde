"""How well can a source of a given width explain the compact source of hsc_cosmos35_i?

    python scripts/real_point_source_fit.py [--radius 4] [--json]

The real HSC blend ``sample_fits/hsc_cosmos35_i.fits`` holds a compact source at
(row 33, column 14), 586 sigma at its peak. This fits it, in a box of ``--radius``
pixels, by ``flux * (PSF x Gaussian of FWHM w)`` at a free sub-pixel position plus a
plane (flux and plane by linear least squares, position by ``scipy.optimize``), for a
range of widths ``w``, using the cutout's own PSF, variance and mask (DETECTED is
informational, every other set bit is excluded). It prints the reduced chi^2 of each
best fit. ``w = 0`` is a point source; ``w = 1.19`` px (0.2") is the truth kernel of
``galprism simulate``, the narrowest source any simulated truth image contains, hence
the narrowest a prior trained on them knows. GalSim draws the shifted profiles (the
PSF as an ``InterpolatedImage``, ``method="no_pixel"``: the PSF image already includes
the pixel).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits
from scipy.optimize import least_squares

ROOT = Path(__file__).resolve().parents[1]
CUTOUT = ROOT / "sample_fits" / "hsc_cosmos35_i.fits"
CENTRE = (33, 14)  # row, column of the compact source's peak
TRUTH_KERNEL_PX = 0.2 / 0.168
DETECTED = 1 << 5
WIDTHS = [0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, TRUTH_KERNEL_PX, 1.5]


def fit_widths(radius: int, widths: list[float]) -> dict:
    """Best reduced chi^2 per Gaussian width (pixels FWHM) in a box around the source."""
    with fits.open(CUTOUT) as h:
        sci = h["SCI"].data.astype(float)
        var = h["VARIANCE"].data.astype(float)
        mask = h["MASK"].data
        psf = h["PSF"].data.astype(float)
    y0, x0 = CENTRE
    box = (slice(y0 - radius, y0 + radius + 1), slice(x0 - radius, x0 + radius + 1))
    n = 2 * radius + 1
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    data, sigma = sci[box].ravel(), np.sqrt(var[box]).ravel()
    ok = ((mask[box] & ~DETECTED) == 0).ravel()
    psf_profile = galsim.InterpolatedImage(
        galsim.Image(psf, scale=1.0), x_interpolant="lanczos5", flux=1.0
    )

    def residual(shift: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
        prof = (
            psf_profile if width <= 0 else galsim.Convolve(psf_profile, galsim.Gaussian(fwhm=width))
        )
        img = prof.drawImage(nx=n, ny=n, scale=1.0, method="no_pixel", offset=tuple(shift)).array
        design = np.stack([img.ravel(), np.ones(n * n), xx.ravel(), yy.ravel()], axis=1)
        a = design[ok] / sigma[ok, None]
        b = data[ok] / sigma[ok]
        coef, *_ = np.linalg.lstsq(a, b, rcond=None)
        return b - a @ coef, coef

    rows = []
    for w in widths:
        # a few starts: the chi^2 surface in the sub-pixel shift has local minima
        best = min(
            (
                least_squares(lambda p, w=w: residual(p, w)[0], [sx, sy], diff_step=1e-3)
                for sx in (-0.3, 0.0, 0.3)
                for sy in (-0.3, 0.0, 0.3)
            ),
            key=lambda r: r.cost,
        )
        res, coef = residual(best.x, w)
        rows.append(
            {
                "gauss_fwhm_px": round(w, 3),
                "reduced_chi2": round(float(res @ res / (ok.sum() - 6)), 2),
                "flux": round(float(coef[0]), 1),
            }
        )
    return {
        "cutout": str(CUTOUT.relative_to(ROOT)),
        "box_radius_px": radius,
        "pixels": int(ok.sum()),
        "peak_over_sigma": round(float(sci[y0, x0] / np.sqrt(var[y0, x0])), 1),
        "fits": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--radius", type=int, default=4, help="half-side of the fitted box, pixels")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    out = fit_widths(args.radius, WIDTHS)
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"{out['cutout']}: box radius {args.radius} px, {out['pixels']} pixels, peak {out['peak_over_sigma']} sigma"
    )
    for r in out["fits"]:
        print(
            f"  PSF x Gaussian FWHM {r['gauss_fwhm_px']:5.2f} px: reduced chi^2 {r['reduced_chi2']:8.2f}, flux {r['flux']}"
        )


if __name__ == "__main__":
    main()

"""Where the reduced chi^2 of a real cutout's separation comes from, and what a point-source
model with the cutout's own PSF would leave.

    python scripts/real_chi2_budget.py OUTPUT.fits [--input sample_fits/hsc_cosmos35_i.fits]
        [--radius 6] [--fit-shape 11] [--json]

For the ``galprism separate`` output ``OUTPUT.fits`` (its ``RESID`` plane, residuals in
noise units over unmasked pixels) it prints the reduced chi^2 and the share of the total
chi^2 within ``--radius`` pixels of each of the input's two brightest peaks. For each
peak it then fits the input's PSF alone (photutils ``PSFPhotometry`` with an ``ImagePSF``,
free flux and position, the cutout's variance as the error) and prints the mean chi^2 of
that fit over its ``--fit-shape`` box: about 1 for a star when the PSF model is exact,
and far above 1 for a resolved galaxy. The peak's fitted flux in the prior's units
(``/ flux_scale``) is printed beside the priors' largest noise level ``sigma_max``: a
diffusion prior cannot produce an intrinsic pixel much brighter than its ``sigma_max``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import QTable
from photutils.psf import ImagePSF, PSFPhotometry
from scipy import ndimage

from galprism.priorset import load_priorset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", type=Path)
    ap.add_argument(
        "--input", type=Path, default=None, help="the separated cutout [the output's INFILE]"
    )
    ap.add_argument("--radius", type=float, default=6.0)
    ap.add_argument("--fit-shape", type=int, default=11)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with fits.open(args.output) as h:
        hdr = h[0].header
        resid = h["RESID"].data.astype(np.float64)
        prior_name = hdr["PRIOR"]
    x0, y0 = int(hdr["CROPX0"]), int(hdr["CROPY0"])
    path = args.input or Path(hdr["INFILE"])
    with fits.open(path) as h:
        sci = h["SCI"].data.astype(np.float64)
        var = h["VARIANCE"].data.astype(np.float64)
        psf = h["PSF"].data.astype(np.float64)
    chi2 = resid**2
    good = np.isfinite(chi2)
    total = float(chi2[good].sum())
    crop = sci[y0 : y0 + resid.shape[0], x0 : x0 + resid.shape[1]]
    peaks = (ndimage.maximum_filter(crop, 5) == crop) & good
    ys, xs = np.nonzero(peaks)
    order = np.argsort(crop[ys, xs])[::-1][:2]
    yy, xx = np.mgrid[: resid.shape[0], : resid.shape[1]]
    phot = PSFPhotometry(
        ImagePSF(psf / psf.sum(), x_0=psf.shape[1] // 2, y_0=psf.shape[0] // 2),
        args.fit_shape,
        aperture_radius=4.0,
    )
    try:
        prior = load_priorset(prior_name)
        sigma_max = {
            s: float(p.schedule.sigma_max)
            for s, p in zip(prior.sources, prior.priors, strict=True)
            if hasattr(p, "schedule")
        }
        flux_scale = prior.frame.flux_scale * 10 ** (
            -0.4 * (float(hdr["ZPINPUT"]) - float(hdr["ZPPRIOR"]))
        )
    except Exception:  # a prior folder not found from here: report without it
        sigma_max, flux_scale = {}, float("nan")
    rows = []
    half = args.fit_shape // 2
    for i in order:
        y, x = int(ys[i]), int(xs[i])
        near = (np.hypot(yy - y, xx - x) <= args.radius) & good
        table = phot(sci, error=np.sqrt(var), init_params=QTable({"x": [x + x0], "y": [y + y0]}))
        model = phot.make_model_image(sci.shape)
        yi, xi = int(round(float(table["y_fit"][0]))), int(round(float(table["x_fit"][0])))
        box = (slice(yi - half, yi + half + 1), slice(xi - half, xi + half + 1))
        box_chi2 = float(np.mean((sci[box] - model[box]) ** 2 / var[box]))
        rows.append(
            {
                "peak_xy_input": [x + x0, y + y0],
                "share_of_chi2_within_radius": round(float(chi2[near].sum()) / total, 3),
                "psf_fit_flux": round(float(table["flux_fit"][0]), 2),
                "psf_fit_flux_prior_units": round(float(table["flux_fit"][0]) / flux_scale, 1),
                "psf_fit_mean_chi2_in_box": round(box_chi2, 2),
            }
        )
    out = {
        "output": str(args.output),
        "input": str(path),
        "reduced_chi2": round(total / int(good.sum()), 2),
        "pixels": int(good.sum()),
        "radius": args.radius,
        "fit_shape": args.fit_shape,
        "prior_sigma_max": sigma_max,
        "peaks": rows,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

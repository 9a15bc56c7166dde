"""Where the posterior spread of a central galaxy's total flux comes from.

    galprism separate - --output-dir OUT --seed 0 < list-of-test-cutouts.txt
    python scripts/flux_variance_budget.py TESTSET OUT [--json]

TESTSET is a test set of ``galprism simulate``/``galprism evaluate`` (FITS cutouts, and
their truth files in ``TESTSET/truth``); OUT holds the ``<stem>.galprism.fits`` outputs of
``galprism separate`` for some of them. For every cutout the galaxy's footprint is the
set of pixels where the PSF-convolved true galaxy (``TRUE_GALAXY_CONV``) is at least one
noise sigma. The script splits each posterior sample's intrinsic galaxy flux into the
part inside and the part outside that footprint and prints:

* the z-scores ``(truth - mean) / std`` of the total flux and of the in-footprint flux,
  their median and robust spread (1.4826 x MAD), and the fraction of cutouts inside the
  central 68% Student interval from the samples (as ``galprism evaluate`` computes it);
* the share of the total flux's posterior variance that comes from outside the
  footprint, the galaxy's per-pixel posterior standard deviation there in noise units,
  and the correlation between the galaxy's and the sky's light there across samples.

A calibrated posterior gives a robust z spread near 1.1 with 8 samples (Student, 7
degrees of freedom, times ``sqrt(1 + 1/8)``) and 68% coverage near 68%.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from astropy.io import fits

from galprism.evaluate.calibration import inside as in_interval


def _z(samples: np.ndarray, truth: float) -> float:
    return float((truth - samples.mean()) / samples.std(ddof=1))


def _robust_std(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def budget(testset: Path, outputs: Path) -> dict:
    """Per-cutout flux statistics of every ``*.galprism.fits`` in ``outputs`` (see module docstring)."""
    rows = []
    for out in sorted(outputs.glob("*.galprism.fits")):
        stem = out.name.removesuffix(".galprism.fits")
        with fits.open(testset / f"{stem}.fits") as obs:
            sigma = float(np.sqrt(np.median(obs["VARIANCE"].data)))
        with fits.open(testset / "truth" / f"{stem}.truth.fits") as t:
            true_gal = t["TRUE_GALAXY"].data.astype(float)
            foot = t["TRUE_GALAXY_CONV"].data >= sigma
        if foot.sum() < 3:
            continue
        with fits.open(out) as h:
            gal = h["GALAXY"].data.astype(float)  # (samples, ny, nx)
            sky = h["SKY"].data.astype(float)
        total = gal.sum(axis=(1, 2))
        inside = (gal * foot).sum(axis=(1, 2))
        outside_g = (gal * ~foot).sum(axis=(1, 2))
        outside_s = (sky * ~foot).sum(axis=(1, 2))
        rows.append(
            {
                "cutout": stem,
                "z_total": _z(total, true_gal.sum()),
                "z_inside": _z(inside, (true_gal * foot).sum()),
                # the interval galprism evaluate scores (Student, from the samples)
                "in68_total": bool(in_interval(total, true_gal.sum(), 0.68, "student")),
                "in68_inside": bool(in_interval(inside, (true_gal * foot).sum(), 0.68, "student")),
                "outside_variance_share": float(outside_g.var(ddof=1) / total.var(ddof=1)),
                "outside_pixel_std_sigma": float(np.median(gal.std(axis=0, ddof=1)[~foot]) / sigma),
                "outside_galaxy_sky_corr": float(np.corrcoef(outside_g, outside_s)[0, 1]),
            }
        )
    if not rows:
        raise SystemExit(f"{outputs}: no *.galprism.fits with a footprint of at least 3 pixels")
    summary = {"n": len(rows)}
    for part in ("total", "inside"):
        z = np.array([r[f"z_{part}"] for r in rows])
        summary[f"z_{part}"] = {
            "median": float(np.median(z)),
            "robust_std": _robust_std(z),
            "coverage68": float(np.mean([r[f"in68_{part}"] for r in rows])),
        }
    for key in ("outside_variance_share", "outside_pixel_std_sigma", "outside_galaxy_sky_corr"):
        summary[key] = float(np.median([r[key] for r in rows]))
    return {"summary": summary, "cutouts": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("testset", type=Path)
    ap.add_argument("outputs", type=Path)
    ap.add_argument(
        "--json", action="store_true", help="print the per-cutout rows too, as one JSON object"
    )
    args = ap.parse_args()
    result = budget(args.testset, args.outputs)
    print(json.dumps(result if args.json else result["summary"]))


if __name__ == "__main__":
    main()

"""Where does a test galaxy's light go? Galaxy vs sky posterior around the centre.

    python scripts/central_flux_split.py TESTSET_DIR --ident 38 [--prior default]
        [--radius 8] [--steps 16] [--cg-iterations 1] [--json]

Separates every cutout of a ``galprism simulate`` test set whose central galaxy has the
given COSMOS IDENT (read from the truth files' ``SOURCES`` table), with
``galprism separate``'s library call (seed 0), and compares with the truth files: the
true and posterior-mean total flux of the galaxy, and the sky's flux within
``--radius`` pixels of the centre, true and posterior. ``sky_excess`` is (posterior -
true sky there) / true galaxy flux: the fraction of the central's light that the sky
source took. Prints medians over the cutouts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from galprism.diffusion import SamplerConfig
from galprism.priorset import load_priorset
from galprism.separate import SeparateConfig, run_separate


def central_ident(truth: Path) -> int:
    """IDENT of the central galaxy in a truth file (-1 if none)."""
    with fits.open(truth) as h:
        src = h["SOURCES"].data
        central = src[src["ROLE"] == "central"]
        return int(central["IDENT"][0]) if len(central) else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("testset", type=Path)
    ap.add_argument("--ident", type=int, required=True)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--radius", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--cg-iterations", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    truths = sorted((args.testset / "truth").glob("*.truth.fits"))
    picked = [t for t in truths if central_ident(t) == args.ident]
    if not picked:
        raise SystemExit(f"{args.testset}: no cutout has central IDENT {args.ident}")
    prior = load_priorset(args.prior)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = [str(args.testset / t.name.replace(".truth.fits", ".fits")) for t in picked]
        config = SeparateConfig(
            output_dir=Path(tmp),
            sampler=SamplerConfig(steps=args.steps, cg_iterations=args.cg_iterations),
        )
        if run_separate(inputs, prior, config).exit_code != 0:
            raise SystemExit("separation failed")
        for t in picked:
            out = Path(tmp) / t.name.replace(".truth.fits", ".galprism.fits")
            with fits.open(t) as th, fits.open(out) as oh:
                true_gal, true_sky = th["TRUE_GALAXY"].data, th["TRUE_SKY"].data
                post_gal, post_sky = oh["GALAXY_MEAN"].data, oh["SKY_MEAN"].data
            yy, xx = np.indices(true_gal.shape)
            c = 0.5 * (np.array(true_gal.shape) - 1)
            near = np.hypot(yy - c[0], xx - c[1]) < args.radius
            rows.append(
                (
                    true_gal.sum(),
                    post_gal.sum(),
                    true_sky[near].sum(),
                    post_sky[near].sum(),
                    (post_sky[near].sum() - true_sky[near].sum()) / true_gal.sum(),
                )
            )
    med = np.median(np.array(rows), axis=0)
    out = {
        "testset": str(args.testset),
        "ident": args.ident,
        "prior": prior.name,
        "cutouts": len(rows),
        "steps": args.steps,
        "cg_iterations": args.cg_iterations,
        "radius_px": args.radius,
        "median_true_galaxy_flux": round(float(med[0]), 3),
        "median_posterior_galaxy_flux": round(float(med[1]), 3),
        "median_true_sky_near_centre": round(float(med[2]), 3),
        "median_posterior_sky_near_centre": round(float(med[3]), 3),
        "median_sky_excess": round(float(med[4]), 3),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()

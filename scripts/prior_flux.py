"""Does a learned prior know bright sources? Its samples' total flux against the truth.

    python scripts/prior_flux.py PRIOR [--source galaxy] [--n 256] [--steps 32]
        [--truth priors/data/gal/hsc_galaxies_train.truth.h5] [--seed 0] [--json]

Draws ``--n`` samples of one source from a prior folder (DDIM, ``--steps`` steps) and
prints percentiles of their total flux (prior units, e.g. counts at ZP 27), and the
same for the true images of that source in a ``galprism simulate`` truth HDF5 file (the
training centrals the prior was learned from, never shown to EM). A prior whose upper
percentiles fall far below the truth's has not learned the bright members.

It also prints the images' light far from the centre (radius above ``--outer-radius``
pixels, 16 by default, where the simulated centrals have almost none): the per-pixel
standard deviation there in units of the HSC-like noise sigma and the spread of its sum.
A prior whose samples carry a noise-like floor there gives total fluxes a spread that
the galaxies do not have (docs/evaluation.md, "Why the 68% intervals are too wide").
"""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import torch

from galprism.priorset import load_priorset
from galprism.simulate.noise import hsc_i_sigma

PERCENTILES = (5, 25, 50, 75, 95, 99)


def summary(flux: np.ndarray) -> dict[str, float]:
    """Percentiles and bright fractions of a set of total fluxes."""
    out = {
        f"p{p}": round(float(v), 3)
        for p, v in zip(PERCENTILES, np.percentile(flux, PERCENTILES), strict=True)
    }
    out["frac_above_10"] = round(float((flux > 10).mean()), 4)
    out["frac_above_20"] = round(float((flux > 20).mean()), 4)
    out["n"] = int(flux.size)
    return out


def outskirts(images: np.ndarray, radius: float, sigma: float) -> dict[str, float]:
    """Light beyond ``radius`` pixels of the centre of ``images`` (n, ny, nx)."""
    ny, nx = images.shape[-2:]
    yy, xx = np.mgrid[:ny, :nx]
    ring = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2) > radius
    outer = images[:, ring]
    return {
        "outer_pixel_std_sigma": round(float(outer.std() / sigma), 4),
        "outer_flux_std": round(float(outer.sum(axis=1).std()), 4),
        "outer_pixels": int(ring.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prior")
    ap.add_argument("--source", default="galaxy")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument(
        "--truth", help="truth HDF5 of the training view (dataset named like the source)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--outer-radius",
        type=float,
        default=16.0,
        help="pixels; the outskirts statistics use the light beyond it",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ps = load_priorset(args.prior)
    x = ps.sample_prior(
        args.source,
        args.n,
        steps=args.steps,
        sampler="ddim",
        generator=torch.Generator().manual_seed(args.seed),
    )
    result = {
        "prior": args.prior,
        "source": args.source,
        "steps": args.steps,
        "seed": args.seed,
        "prior_samples": summary(x.sum(dim=(-1, -2)).flatten().numpy()),
    }
    images = x.reshape(-1, *x.shape[-2:]).numpy()
    result["prior_samples"].update(outskirts(images, args.outer_radius, hsc_i_sigma()))
    if args.truth:
        with h5py.File(args.truth, "r") as f:
            d = f[args.source]
            result["truth"] = summary(np.array([float(d[i].sum()) for i in range(d.shape[0])]))
            n = min(d.shape[0], 1024)
            truth_images = np.asarray(d[:n], dtype=np.float64).reshape(n, *d.shape[-2:])
            result["truth"].update(outskirts(truth_images, args.outer_radius, hsc_i_sigma()))
            result["truth_file"] = args.truth
    if args.json:
        print(json.dumps(result))
    else:
        for k in ("prior_samples", "truth"):
            if k in result:
                print(f"{k:>13}: " + ", ".join(f"{a} {b}" for a, b in result[k].items()))


if __name__ == "__main__":
    main()

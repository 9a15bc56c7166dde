"""Does a learned prior know bright sources? Its samples' total flux against the truth.

    python scripts/prior_flux.py PRIOR [--source galaxy] [--n 256] [--steps 32]
        [--truth priors/data/gal/hsc_galaxies_train.truth.h5] [--seed 0] [--json]

Draws ``--n`` samples of one source from a prior folder (DDIM, ``--steps`` steps) and
prints percentiles of their total flux (prior units, e.g. counts at ZP 27), and the
same for the true images of that source in a ``galprism simulate`` truth HDF5 file (the
training centrals the prior was learned from, never shown to EM). A prior whose upper
percentiles fall far below the truth's has not learned the bright members.
"""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import torch

from galprism.priorset import load_priorset

PERCENTILES = (5, 25, 50, 75, 95, 99)


def summary(flux: np.ndarray) -> dict[str, float]:
    """Percentiles and bright fractions of a set of total fluxes."""
    out = {f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, np.percentile(flux, PERCENTILES), strict=True)}
    out["frac_above_10"] = round(float((flux > 10).mean()), 4)
    out["frac_above_20"] = round(float((flux > 20).mean()), 4)
    out["n"] = int(flux.size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prior")
    ap.add_argument("--source", default="galaxy")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--truth", help="truth HDF5 of the training view (dataset named like the source)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ps = load_priorset(args.prior)
    x = ps.sample_prior(args.source, args.n, steps=args.steps, sampler="ddim", generator=torch.Generator().manual_seed(args.seed))
    result = {"prior": args.prior, "source": args.source, "steps": args.steps, "seed": args.seed,
              "prior_samples": summary(x.sum(dim=(-1, -2)).flatten().numpy())}
    if args.truth:
        with h5py.File(args.truth, "r") as f:
            d = f[args.source]
            result["truth"] = summary(np.array([float(d[i].sum()) for i in range(d.shape[0])]))
            result["truth_file"] = args.truth
    if args.json:
        print(json.dumps(result))
    else:
        for k in ("prior_samples", "truth"):
            if k in result:
                print(f"{k:>13}: " + ", ".join(f"{a} {b}" for a, b in result[k].items()))


if __name__ == "__main__":
    main()

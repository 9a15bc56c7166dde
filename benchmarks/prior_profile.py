"""Where a prior's draws put their light: the radial profile of unconditional draws.

Draws ``--n`` unconditional samples of one source of a prior (DDIM, ``--steps``, seed
``--seed``) and prints, per annulus around the grid's center, the median over draws of
the annulus' summed flux as a fraction of the draw's total (all bands). A galaxy source
learned jointly with a sky source need not be positive everywhere: the two split the
smooth light between them, and a scene's blend, which has the galaxy source and a
background plane but no sky source, keeps whatever pedestal the galaxy's draws carry
where the data constrain it weakly (a faint galaxy).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/prior_profile.py --prior default --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from galprism.diffusion.samplers import SamplerConfig
from galprism.priorset import load_priorset
from galprism.sampling import sample_prior

#: annulus edges in grid pixels (the last one reaches the grid's corners)
EDGES = (0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, float("inf"))


def profile(prior_name: str, source: str, n: int, steps: int, seed: int) -> dict:
    """The median fraction of each draw's total flux in each annulus of :data:`EDGES`."""
    prior = load_priorset(prior_name)
    module = prior.priors[prior.sources.index(source)]
    t0 = time.process_time()
    x = sample_prior(
        [module],
        n,
        config=SamplerConfig(steps=steps),
        generators=torch.Generator().manual_seed(seed),
        device="cpu",
    )[:, 0]
    x = x.to(torch.float64).sum(1).numpy()  # (n, h, w), bands summed
    h, w = x.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(xx - (w - 1) / 2.0, yy - (h - 1) / 2.0)
    total = x.sum((1, 2))
    rows = []
    for lo, hi in zip(EDGES[:-1], EDGES[1:], strict=True):
        ring = (r >= lo) & (r < hi)
        rows.append(
            {
                "r_min": lo,
                "r_max": hi if np.isfinite(hi) else None,
                "fraction_of_total": float(np.median(x[:, ring].sum(1) / total)),
            }
        )
    return {
        "prior": prior.name,
        "source": source,
        "n_draws": n,
        "steps": steps,
        "seed": seed,
        "median_total": float(np.median(total)),
        "annuli": rows,
        "cpu_seconds": time.process_time() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", default="default")
    parser.add_argument("--source", default="galaxy")
    parser.add_argument("--n", type=int, default=128, help="unconditional draws")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    out = profile(args.prior, args.source, args.n, args.steps, args.seed)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['prior']} {out['source']}: median total {out['median_total']:.3f}")
        for row in out["annuli"]:
            hi = "corners" if row["r_max"] is None else f"{row['r_max']:g}"
            print(f"  r {row['r_min']:g}-{hi} px: {row['fraction_of_total']:+.3f} of the total")
    return 0


if __name__ == "__main__":
    sys.exit(main())

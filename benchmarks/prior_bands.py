"""Several priors on the same simulated cutouts, band by band: PSNR, flux error and RMSE.

For each test cutout (a ``galprism simulate --view galaxies`` batch, single- or multi-band,
with its ``truth/`` folder) each prior separates the cutout with the default sampler
settings (``galprism separate``'s pipeline: :func:`galprism.separate.fit_to_prior` and
:func:`galprism.separate.separate_observations`, the same seed per cutout for every prior),
and the posterior mean of its ``galaxy`` source is compared with ``TRUE_GALAXY`` in every
band: PSNR with the truth's peak as signal, relative total-flux error, RMSE in units of
that band's noise. Prints per band the median of each measure per prior and the paired
difference of the first two priors (mean and standard error over cutouts).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/prior_bands.py --test-dir sims/test \\
        --prior hsc-grizy --prior hsc-grizy-gaussian --n-cutouts 200 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits

from galprism.diffusion.samplers import SamplerConfig
from galprism.evaluate.measures import flux_error, psnr_peak, rmse_noise
from galprism.io.inputs import cutout_seed
from galprism.io.read import read_cutout
from galprism.priorset import load_priorset
from galprism.separate import SeparateConfig, fit_to_prior, separate_observations


def measure(prior_name: str, paths: list[Path], n_samples: int, batch: int) -> dict:
    """Per cutout and band: PSNR, flux error and RMSE of the galaxy's posterior mean."""
    prior = load_priorset(prior_name)
    config = SeparateConfig(sampler=SamplerConfig(n_samples=n_samples), batch_size=batch)
    out: dict[str, list] = {"psnr": [], "flux_err": [], "rmse": []}
    t0 = time.process_time()
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        obs = [fit_to_prior(read_cutout(p), prior, config)[0] for p in chunk]
        seeds = [cutout_seed(config.seed, p) for p in chunk]
        results = separate_observations(obs, prior, config, seeds)
        for path, res in zip(chunk, results, strict=True):
            k = res.sources.index("galaxy")
            mean = res.samples[:, k].astype(np.float64).mean(0)  # (C, H, W)
            truth_path = path.parent / "truth" / path.name.replace(".fits", ".truth.fits")
            truth = np.asarray(fits.getdata(truth_path, "TRUE_GALAXY"), dtype=np.float64)
            truth = truth.reshape(mean.shape)
            sigma = np.sqrt(np.median(res.observation.variance.reshape(mean.shape[0], -1), 1))
            out["psnr"].append([psnr_peak(t, m) for t, m in zip(truth, mean, strict=True)])
            out["flux_err"].append([flux_error(t, m) for t, m in zip(truth, mean, strict=True)])
            out["rmse"].append(
                [rmse_noise(t, m, s) for t, m, s in zip(truth, mean, sigma, strict=True)]
            )
    res = {key: np.asarray(v, dtype=np.float64) for key, v in out.items()}
    res["cpu_s"] = time.process_time() - t0
    res["bands"] = list(prior.frame.bands or ["band0"])
    return res


def _median(a: np.ndarray) -> float:
    return float(np.nanmedian(a))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test-dir", required=True, help="simulated cutouts with truth/")
    ap.add_argument("--prior", action="append", required=True, help="name or folder; repeat")
    ap.add_argument("--n-cutouts", type=int, default=200)
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    test_dir = Path(args.test_dir)
    paths = sorted(
        p
        for p in test_dir.glob("*.fits")
        if (test_dir / "truth" / p.name.replace(".fits", ".truth.fits")).exists()
    )[: args.n_cutouts]
    if not paths:
        print(f"{args.test_dir}: no FITS cutouts with a truth file", file=sys.stderr)
        return 1
    runs = {name: measure(name, paths, args.n_samples, args.batch) for name in args.prior}
    bands = next(iter(runs.values()))["bands"]
    report: dict = {"benchmark": "prior_bands", "n_cutouts": len(paths), "priors": {}}
    for name, r in runs.items():
        report["priors"][name] = {
            "cpu_s_per_cutout": round(r["cpu_s"] / len(paths), 2),
            "bands": {
                b: {
                    "median_psnr_db": round(_median(r["psnr"][:, i]), 3),
                    "median_abs_flux_err": round(_median(np.abs(r["flux_err"][:, i])), 4),
                    "median_rmse_sigma": round(_median(r["rmse"][:, i]), 4),
                }
                for i, b in enumerate(bands)
            },
        }
    if len(runs) >= 2:
        (a, ra), (b, rb) = list(runs.items())[:2]
        paired = {}
        for i, band in enumerate(bands):
            entry = {}
            for key, f in (("psnr", lambda x: x), ("flux_err", np.abs), ("rmse", lambda x: x)):
                d = f(ra[key][:, i]) - f(rb[key][:, i])
                d = d[np.isfinite(d)]
                entry[key] = {
                    "mean": round(float(d.mean()), 4),
                    "se": round(float(d.std(ddof=1) / math.sqrt(len(d))), 4),
                }
            paired[band] = entry
        report["paired_first_minus_second"] = {"first": a, "second": b, "bands": paired}
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

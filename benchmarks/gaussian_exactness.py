"""MMPS exactness: with Gaussian priors the sampler must reproduce the closed-form posterior.

Two Gaussian sources, an operator that masks, convolves and downsamples; prints the
largest error of the sample mean and standard deviation over pixels, in units of the
true posterior standard deviation.

    python benchmarks/gaussian_exactness.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from galprism.diffusion.samplers import SamplerConfig
from galprism.sampling import sample_posterior
from galprism.testing import exactness_errors, gaussian_problem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=4096)
    ap.add_argument("--size", type=int, default=8, help="source image side (pixels)")
    ap.add_argument("--sampler", default="pc", choices=["ddim", "heun", "pc"])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument(
        "--cg", type=int, default=None, help="CG iterations (default: observed pixels, i.e. exact)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    prob = gaussian_problem(args.size, seed=args.seed)
    cg = args.cg if args.cg is not None else prob.y[0].numel()
    t0 = time.perf_counter()
    x = sample_posterior(
        prob.priors,
        prob.operator,
        prob.y,
        prob.noise_var,
        SamplerConfig(
            method=args.sampler, steps=args.steps, n_samples=args.n_samples, cg_iterations=cg
        ),
        generators=torch.Generator().manual_seed(args.seed + 1),
    )
    seconds = time.perf_counter() - t0
    mean_err, std_err = exactness_errors(
        x[0].reshape(args.n_samples, -1), prob.post_mean, prob.post_cov
    )
    result = {
        "mean_err": mean_err,
        "std_err": std_err,
        "n_samples": args.n_samples,
        "pixels_per_source": args.size**2,
        "sampler": args.sampler,
        "steps": args.steps,
        "cg_iterations": cg,
        "seconds": seconds,
        "pass": mean_err < 0.1 and std_err < 0.1,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>18}: {v}")
    sys.exit(0 if result["pass"] else 1)


if __name__ == "__main__":
    main()

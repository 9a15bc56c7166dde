"""Discretisation error of few-step posterior samplers against a fine-step reference.

The deterministic samplers (DDIM, Heun) integrate the same probability-flow ODE of the MMPS
posterior from the same initial noise (same seeds), so each one's samples can be compared
sample by sample with a many-step run. The error is reported in units of the posterior's
own spread (the standard deviation across a cutout's samples of the reference), for the
galaxy image and for its total flux, together with the network evaluations each run made.

It runs the pipeline's own batch (:func:`galprism.separate.separate_observations`: free-form
components, supports, operators) on test-set cutouts, with ``galprism.sampling.sample``
wrapped to count the denoiser calls. Use a fixed support (default ``galaxy=20``) so that
every run sees the same operator (an adaptive support's pilot would itself change).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/solver_accuracy.py TESTSET_DIR --n 4 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

CONFIGS = {
    # name: (sampler, steps)
    "ddim8": ("ddim", 8),
    "ddim16": ("ddim", 16),
    "ddim32": ("ddim", 32),
    "heun4": ("heun", 4),
    "heun6": ("heun", 6),
    "heun8": ("heun", 8),
    "heun16": ("heun", 16),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("testset", help="folder of galprism simulate --split test cutouts")
    ap.add_argument("--n", type=int, default=4, help="first N cutouts")
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--cg-iterations", type=int, default=1)
    ap.add_argument("--reference", default="ddim:128", help="SAMPLER:STEPS of the reference")
    ap.add_argument("--configs", default="ddim8,ddim16,heun4,heun8")
    ap.add_argument("--support", default="galaxy=20")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import galprism.sampling as post
    from galprism.cli.separate import parse_support
    from galprism.diffusion.samplers import SamplerConfig, sample
    from galprism.evaluate.testset import find_testset_files, load_cutout
    from galprism.io.inputs import cutout_seed
    from galprism.priorset import load_priorset
    from galprism.separate import SeparateConfig, fit_to_prior, separate_observations

    torch.set_num_threads(args.threads)
    prior = load_priorset("default")
    cutouts = [load_cutout(p) for p in find_testset_files(args.testset)[: args.n]]
    calls = [0]
    rows = [0]

    def counting(fn):
        def wrapped(denoiser, *a, **k):
            inner = denoiser.__call__

            class Counted:
                def __getattr__(self, name):
                    return getattr(denoiser, name)

                def __call__(self, x, t):
                    calls[0] += 1
                    rows[0] += x.shape[0]
                    return inner(x, t)

            return fn(Counted(), *a, **k)

        return wrapped

    post.sample = counting(sample)

    def run(sampler: str, steps: int) -> tuple[np.ndarray, float, int]:
        config = SeparateConfig(
            sampler=SamplerConfig(
                method=sampler,
                steps=steps,
                n_samples=args.n_samples,
                cg_iterations=args.cg_iterations,
            ),
            support=parse_support([args.support]),
        )
        obs = [fit_to_prior(c.observation, prior, config)[0] for c in cutouts]
        seeds = [cutout_seed(0, c.name) for c in cutouts]
        calls[0] = 0
        t0 = time.process_time()
        res = separate_observations(obs, prior, config, seeds)
        cpu = time.process_time() - t0
        gal = np.stack([r.samples[:, prior.sources.index("galaxy"), 0] for r in res])
        return gal.astype(np.float64), cpu, calls[0]

    ref_sampler, ref_steps = args.reference.split(":")
    ref, ref_cpu, ref_calls = run(ref_sampler, int(ref_steps))
    spread = ref.std(axis=1, ddof=1)  # (B, H, W) posterior sd per pixel
    flux_ref = ref.sum(axis=(2, 3))  # (B, S)
    flux_sd = flux_ref.std(axis=1, ddof=1)  # (B,)
    out = {
        "benchmark": "solver_accuracy",
        "n_cutouts": len(cutouts),
        "n_samples": args.n_samples,
        "cg_iterations": args.cg_iterations,
        "support": args.support,
        "reference": {"name": args.reference, "cpu_seconds": round(ref_cpu, 2), "calls": ref_calls},
        "results": {},
    }
    for name in args.configs.split(","):
        sampler, steps = CONFIGS[name]
        gal, cpu, n_calls = run(sampler, steps)
        err = gal - ref
        # RMS over pixels of (error / posterior sd), then median over cutouts and samples.
        pix = np.sqrt(np.mean(err**2, axis=(2, 3)) / np.mean(spread**2, axis=(1, 2))[:, None])
        flux = np.abs(gal.sum(axis=(2, 3)) - flux_ref) / flux_sd[:, None]
        out["results"][name] = {
            "denoiser_calls": n_calls,
            "cpu_seconds": round(cpu, 2),
            "image_error_in_posterior_sd_median": round(float(np.median(pix)), 4),
            "image_error_in_posterior_sd_max": round(float(np.max(pix)), 4),
            "flux_error_in_posterior_sd_median": round(float(np.median(flux)), 4),
            "flux_error_in_posterior_sd_max": round(float(np.max(flux)), 4),
        }
        print(name, out["results"][name], file=sys.stderr, flush=True)
    print(json.dumps(out, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

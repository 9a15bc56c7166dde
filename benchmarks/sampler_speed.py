"""Posterior sampling speed and the sampler's own overhead over its network evaluations.

A 64x64 two-source problem (two U-Net priors of about 1M parameters, PSF + mask
operator), batch of 32 posterior samples, 64 steps, with 1 and 3 CG iterations. The
prediction ``n_forward * t_forward + n_vjp * t_vjp`` uses the measured cost of one
batched forward (with its graph recorded, as the sampler needs it) and one batched VJP
of the U-Net alone; ``overhead`` is the measured time divided by that prediction.

    python benchmarks/sampler_speed.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from galprism.diffusion import DiffusionPrior, SamplerConfig, VESchedule
from galprism.diffusion.samplers import denoiser_calls
from galprism.operators import Composition, Convolve, Mask, SourceSum
from galprism.sampling import sample_posterior


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, device, reps: int) -> float:
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--sampler", default="ddim", choices=["ddim", "heun", "pc"])
    ap.add_argument("--cg", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 64])
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the network timings")
    ap.add_argument("--runs", type=int, default=1, help="sampler runs per CG setting (median)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = (1, args.size, args.size)
    priors = []
    for _ in range(2):
        p = DiffusionPrior(
            shape,
            "unet",
            {"channels": 1, "widths": args.widths, "blocks": 1},
            VESchedule(1e-3, 1e2),
        )
        with (
            torch.no_grad()
        ):  # random but non-trivial weights (zero-initialised layers made active)
            for q in p.parameters():
                q.add_(0.02 * torch.randn_like(q))
        priors.append(p.to(device).eval().requires_grad_(False))
    params = sum(q.numel() for q in priors[0].parameters())

    psf = torch.exp(-((torch.arange(11) - 5.0) ** 2) / 8)
    psf = psf[:, None] * psf[None]
    view = Composition([Mask(torch.rand(shape) > 0.05), Convolve(psf, shape)])
    op = SourceSum([view, view])
    y = torch.randn(args.batch, *shape, device=device)
    noise_var = torch.full_like(y, 0.01)

    # Network alone: forward with graph recorded (what the sampler does) and one VJP.
    x = torch.randn(args.batch, *shape, device=device)
    sigma = torch.tensor(1.0, device=device)
    f = priors[0]
    with torch.no_grad():
        t_plain = _median_time(lambda: f.denoise(x, sigma), device, args.reps)
    t_fwd = _median_time(
        lambda: torch.func.vjp(lambda z: f.denoise(z, sigma), x), device, args.reps
    )
    _, vjp = torch.func.vjp(lambda z: f.denoise(z, sigma), x)
    with torch.no_grad():
        vjp(x)  # first call pays one-time lazy imports inside torch.func
        t_vjp = _median_time(lambda: vjp(x), device, args.reps)

    config = SamplerConfig(method=args.sampler, steps=args.steps)
    calls = denoiser_calls(config)
    runs = {}
    for cg in args.cg:
        n_fwd = calls * 2  # two sources
        n_vjp = calls * 2 * (cg + 1)
        times = []
        for r in range(args.runs):
            _sync(device)
            t0 = time.perf_counter()
            sample_posterior(
                priors,
                op,
                y[:1],
                noise_var[:1],
                replace(config, n_samples=args.batch, cg_iterations=cg, trust=4.0),
                generators=torch.Generator().manual_seed(r),
            )
            _sync(device)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        predicted = n_fwd * t_fwd + n_vjp * t_vjp
        runs[str(cg)] = {
            "cg_iterations": cg,
            "forward_evals_per_sample": n_fwd / args.batch,
            "vjp_evals_per_sample": n_vjp / args.batch,
            "forward_evals_per_batch": n_fwd,
            "vjp_evals_per_batch": n_vjp,
            "seconds_per_batch": seconds,
            "samples_per_second": args.batch / seconds,
            "predicted_seconds_per_batch": predicted,
            "overhead": seconds / predicted,
        }
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "batch_size": args.batch,
        "image": [args.size, args.size],
        "sources": 2,
        "unet_parameters": params,
        "steps": args.steps,
        "sampler": args.sampler,
        "seconds_forward_nograd": t_plain,
        "seconds_forward": t_fwd,
        "seconds_vjp": t_vjp,
        "runs": runs,
        "overhead": max(r["overhead"] for r in runs.values()),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

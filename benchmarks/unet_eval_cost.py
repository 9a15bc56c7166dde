"""CPU cost of one network evaluation of a prior's denoiser, and what changes it.

The MMPS posterior sampler evaluates each source's denoiser through ``torch.func.vjp``
(a forward that records its graph) and then calls the VJP ``cg_iterations`` times
(:mod:`galprism.posterior`). This script times, on one source network of a prior and a
batch of ``--batch`` images at a mid-range noise level:

* ``forward_no_grad`` / ``forward_inference_mode``: a forward without a graph;
* ``forward_func_vjp`` / ``vjp_call``: what the sampler does (forward with graph, one VJP);
* ``forward_autograd`` / ``vjp_autograd``: the same with plain autograd
  (``requires_grad`` input, ``torch.autograd.grad(..., retain_graph=True)``);
* the same two with the network and input in ``channels_last`` memory format;
* ``torch.compile`` of the network (``--compile``), through plain autograd;
* per-image cost of forward with graph + one VJP at several batch sizes.

Times are CPU seconds of the process (``time.process_time``), medians of ``--repeat``
runs after one warm-up. Outputs of every variant are checked against the reference
forward (largest absolute difference reported).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/unet_eval_cost.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch


def cpu_median(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of ``fn()`` over ``repeat`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def graph_and_vjp(denoise, x: Tensor, sigma: Tensor, u: Tensor, repeat: int) -> dict:
    """CPU seconds of the forward with graph (torch.func.vjp) and of one VJP call."""
    out, vjp = torch.func.vjp(lambda z: denoise(z, sigma), x)
    with torch.no_grad():
        t_vjp = cpu_median(lambda: vjp(u), repeat)
    t_fwd = cpu_median(lambda: torch.func.vjp(lambda z: denoise(z, sigma), x), repeat)
    return {"forward": t_fwd, "vjp": t_vjp, "out": out.detach()}


def autograd_pair(denoise, x: Tensor, sigma: Tensor, u: Tensor, repeat: int) -> dict:
    """The same with plain autograd: forward with graph, one ``autograd.grad`` call."""

    def forward():
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            return z, denoise(z, sigma)

    z, out = forward()
    t_vjp = cpu_median(lambda: torch.autograd.grad(out, z, u, retain_graph=True), repeat)
    t_fwd = cpu_median(forward, repeat)
    return {"forward": t_fwd, "vjp": t_vjp, "out": out.detach()}


Tensor = torch.Tensor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", default="default")
    ap.add_argument("--source", type=int, default=0, help="index of the source network")
    ap.add_argument("--batch", type=int, default=32, help="images per call (4 cutouts x 8)")
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--batches", default="8,32,64,128", help="batch sizes of the scaling test")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from galprism.priorset import load_priorset

    if args.threads:
        torch.set_num_threads(args.threads)
    prior = load_priorset(args.prior).priors[args.source]
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, *prior.shape)
    x = torch.randn(shape, generator=g) * args.sigma
    u = torch.randn(shape, generator=g)
    sigma = torch.tensor(args.sigma)
    r = args.repeat
    res: dict[str, float] = {}

    with torch.no_grad():
        ref = prior.denoise(x, sigma)
        res["forward_no_grad"] = cpu_median(lambda: prior.denoise(x, sigma), r)
    with torch.inference_mode():
        res["forward_inference_mode"] = cpu_median(lambda: prior.denoise(x, sigma), r)
    diffs: dict[str, float] = {}
    pair = graph_and_vjp(prior.denoise, x, sigma, u, r)
    res["forward_func_vjp"], res["vjp_call"] = pair["forward"], pair["vjp"]
    pair = autograd_pair(prior.denoise, x, sigma, u, r)
    res["forward_autograd"], res["vjp_autograd"] = pair["forward"], pair["vjp"]
    diffs["autograd"] = float((pair["out"] - ref).abs().max())

    prior.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    uc = u.contiguous(memory_format=torch.channels_last)
    pair = graph_and_vjp(prior.denoise, xc, sigma, uc, r)
    res["forward_func_vjp_channels_last"] = pair["forward"]
    res["vjp_call_channels_last"] = pair["vjp"]
    diffs["channels_last"] = float((pair["out"] - ref).abs().max())
    prior.to(memory_format=torch.contiguous_format)

    if args.compile:
        net = prior.net
        try:
            t0 = time.process_time()
            prior.net = torch.compile(net)
            pair = autograd_pair(prior.denoise, x, sigma, u, r)
            res["compile_cpu_seconds"] = time.process_time() - t0
            res["forward_autograd_compiled"] = pair["forward"]
            res["vjp_autograd_compiled"] = pair["vjp"]
            diffs["compiled"] = float((pair["out"] - ref).abs().max())
        except Exception as exc:  # report why compile is not available, do not fail
            res["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            prior.net = net

    scaling = {}
    for b in (int(v) for v in args.batches.split(",")):
        xb = torch.randn((b, *prior.shape), generator=g) * args.sigma
        ub = torch.randn((b, *prior.shape), generator=g)
        pair = graph_and_vjp(prior.denoise, xb, sigma, ub, max(3, r * 32 // max(b, 32)))
        scaling[b] = {
            "forward_per_image_ms": 1e3 * pair["forward"] / b,
            "vjp_per_image_ms": 1e3 * pair["vjp"] / b,
        }
    report = {
        "benchmark": "unet_eval_cost",
        "prior": args.prior,
        "source": args.source,
        "batch": args.batch,
        "sigma": args.sigma,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_seconds_per_call": {
            k: round(v, 5) if isinstance(v, float) else v for k, v in res.items()
        },
        "max_abs_diff_vs_reference": diffs,
        "per_image_by_batch": {
            k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in scaling.items()
        },
    }
    print(json.dumps(report, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

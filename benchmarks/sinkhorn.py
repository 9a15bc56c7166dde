"""Cost and sample-size dependence of the paper's debiased Sinkhorn divergence on our CPU.

Two measurements, each configuration in its own subprocess so that its peak memory is its
own:

* ``iteration``: seconds for a transport term stopped after its first log-domain Sinkhorn
  iteration (POT ``sinkhorn_log``; cost matrix, iteration, stopping check and final plan
  included) and for each further iteration, between two ``n``-point clouds in ``R^5``, for
  the torch and numpy backends in float32 and float64, with the peak resident memory.
* ``divergence``: the full divergence with the paper's settings (``reg=1e-3``,
  ``numItermax=1024``, ``stopThr=1e-2``) between truth samples of manifold source 1 and
  a comparison set (``same``: fresh truth; ``noisy``: truth + N(0, 0.1^2); ``gaussian``: a
  Gaussian with the source's mean and covariance; ``other``: source 2), for several ``n``:
  value, iterations of its three transport problems, wall time.

Wall times on a shared machine depend on its load (recorded as ``load_average``); CPU
seconds of the process (``cpu_seconds*``) are what the same work costs on a free core when
it runs on one thread.

Usage::

    python benchmarks/sinkhorn.py --mode iteration --n 1024 4096 16384 --json
    python benchmarks/sinkhorn.py --mode divergence --n 512 1024 2048 --pairs same noisy --json
    python benchmarks/sinkhorn.py --mode divergence --backends emd:float64 --json  # exact W2^2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def comparison_set(pair: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Truth samples of source 1 and the comparison set named ``pair``."""
    from paper.manifold import contrastive_problem

    problem = contrastive_problem(2, 16, seed=seed)
    u = problem.sample_source(0, n, seed=1, dtype=torch.float64).numpy()
    rng = np.random.default_rng(seed + 100)
    if pair == "same":
        v = problem.sample_source(0, n, seed=2, dtype=torch.float64).numpy()
    elif pair == "noisy":
        v = problem.sample_source(0, n, seed=2, dtype=torch.float64).numpy()
        v = v + 0.1 * rng.standard_normal(v.shape)
    elif pair == "gaussian":
        ref = problem.sample_source(0, 65536, seed=3, dtype=torch.float64).numpy()
        v = rng.multivariate_normal(ref.mean(0), np.cov(ref.T), size=n)
    elif pair == "other":
        v = problem.sample_source(1, n, seed=2, dtype=torch.float64).numpy()
    else:
        raise SystemExit(f"unknown pair {pair!r}")
    return u, v


def one_iteration(n: int, backend: str, dtype: str, threads: int, extra: int) -> dict:
    """Time a transport problem stopped after 1 and after ``1 + extra`` iterations.

    The first figure is the whole cost of a transport term that stops after its first
    iteration (cost matrix, one iteration, the stopping check, the final plan), which is
    what the paper's settings do at n = 16384 for close distributions; the difference
    gives the cost of each further iteration.
    """
    from galprism.metrics.sinkhorn import sinkhorn_divergence_details

    torch.set_num_threads(threads)
    u, v = comparison_set("other", n)
    # Warm-up on a tiny problem so that import and first-call costs are not timed.
    for _ in range(3):
        sinkhorn_divergence_details(u[:256], v[:256], max_iter=2, backend=backend, dtype=dtype)
    from galprism.metrics.sinkhorn import _prepare, transport_cost  # same conversion as the metric

    pu = _prepare(u, "u", n, backend, dtype, None)
    pv = _prepare(v, "v", n, backend, dtype, None)
    t0, c0 = time.perf_counter(), time.process_time()
    transport_cost(pu, pv, max_iter=1, stop_thr=1e-30)
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    row = {
        "n": n,
        "backend": backend,
        "dtype": dtype,
        "threads": threads,
        "seconds_first_iteration_total": round(first, 3),
        "cpu_seconds_first_iteration_total": round(first_cpu, 3),
    }
    if extra > 0:
        t0, c0 = time.perf_counter(), time.process_time()
        transport_cost(pu, pv, max_iter=1 + extra, stop_thr=1e-30)
        row["seconds_per_further_iteration"] = round((time.perf_counter() - t0 - first) / extra, 3)
        row["cpu_seconds_per_further_iteration"] = round(
            (time.process_time() - c0 - first_cpu) / extra, 3
        )
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return row


def divergence(n: int, pair: str, backend: str, dtype: str, threads: int) -> dict:
    """Full paper-setting divergence between source 1 and the set ``pair``.

    ``backend == "emd"`` computes the exact-transport companion
    (:func:`galprism.metrics.wasserstein_divergence`) instead.
    """
    from galprism.metrics import wasserstein_divergence
    from galprism.metrics.sinkhorn import sinkhorn_divergence_details

    torch.set_num_threads(threads)
    u, v = comparison_set(pair, n)
    if backend == "emd":
        t0, c0 = time.perf_counter(), time.process_time()
        value = wasserstein_divergence(u, v, n_samples=n)
        return {
            "n": n,
            "pair": pair,
            "backend": "emd",
            "dtype": "float64",
            "threads": threads,
            "divergence": round(value, 5),
            "seconds": round(time.perf_counter() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    t0, c0 = time.perf_counter(), time.process_time()
    r = sinkhorn_divergence_details(u, v, n_samples=n, backend=backend, dtype=dtype)
    cpu = time.process_time() - c0
    return {
        "n": n,
        "pair": pair,
        "backend": backend,
        "dtype": dtype,
        "threads": threads,
        "divergence": round(r.divergence, 5),
        "ot_uv": round(r.ot_uv, 5),
        "ot_uu": round(r.ot_uu, 5),
        "ot_vv": round(r.ot_vv, 5),
        "iterations": list(r.iterations),
        "converged": list(r.converged),
        "seconds": round(time.perf_counter() - t0, 2),
        "cpu_seconds": round(cpu, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_child(args: list[str]) -> dict:
    """Run one configuration in a fresh interpreter and parse its JSON line."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True
    )
    if out.returncode != 0:
        return {
            "args": args,
            "error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed",
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["iteration", "divergence"], default="iteration")
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument(
        "--backends", nargs="+", default=["torch:float32", "torch:float64", "numpy:float64"]
    )
    parser.add_argument("--pairs", nargs="+", default=["same", "noisy", "gaussian", "other"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--extra-iterations",
        type=int,
        default=10,
        help="iteration mode: also time this many further iterations",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "iteration":
            n, backend, dtype, threads, extra = rest
            print(json.dumps(one_iteration(int(n), backend, dtype, int(threads), int(extra))))
        else:
            n, pair, backend, dtype, threads = rest
            print(json.dumps(divergence(int(n), pair, backend, dtype, int(threads))))
        return

    rows = []
    load_start = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    for n in args.n:
        for spec in args.backends:
            backend, dtype = spec.split(":")
            if args.mode == "iteration":
                row = run_child(
                    [
                        "iteration",
                        str(n),
                        backend,
                        dtype,
                        str(args.threads),
                        str(args.extra_iterations),
                    ]
                )
                rows.append(row)
                if not args.json:
                    print(row, flush=True)
            else:
                for pair in args.pairs:
                    row = run_child(["divergence", str(n), pair, backend, dtype, str(args.threads)])
                    rows.append(row)
                    if not args.json:
                        print(row, flush=True)
    result = {
        "benchmark": "sinkhorn",
        "mode": args.mode,
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_start,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

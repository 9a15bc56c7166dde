#!/usr/bin/env python
"""Throughput of ``galprism simulate``: cutouts per minute on one core.

Simulates ``--n`` cutouts (default 1,000, HSC-like, 48x48, galaxies view, train split)
into a temporary folder, writing FITS + HDF5 (or HDF5 only with ``--no-fits``), and
reports the rate. ``--json`` prints one JSON object on stdout.

Usage: ``python benchmarks/simulate_throughput.py [--n 1000] [--view galaxies] [--no-fits]
[--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--view", choices=["sky", "galaxies"], default="galaxies")
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--instrument", choices=["hsc", "hst"], default="hsc")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--no-fits", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from galprism.simulate import SimulationConfig, Simulator, simulate_batch

    config = SimulationConfig(
        view=args.view,
        split=args.split,
        n=args.n,
        size=args.size,
        instrument=args.instrument,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    sim = Simulator(config)
    prepare = time.perf_counter() - t0
    t1 = time.perf_counter()
    n_sources = [len(sim.plan(i)[2]) for i in range(min(args.n, 200))]
    plan_time = time.perf_counter() - t1
    with tempfile.TemporaryDirectory() as tmp:
        result = simulate_batch(config, tmp, write_fits=not args.no_fits, simulator=sim)
        size = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(tmp) for f in files
        )
    report = {
        "benchmark": "simulate_throughput",
        "n": result.n_written,
        "failed": len(result.failed),
        "instrument": args.instrument,
        "view": args.view,
        "size": sim.size,
        "write_fits": not args.no_fits,
        "write_hdf5": True,
        "prepare_seconds": round(prepare, 2),
        "seconds": round(result.seconds, 2),
        "cutouts_per_minute": round(60 * result.n_written / result.seconds, 1),
        "mean_galaxies_per_cutout": round(float(np.mean(n_sources)), 2),
        "planning_seconds_for_sample": round(plan_time, 3),
        "bytes_written": size,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>28}: {v}")
    return 0 if not result.failed else 1


if __name__ == "__main__":
    sys.exit(main())

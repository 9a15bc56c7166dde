"""Posterior quality of a kept EM run at chosen laps: how many laps a row really needs.

Reads the lap checkpoints of a contrastive run folder written by ``benchmarks/manifold.py
--run-dir`` and evaluates every source's prior as stored after each requested lap exactly
as ``manifold.py`` evaluates its final priors (posterior PSNR, W2 and curve distance on
each source's evaluation view; prior W2 and curve distance), without the paper-setting
Sinkhorn divergence, which takes minutes per call and needs n = 16,384 to compare with
the paper. The problem is rebuilt from the run's seed and ``--n-obs`` (``manifold.py``'s
budgets use 65,536). docs/em.md, "The cosine learning rate on the 2-source row".

Usage::

    OMP_NUM_THREADS=1 python benchmarks/manifold_laps.py RUN_DIR --laps 32 40 48 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from manifold import device_info, evaluate  # noqa: E402
from manifold_thickness import run_config, run_priors  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--laps", type=int, nargs="+", required=True)
    parser.add_argument(
        "--n-obs", type=int, default=65536, help="observations per view the run was made with"
    )
    parser.add_argument(
        "--eval-n", type=int, default=2048, help="posterior and prior samples per source"
    )
    parser.add_argument("--eval-steps", type=int, default=256)
    parser.add_argument("--eval-corrections", type=int, default=3)
    parser.add_argument(
        "--eval-sampler",
        default=None,
        help="evaluation sampler (default: the run's E-step sampler)",
    )
    parser.add_argument(
        "--eval-particles",
        type=int,
        default=None,
        help="particles of the smc sampler (default: the run's)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from paper.manifold import contrastive_problem

    from galprism.em import View
    from galprism.errors import ConfigError

    t0 = time.perf_counter()
    config = run_config(args.run_dir, args.laps)
    problem = contrastive_problem(len(config.sources), args.n_obs, seed=config.seed)
    if problem.source_names != list(config.sources):
        raise ConfigError(
            f"{args.run_dir}: run sources {config.sources} are not the contrastive problem's "
            f"{problem.source_names}"
        )
    names = problem.source_names
    views = [
        View.from_source_sum(v.name, names, v.y, v.noise_var, v.operator) for v in problem.views
    ]
    settings = {
        "eval_n": args.eval_n,
        "eval_steps": args.eval_steps,
        "eval_corrections": args.eval_corrections,
        "eval_sampler": args.eval_sampler,
        "eval_particles": args.eval_particles,
        "em": {"sampler": config.sampler.to_dict()},
    }
    rows = []
    for lap in args.laps:
        priors = run_priors(args.run_dir, lap, names)
        metrics = evaluate(problem, views, priors, settings, config.seed, sinkhorn=False)
        rows.append(
            {
                "lap": lap,
                "posterior": metrics["posterior"],
                "prior": metrics["prior"],
                "seconds": sum(metrics["seconds"].values()),
            }
        )
        if not args.json:
            print(
                json.dumps(
                    {
                        "lap": lap,
                        "psnr": {s: round(m["psnr"], 2) for s, m in metrics["posterior"].items()},
                    }
                ),
                file=sys.stderr,
                flush=True,
            )
    report = {
        "benchmark": "manifold_laps",
        "run_dir": str(args.run_dir),
        "settings": settings,
        "n_obs": args.n_obs,
        "laps": rows,
        "wall_seconds": time.perf_counter() - t0,
        "device": device_info("cpu"),
        "seed": config.seed,
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from galprism.errors import GalprismError

    try:
        sys.exit(main())
    except GalprismError as err:
        print(f"manifold_laps: {err}", file=sys.stderr)
        sys.exit(2)

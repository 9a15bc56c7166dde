"""How the crowded view's E-step weights a learned prior's stray mass, against exact Bayes.

A learned prior of the 2-source manifold problem (``manifold.py --sources 2 --run-dir``)
is a thin tube around source 2's curve plus a broad cloud of stray mass far from it
(docs/em.md, "The E-step's mode weights"). This script takes a kept run's priors (source
1 as frozen after its stage, source 2 after ``--lap``) and measures, on the crowded view,

* the share of source 2's *prior* samples farther than 0.3 and 1 from its curve (drawn
  with Heun 64, which agrees with PC 256 x 3 and PC 1,024 x 1 on these shares);
* the same share among the E-step's *posterior* samples for each ``--sampler``
  (``pc:STEPS:CORRECTIONS`` or ``smc:STEPS:PARTICLES``), with their PSNR per source;
* the share exact Bayes gives, from the same priors: ``M`` prior samples per source
  and, per observation, the posterior over all ``M^2`` pairs, weight
  ``N(y; A (x1 + x2), (sigma_n^2 + h^2) I)`` (a kernel of width ``h`` smooths the
  empirical priors; pairs within 4 kernel widths found with scipy's k-d tree).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/estep_modes.py RUN_DIR --lap 48 --sampler pc:256:3 smc:64:16 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from manifold import device_info  # noqa: E402
from manifold_thickness import run_config, run_priors  # noqa: E402


def shares(problem, x2: torch.Tensor) -> dict[str, float]:
    d, _ = problem.curves[1].distance(x2)
    return {
        "beyond_0.3": float((d > 0.3).mean()),
        "beyond_1": float((d > 1).mean()),
        "median": float(np.median(d)),
    }


def exact_shares(
    a: np.ndarray,
    y: np.ndarray,
    noise_var: float,
    x1: np.ndarray,
    x2: np.ndarray,
    far: dict[str, np.ndarray],
    h: float,
) -> dict[str, float]:
    """Exact-Bayes posterior share of each ``far`` class of x2 samples, averaged over observations."""
    from scipy.spatial import cKDTree

    s2 = noise_var + h * h
    out: dict[str, list[float]] = {k: [] for k in far}
    for i in range(y.shape[0]):
        t1 = cKDTree(x1 @ a[i].T)
        t2 = cKDTree(y[i] - x2 @ a[i].T)
        pairs = t2.sparse_distance_matrix(t1, 4 * np.sqrt(s2), output_type="coo_matrix")
        w = np.bincount(pairs.row, weights=np.exp(-0.5 * pairs.data**2 / s2), minlength=x2.shape[0])
        if w.sum() > 0:
            for k, m in far.items():
                out[k].append(float(w[m].sum() / w.sum()))
    return {k: float(np.mean(v)) for k, v in out.items()} | {
        "observations_used": len(out[next(iter(far))])
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--lap", type=int, required=True, help="source 2's prior after this lap")
    parser.add_argument(
        "--source1-lap",
        type=int,
        default=None,
        help="source 1's prior after this lap (default: the last lap of the run's first stage)",
    )
    parser.add_argument("--sampler", nargs="+", default=["pc:256:3", "smc:64:16"])
    parser.add_argument("-n", type=int, default=2048, help="E-step observations per sampler")
    parser.add_argument(
        "--prior-n", type=int, default=65536, help="prior samples per source for exact Bayes"
    )
    parser.add_argument(
        "--exact-n", type=int, default=100, help="observations of the exact-Bayes estimate"
    )
    parser.add_argument("--kernel", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from paper.manifold import contrastive_problem

    from galprism.diffusion import SamplerConfig
    from galprism.errors import ConfigError
    from galprism.metrics import mean_psnr
    from galprism.sampling import sample_posterior, sample_prior

    t_start = time.perf_counter()
    config = run_config(args.run_dir, [args.lap])
    if len(config.sources) != 2:
        raise ConfigError(
            f"{args.run_dir}: a 2-source run is needed, this one has {config.sources}"
        )
    lap1 = args.source1_lap
    if lap1 is None:
        g = (
            config.gaussian_laps
            if isinstance(config.gaussian_laps, int)
            else config.gaussian_laps[0]
        )
        d = (
            config.diffusion_laps
            if isinstance(config.diffusion_laps, int)
            else config.diffusion_laps[0]
        )
        lap1 = g + d
    run_config(args.run_dir, [lap1])
    problem = contrastive_problem(2, 65536, seed=config.seed)
    p1 = run_priors(args.run_dir, lap1, ["source1"])[0].eval().requires_grad_(False)
    p2 = run_priors(args.run_dir, args.lap, ["source2"])[0].eval().requires_grad_(False)
    view = problem.views[1]
    gen = torch.Generator().manual_seed(config.seed + 5)
    index = torch.randperm(view.n_obs, generator=gen)[: args.n]

    heun = SamplerConfig("heun", 64)
    x1 = sample_prior(
        [p1], args.prior_n, config=heun, generators=torch.Generator().manual_seed(11)
    )[:, 0]
    x2 = sample_prior(
        [p2], args.prior_n, config=heun, generators=torch.Generator().manual_seed(12)
    )[:, 0]
    prior = shares(problem, x2)

    samplers = []
    for spec in args.sampler:
        method, steps, k = spec.split(":")
        cfg = SamplerConfig(
            method,
            int(steps),
            corrections=int(k) if method == "pc" else 1,
            particles=int(k) if method == "smc" else 16,
            tau=0.1,
            n_samples=1,
            cg_iterations=config.sampler.cg_iterations,
            trust=config.sampler.trust,
        )
        t0 = time.perf_counter()
        x = sample_posterior(
            [p1, p2],
            view.operator.take(index),
            view.y[index],
            view.noise_var[index],
            cfg,
            generators=gen,
        )[:, 0]
        seconds = time.perf_counter() - t0
        truth = view.x[index]
        samplers.append(
            {
                "sampler": cfg.to_dict(),
                "share": shares(problem, x[:, 1]),
                "psnr": [mean_psnr(truth[:, b], x[:, b], 4.0) for b in range(2)],
                "seconds": seconds,
            }
        )

    d2, _ = problem.curves[1].distance(x2)
    far = {"beyond_0.3": d2 > 0.3, "beyond_1": d2 > 1}
    rng = np.random.default_rng(config.seed + 6)
    obs = rng.choice(view.n_obs, args.exact_n, replace=False)
    a = view.operator.ops[0].matrix[obs].double().numpy()
    y = view.y[obs].double().numpy()
    noise_var = float(view.noise_var[0, 0])
    exact = {
        str(h): exact_shares(a, y, noise_var, x1.double().numpy(), x2.double().numpy(), far, h)
        for h in args.kernel
    }

    report = {
        "benchmark": "estep_modes",
        "run_dir": str(args.run_dir),
        "lap": args.lap,
        "source1_lap": lap1,
        "n": args.n,
        "prior_n": args.prior_n,
        "exact_n": args.exact_n,
        "prior_share": prior,
        "samplers": samplers,
        "exact_share": exact,
        "wall_seconds": time.perf_counter() - t_start,
        "device": device_info("cpu"),
        "seed": config.seed,
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How far a learned manifold prior's samples lie off the true curve, lap by lap of an EM run.

Reads the lap checkpoints of a run folder written by ``benchmarks/manifold.py --run-dir``
(contrastive problem), draws samples of one source's prior at each requested lap (64 PC
steps, as ``--track``) and prints, per lap, the median, 90th percentile and RMS distance
to the source's true curve (:meth:`paper.manifold.ManifoldCurve.distance`) and
the Kolmogorov-Smirnov distance of the samples' nearest curve positions ``z`` from the
uniform distribution the truth has: the first three see a prior that scatters off the
curve (a "thick" prior), the last one a prior with the wrong mass along it. The truth's own
draws are listed first for scale. docs/em.md, "Thick priors".

Usage::

    OMP_NUM_THREADS=1 python benchmarks/manifold_thickness.py RUN_DIR --source source1 --laps 5 9 12 --json
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

from manifold import device_info, prior_samples  # noqa: E402


def describe(curve, x) -> dict[str, float]:
    """Distance-to-curve summary and KS distance of the nearest ``z`` from U(0, 1)."""
    dist, z = curve.distance(x)
    zs = np.sort(z)
    n = len(zs)
    ks = float(max(np.max(np.arange(1, n + 1) / n - zs), np.max(zs - np.arange(n) / n)))
    return {
        "distance_median": float(np.median(dist)),
        "distance_p90": float(np.quantile(dist, 0.9)),
        "distance_rms": float(np.sqrt(np.mean(dist**2))),
        "ks_z": ks,
    }


def run_config(run_dir: Path, laps: list[int] | tuple[int, ...] = ()):
    """The ``EMConfig`` of an EM run folder, after checking that every lap in ``laps`` has
    a checkpoint (before minutes of sampling, not after)."""
    from galprism.em import EMConfig
    from galprism.errors import ConfigError

    config = EMConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    missing = [lap for lap in laps if not (run_dir / "checkpoints" / f"lap-{lap:04d}.pt").is_file()]
    if missing:
        raise ConfigError(f"{run_dir}: no checkpoint for lap(s) {', '.join(map(str, missing))}")
    return config


def run_priors(run_dir: Path, lap: int, sources: list[str]) -> list[torch.nn.Module]:
    """The priors of ``sources`` stored in lap ``lap``'s checkpoint of an EM run folder
    (one load, with ``weights_only=True``)."""
    from galprism.em.state import EMState
    from galprism.errors import ConfigError

    config = run_config(run_dir, [lap])
    unknown = [s for s in sources if s not in config.sources]
    if unknown:
        raise ConfigError(
            f"{run_dir}: run has no source {unknown[0]!r} (sources: {config.sources})"
        )
    state = torch.load(
        run_dir / "checkpoints" / f"lap-{lap:04d}.pt", map_location="cpu", weights_only=True
    )
    em = EMState(config, torch.device("cpu"))
    em.load_state_dict({k: state[k] for k in ("gaussians", "trainers", "frozen", "rng")})
    return [em.final_prior(s) for s in sources]


def run_prior(run_dir: Path, lap: int, source: str) -> torch.nn.Module:
    """The prior of ``source`` stored in lap ``lap``'s checkpoint of an EM run folder."""
    return run_priors(run_dir, lap, [source])[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--source", default="source1")
    parser.add_argument("--laps", type=int, nargs="+", required=True)
    parser.add_argument("-n", type=int, default=4096, help="prior samples per lap")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from paper.manifold import contrastive_problem

    from galprism.errors import ConfigError

    t0 = time.perf_counter()
    config = run_config(args.run_dir, args.laps)
    if args.source not in config.sources:
        raise ConfigError(
            f"{args.run_dir}: run has no source {args.source!r} (sources: {config.sources})"
        )
    b = config.sources.index(args.source)
    # A source's curve does not depend on the number of sources (tests/test_manifold.py).
    problem = contrastive_problem(len(config.sources), 16, seed=config.seed)
    curve = problem.curves[b]
    rows = [{"lap": "truth", **describe(curve, problem.sample_source(b, args.n, seed=99))}]
    for lap in args.laps:
        rows.append(
            {
                "lap": lap,
                **describe(curve, prior_samples(run_prior(args.run_dir, lap, args.source), args.n)),
            }
        )
        if not args.json:
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {
        "benchmark": "manifold_thickness",
        "run_dir": str(args.run_dir),
        "source": args.source,
        "n": args.n,
        "laps": rows,
        "wall_seconds": time.perf_counter() - t0,
        "device": device_info("cpu"),
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from galprism.errors import GalprismError

    try:
        sys.exit(main())
    except GalprismError as err:
        print(f"manifold_thickness: {err}", file=sys.stderr)
        sys.exit(2)

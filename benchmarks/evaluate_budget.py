"""Time galprism's posterior sampling per test cutout, to budget ``galprism evaluate``.

Posterior sampling is the expensive part of an evaluation (docs/evaluation.md, "Speed").
This runs the galprism method on the first ``--cutouts`` cutouts of a test set for each
(samples, steps, sampler) setting and prints the seconds per cutout and the projected
time for ``--project`` cutouts::

    python benchmarks/evaluate_budget.py --prior default --test-dir sims/test \\
        --settings 8x16:ddim,8x32:ddim,8x16:pc --json

The machine's load matters: run it when nothing else is running if the numbers are
meant for the 30-minute budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="default", help="prior name or folder")
    ap.add_argument(
        "--test-dir", required=True, help="test set folder (galprism simulate --split test)"
    )
    ap.add_argument("--cutouts", type=int, default=8, help="cutouts timed per setting")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--settings",
        default="8x16:ddim,8x32:ddim,8x16:pc",
        help="comma list of SAMPLESxSTEPS:SAMPLER",
    )
    ap.add_argument(
        "--project", type=int, default=200, help="number of cutouts to project the time to"
    )
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--json", action="store_true", help="one JSON object per setting on stdout")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from galprism.evaluate.methods import GalprismMethod
    from galprism.evaluate.testset import load_testset
    from galprism.priorset import load_priorset

    prior = load_priorset(args.prior)
    cutouts = load_testset(args.test_dir, args.cutouts)
    for spec in args.settings.split(","):
        counts, sampler = spec.split(":")
        n_samples, steps = (int(v) for v in counts.split("x"))
        method = GalprismMethod(
            prior,
            "galprism",
            "galprism",
            n_samples=n_samples,
            steps=steps,
            sampler=sampler,
            batch_size=args.batch_size,
        )
        t0 = time.perf_counter()
        method.estimate(cutouts)
        per = (time.perf_counter() - t0) / len(cutouts)
        rec = {
            "prior": prior.name,
            "n_samples": n_samples,
            "steps": steps,
            "sampler": sampler,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "cutouts": len(cutouts),
            "seconds_per_cutout": round(per, 3),
            "projected_minutes": round(per * args.project / 60, 1),
            "project": args.project,
            "load_average": os.getloadavg()[0],
        }
        if args.json:
            print(json.dumps(rec), flush=True)
        else:
            print(
                f"{n_samples} samples x {steps} steps ({sampler}): {per:.2f} s/cutout -> "
                f"{rec['projected_minutes']} min for {args.project} (load "
                f"{rec['load_average']:.1f})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

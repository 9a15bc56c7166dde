"""Write a prior folder that takes each source from another prior folder.

    python scripts/compose_prior.py OUT --name NAME --source galaxy=PRIOR_A --source sky=PRIOR_B
        [--support galaxy=auto:20] [--overwrite]

PRIOR is a folder written by ``galprism fit`` or a built-in prior's name. The parts must
share method, shape, pixel scale, zero point, unit and flux scale (a fit file can pin
``flux_scale`` to make a new run share an old one's); the new ``prior.json`` records,
per source, the part's name, digest and training record (``training.composed_from``).
Used for the v17 experiment (priors/README.md, "v17 experiment"; not shipped): v14's galaxy
with a sky retrained on a sky view holding stars. This is :func:`galprism.priorset.compose_priorsets`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from galprism.priorset import compose_priorsets, load_priorset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--source", action="append", required=True, help="SOURCE=PRIOR, in order")
    ap.add_argument("--support", action="append", default=None, help="SOURCE=RADIUS|auto:RADIUS")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    parts = []
    for item in args.source:
        source, _, prior = item.partition("=")
        if not prior:
            ap.error(f"--source {item!r}: expected SOURCE=PRIOR")
        parts.append((source, load_priorset(prior)))
    support = None
    if args.support is not None:
        support = {}
        for item in args.support:
            source, _, value = item.partition("=")
            support[source] = value
    ps = compose_priorsets(args.name, parts, support)
    ps.save(args.out, overwrite=args.overwrite)
    print(f"{args.out}: {', '.join(f'{s} from {p.name}' for s, p in parts)}; sha256 {ps.sha256}")


if __name__ == "__main__":
    main()

"""Run a ``galprism`` command with the prototype sampler pieces swapped in.

``--fast-mmps`` replaces :class:`galprism.posterior.JointPosterior` in :mod:`galprism.sampling` by
:class:`galprism.fastmmps.CachedJointPosterior` (one VJP fewer per source and call, the
same samples to float round-off); ``--multistep ORDER[:SCHEDULE]`` replaces the DDIM
sampler by :func:`galprism.diffusion.multistep.sample_multistep` (deterministic runs
only). Everything after ``--`` is the ``galprism`` command line, e.g.::

    python benchmarks/eval_patched.py --fast-mmps -- evaluate --test-dir T --methods galprism ...
"""

from __future__ import annotations

import argparse
import functools
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fast-mmps", action="store_true")
    ap.add_argument("--multistep", default=None, help="ORDER[:SCHEDULE], e.g. 2:loglinear")
    args = ap.parse_args(argv[:split])

    import galprism.sampling as post

    if args.fast_mmps:
        from galprism.fastmmps import CachedJointPosterior

        post.JointPosterior = CachedJointPosterior
    if args.multistep:
        from galprism.diffusion.multistep import sample_multistep

        order, _, schedule = args.multistep.partition(":")
        post.sample = functools.partial(
            sample_multistep, order=int(order), schedule=schedule or "loglinear"
        )
    from galprism.cli.main import main as cli

    cli(argv[split + 1 :])  # exits with galprism's own status
    return 0


if __name__ == "__main__":
    sys.exit(main())

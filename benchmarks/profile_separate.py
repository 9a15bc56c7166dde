"""Where the time of ``galprism separate`` goes: a split by pipeline stage and network counts.

Runs :func:`galprism.separate.run_separate` on FITS cutouts (default: the shipped
``sample_fits/sim_hsc_galaxies_test_*.fits``) with wrappers that time, without changing
what is computed:

* ``read`` / ``write``: reading the inputs and writing the outputs (FITS I/O);
* ``freeform``: building the free-form components and drawing their pixels;
* ``pilot``: the adaptive support's pilot posterior run (all of it);
* ``main``: the posterior sampler of the main run (all of it);
* inside ``pilot`` and ``main``: the U-Net forwards (recorded for the VJP), the VJPs
  (MMPS covariance products, one per CG iteration), and the rest (operators,
  CG algebra, sampler bookkeeping, Python).

It also counts network evaluations: forward calls and the images they process (rows),
and VJP calls and their rows, per cutout. ``--cprofile FILE`` additionally writes a
cProfile dump of the whole run (``python -m pstats FILE``).

Usage::

    python benchmarks/profile_separate.py --threads 1 --json
    python benchmarks/profile_separate.py --steps 16 --support none --threads 1 --json
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import json
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


# CPU time of the process, not wall time: on a shared machine the wall clock counts the
# other jobs' share of the core too.
clock = time.process_time


class Meter:
    """CPU-time and count accumulators keyed by ``phase.item``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.phase = "other"

    @contextmanager
    def time(self, key: str):
        t0 = clock()
        try:
            yield
        finally:
            self.seconds[key] += clock() - t0

    def timed(self, key: str, fn, phase: str | None = None):
        def wrapper(*args, **kwargs):
            old = self.phase
            if phase is not None:
                self.phase = phase
            try:
                with self.time(key):
                    return fn(*args, **kwargs)
            finally:
                self.phase = old

        return wrapper


def instrument(prior, meter: Meter) -> None:
    """Wrap the pipeline's stages and the networks of ``prior`` with ``meter``'s timers."""
    import galprism.separate.inference as sep
    import galprism.separate.runner as runner

    sep.read_cutout = meter.timed("read", sep.read_cutout)
    runner.write_result = meter.timed("write", runner.write_result)
    sep.resolve_support_masks = meter.timed("pilot", sep.resolve_support_masks, phase="pilot")

    build = sep.build_freeform

    def build_freeform(*args, **kwargs):
        with meter.time("freeform"):
            model = build(*args, **kwargs)
        if model is not None:
            for name in ("sample", "whiten"):
                setattr(model, name, meter.timed("freeform", getattr(model, name)))
        return model

    sep.build_freeform = build_freeform
    separate = prior.separate

    def timed_separate(*args, **kwargs):
        phase = meter.phase if meter.phase == "pilot" else "main"
        old, meter.phase = meter.phase, phase
        try:
            with meter.time(f"{phase}.sampler"):
                return separate(*args, **kwargs)
        finally:
            meter.phase = old

    prior.separate = timed_separate

    starts: dict[int, float] = {}

    def pre(module, inputs):
        starts[id(module)] = clock()
        meter.counts[f"{meter.phase}.forward_calls"] += 1
        meter.counts[f"{meter.phase}.forward_rows"] += int(inputs[0].shape[0])

    def post(module, inputs, output):
        meter.seconds[f"{meter.phase}.forward"] += clock() - starts.pop(id(module))

    for p in prior.priors:
        net = getattr(p, "net", None)
        if net is not None:
            net.register_forward_pre_hook(pre)
            net.register_forward_hook(post)

    vjp = torch.func.vjp

    def counted_vjp(fn, *primals, **kwargs):
        out, closure = vjp(fn, *primals, **kwargs)
        rows = int(primals[0].shape[0])

        def timed_closure(*cotangents):
            meter.counts[f"{meter.phase}.vjp_calls"] += 1
            meter.counts[f"{meter.phase}.vjp_rows"] += rows
            with meter.time(f"{meter.phase}.vjp"):
                return closure(*cotangents)

        return out, timed_closure

    torch.func.vjp = counted_vjp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="*", help="FITS cutouts (default: sample_fits' test cutouts)")
    ap.add_argument("--prior", default="default")
    ap.add_argument("--n-samples", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--cg-iterations", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--support", action="append", default=None, help="as galprism separate's")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="process the inputs this many times")
    ap.add_argument("--cprofile", default=None, help="write a cProfile dump here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from galprism.cli.separate import parse_support
    from galprism.diffusion.samplers import SamplerConfig
    from galprism.priorset import load_priorset
    from galprism.separate import RunWarnings, SeparateConfig, run_separate

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = args.inputs or sorted(glob.glob(str(ROOT / "sample_fits/sim_hsc_galaxies_test_*.fits")))
    paths = paths * args.repeat
    base, batch = SamplerConfig(), SeparateConfig().batch_size
    settings = {
        "n_samples": args.n_samples or base.n_samples,
        "steps": args.steps or base.steps,
        "sampler": args.sampler or base.method,
        "cg_iterations": base.cg_iterations if args.cg_iterations is None else args.cg_iterations,
        "batch_size": args.batch_size or batch,
    }
    prior = load_priorset(args.prior)
    meter = Meter()
    instrument(prior, meter)
    profiler = cProfile.Profile() if args.cprofile else None
    with tempfile.TemporaryDirectory(prefix="galprism-profile-") as tmp:
        runs = []
        for i in range(args.repeat):
            # Repeated inputs go to their own folders: one run refuses duplicate outputs.
            chunk = paths[i * (len(paths) // args.repeat) : (i + 1) * (len(paths) // args.repeat)]
            config = SeparateConfig(
                sampler=SamplerConfig(
                    method=settings["sampler"],
                    steps=settings["steps"],
                    n_samples=settings["n_samples"],
                    cg_iterations=settings["cg_iterations"],
                ),
                batch_size=settings["batch_size"],
                output_dir=Path(tmp) / f"out{i}",
                support=parse_support(args.support) if args.support else None,
                command_line="benchmarks/profile_separate.py",
            )
            runs.append((chunk, config))
        t0, wall0 = clock(), time.perf_counter()
        ok = errors = 0
        for chunk, config in runs:
            if profiler:
                profiler.enable()
            summary = run_separate(chunk, prior, config, warnings=RunWarnings(lambda m: None))
            if profiler:
                profiler.disable()
            ok, errors = ok + summary.ok, errors + summary.errors
        total, wall = clock() - t0, time.perf_counter() - wall0
    if profiler:
        profiler.dump_stats(args.cprofile)
    s, c = meter.seconds, meter.counts
    n = max(ok, 1)
    split = {
        "read": s["read"],
        "write": s["write"],
        "freeform": s["freeform"],
    }
    for phase in ("pilot", "main"):
        split[f"{phase}.forward"] = s[f"{phase}.forward"]
        split[f"{phase}.vjp"] = s[f"{phase}.vjp"]
        split[f"{phase}.rest"] = s[f"{phase}.sampler"] - s[f"{phase}.forward"] - s[f"{phase}.vjp"]
    # The pilot's wrapper includes its sampler; what is left is its mask arithmetic.
    split["pilot.support_masks"] = s["pilot"] - s["pilot.sampler"]
    split["other"] = total - sum(split.values())
    report = {
        "benchmark": "profile_separate",
        "prior": prior.name,
        "inputs": len(paths),
        "ok": ok,
        "errors": errors,
        **settings,
        "support": args.support,
        "torch_threads": torch.get_num_threads(),
        "cpu_seconds": round(total, 3),
        "wall_seconds": round(wall, 3),
        "cpu_seconds_per_cutout": round(total / n, 3),
        "split_seconds": {k: round(v, 3) for k, v in split.items()},
        "split_share": {k: round(v / total, 4) for k, v in split.items()},
        "per_cutout": {
            k.replace("_rows", "_images"): round(v / n, 1) for k, v in c.items() if "rows" in k
        },
        "calls": dict(c),
    }
    per = report["per_cutout"]
    per["network_evaluations"] = round(sum(per.values()), 1)
    print(json.dumps(report, indent=None if args.json else 1))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

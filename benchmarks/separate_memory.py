"""Why the resident memory of a long ``galprism separate`` run grows: heap in use or held.

Runs :func:`galprism.separate.run_separate` over ``--n-cutouts`` synthetic cutouts (those
of ``separate_throughput.py``) and, after every ``--every`` outputs, records

* ``rss_mb`` / ``peak_rss_mb``: resident set size now and its peak so far;
* ``interval_peak_rss_mb``: the peak since the previous mark (Linux: the kernel's count
  is restarted at each mark through /proc/self/clear_refs);
* ``heap_mb``: bytes glibc's arenas obtained from the system (``mallinfo2().arena``);
* ``heap_in_use_mb`` / ``heap_free_mb`` / ``mmap_mb``: glibc's ``mallinfo2`` (bytes
  handed out, bytes freed but kept in the arenas, bytes in mmapped blocks);
* ``py_traced_mb``: Python's own allocations (``tracemalloc``, with ``--tracemalloc``),
  and the top growing allocation sites between the first and the last mark;
* ``gc_objects``: objects tracked by the garbage collector.

If ``heap_in_use_mb`` and ``py_traced_mb`` stay flat while ``rss_mb`` and ``heap_free_mb``
grow, the growth is freed memory glibc keeps (fragmentation), not a leak. The run itself
returns such memory after each written batch, and with ``--flat-memory`` keeps large
tensors out of the heap (:mod:`galprism._memory`).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/separate_memory.py --n-cutouts 300 --json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import tempfile
import tracemalloc
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from separate_throughput import rss_mb, write_cutouts  # noqa: E402


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _Mallinfo2


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak_rss() -> bool:
    """Restart the kernel's peak RSS count (Linux: ``5`` to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def heap() -> dict[str, float]:
    """glibc heap statistics in MiB."""
    m = _libc.mallinfo2()
    mb = 2.0**20
    return {
        "heap_mb": round(m.arena / mb, 2),
        "heap_in_use_mb": round(m.uordblks / mb, 2),
        "heap_free_mb": round(m.fordblks / mb, 2),
        "mmap_mb": round(m.hblkhd / mb, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-cutouts", type=int, default=300)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--n-samples", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--support", default=None, help="as galprism separate's (default: prior's)")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument(
        "--flat-memory", action="store_true", help="as galprism separate's (fixed mmap threshold)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from galprism.cli.separate import parse_support
    from galprism.diffusion.samplers import SamplerConfig
    from galprism.priorset import load_priorset
    from galprism.separate import RunWarnings, SeparateConfig, run_separate

    torch.set_num_threads(1)
    prior = load_priorset("default")
    marks: list[dict] = []
    snaps = []
    with tempfile.TemporaryDirectory(prefix="galprism-mem-") as tmp:
        (Path(tmp) / "in").mkdir()
        paths = write_cutouts(
            Path(tmp) / "in",
            args.n_cutouts,
            tuple(prior.frame.shape),
            prior.frame.pixel_scale,
            prior.frame.zeropoint,
        )
        config = SeparateConfig(
            sampler=SamplerConfig(steps=args.steps, n_samples=args.n_samples),
            output_dir=Path(tmp) / "out",
            support=parse_support([args.support]) if args.support else None,
            command_line="benchmarks/separate_memory.py",
            flat_memory=args.flat_memory,
        )
        if args.tracemalloc:
            tracemalloc.start(10)
        done = [0]
        # The kernel's peak is reset at every mark to see in which interval it was reached;
        # peak_rss_mb is the running maximum of those, i.e. the process's peak so far.
        peak = [peak_rss_mb()]
        can_reset = reset_peak_rss()

        def on_record(rec) -> None:
            done[0] += 1
            if done[0] % args.every:
                return
            interval_peak = peak_rss_mb()
            peak[0] = max(peak[0], interval_peak)
            row = {
                "done": done[0],
                "rss_mb": round(rss_mb(), 1),
                "peak_rss_mb": round(peak[0], 1),
                "interval_peak_rss_mb": round(interval_peak, 1),
                **heap(),
            }
            if can_reset:
                reset_peak_rss()
            row["gc_objects"] = len(gc.get_objects())
            if args.tracemalloc:
                row["py_traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
                if done[0] == args.every or done[0] == args.n_cutouts:
                    snaps.append(tracemalloc.take_snapshot())
            marks.append(row)

        summary = run_separate(
            paths, prior, config, on_record=on_record, warnings=RunWarnings(lambda m: None)
        )
    out = {
        "benchmark": "separate_memory",
        "n_cutouts": args.n_cutouts,
        "flat_memory": args.flat_memory,
        "ok": summary.ok,
        "marks": marks,
    }
    first, last = marks[1] if len(marks) > 1 else marks[0], marks[-1]
    span = last["done"] - first["done"]
    if span:
        out["growth_kb_per_cutout"] = {
            k: round((last[k] - first[k]) * 1024 / span, 2) for k in last if k.endswith("_mb")
        }
    if args.tracemalloc and len(snaps) == 2:
        stats = snaps[1].compare_to(snaps[0], "lineno")
        out["top_python_growth"] = [
            {
                "where": str(s.traceback[0]),
                "kb": round(s.size_diff / 1024, 1),
                "count": s.count_diff,
            }
            for s in stats[:8]
        ]
    print(json.dumps(out, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of ``galprism separate``: cutouts per minute, and memory over a batch.

Writes ``--n-cutouts`` synthetic cutouts (a noisy exponential disc convolved with a
Gaussian PSF, with SCI/PSF/VARIANCE HDUs, a TAN WCS at the prior's pixel scale and the
prior's zero point) into a temporary folder, then runs the full pipeline
(:func:`galprism.separate.run_separate`: read, crop, batch, sample, write) with
``--n-samples`` posterior samples each, on the CPU and, when available, on a GPU.

Reports cutouts per minute (pipeline wall time, prior loading excluded) and the resident
memory after 10 %, 50 % and 100 % of the inputs: flat numbers mean the pipeline streams.

With ``--command LABEL=EXECUTABLE`` (repeatable) it instead times whole ``galprism
separate`` commands of several installations (e.g. the current one and v0.1.0 in its own
virtual environment) on the same inputs (``--inputs DIR``: real cutouts, e.g. a
``galprism simulate`` test set), alternating between them ``--repeat`` times, each child on
one thread; it reports each one's CPU seconds per cutout (the child's user + system time,
the run with one input subtracted so that start-up and prior loading are left out),
cutouts per CPU-core-minute, and every command's ratio to the first, all as medians.

Usage::

    python benchmarks/separate_throughput.py --json
    python benchmarks/separate_throughput.py --inputs TESTSET --n-cutouts 16 --repeat 3 \
        --command v0.1.0=../v010/.venv/bin/galprism --command main=galprism --json
    python benchmarks/separate_throughput.py --n-cutouts 1000 --n-samples 1 --steps 4 --json  #
    memory check
    python benchmarks/separate_throughput.py --n-cutouts 1000 --n-samples 1 --steps 4 --trim --json
     # leak or heap?
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits
from astropy.wcs import WCS


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def write_cutouts(
    folder: Path,
    n: int,
    shape: tuple[int, int, int],
    pixel_scale: float | None,
    zeropoint: float | None,
    seed: int = 0,
) -> list[str]:
    """Synthetic cutouts the size of the prior grid; returns their paths."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    r = np.arange(11) - 5
    psf = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    psf /= psf.sum()
    paths = []
    for i in range(n):
        cx, cy = w / 2 + rng.normal(0, 1), h / 2 + rng.normal(0, 1)
        disc = np.exp(-np.hypot(x - cx, y - cy) / rng.uniform(1.5, 4))
        flux = 10 ** rng.uniform(1, 2.5)
        img = np.stack([disc / disc.sum() * flux] * c)
        sigma = 0.05 * img.max()
        img = img + rng.normal(0, sigma, img.shape)
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [150.0 + i * 1e-3, 2.2]
        wcs.wcs.crpix = [w / 2, h / 2]
        s = (pixel_scale or 0.2) / 3600
        wcs.wcs.cd = [[-s, 0], [0, s]]
        hdr = wcs.to_header()
        if zeropoint is not None:
            hdr["MAGZERO"] = zeropoint
        hdus = fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.ImageHDU(
                    img.astype(np.float32) if c > 1 else img[0].astype(np.float32),
                    header=hdr,
                    name="SCI",
                ),
                fits.ImageHDU(psf.astype(np.float32), name="PSF"),
                fits.ImageHDU(
                    np.full(img.shape if c > 1 else img.shape[1:], sigma**2, np.float32),
                    name="VARIANCE",
                ),
            ]
        )
        p = folder / f"cut{i:05d}.fits"
        hdus.writeto(p)
        paths.append(str(p))
    return paths


def run_once(prior, paths: list[str], out: Path, device: str, args: argparse.Namespace) -> dict:
    from galprism.diffusion import SamplerConfig
    from galprism.separate import RunWarnings, SeparateConfig, run_separate

    config = SeparateConfig(
        sampler=SamplerConfig(
            n_samples=args.n_samples, steps=args.steps, cg_iterations=args.cg_iterations
        ),
        batch_size=args.batch_size,
        device=device,
        precision=args.precision,
        output_dir=out,
        command_line="benchmarks/separate_throughput.py",
    )
    marks = {
        max(1, len(paths) // 10): "rss_mb_10pct",
        max(1, len(paths) // 2): "rss_mb_50pct",
        len(paths): "rss_mb_100pct",
    }
    memory: dict[str, float] = {}
    done = [0]
    errors: list[str] = []

    def on_record(rec) -> None:
        done[0] += 1
        if rec.status == "error":
            errors.append(rec.error)
        if done[0] in marks:
            memory[marks[done[0]]] = round(rss_mb(), 1)
            if args.trim:
                # glibc keeps freed heap pages mapped; after malloc_trim the RSS is what
                # the process still holds, which separates a leak from heap retention.
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                memory[marks[done[0]] + "_after_trim"] = round(rss_mb(), 1)

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    summary = run_separate(
        paths, prior, config, on_record=on_record, warnings=RunWarnings(lambda m: None)
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    from galprism.separate import resolve_precision

    result = {
        "device": device,
        "precision": resolve_precision(args.precision, device, config.sampler.jacobian),
        "seconds": round(seconds, 2),
        "cutouts_per_minute": round(summary.ok / seconds * 60, 2) if summary.ok else 0.0,
        "ok": summary.ok,
        "errors": summary.errors,
        **memory,
    }
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)
        result["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if errors:
        result["first_error"] = errors[0]
    return result


def child_cpu_seconds(argv: list[str]) -> tuple[float, float]:
    """CPU (user + system) and wall seconds of one child process; raises if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({proc.returncode}): {err[-500:]}")
    return usage.ru_utime + usage.ru_stime, wall


def compare_commands(args: argparse.Namespace) -> dict:
    """Alternate whole ``galprism separate`` runs of several installations on ``--inputs``."""
    paths = sorted(str(p) for p in Path(args.inputs).glob("*.fits"))[: args.n_cutouts]
    if len(paths) < 2:
        raise SystemExit(f"{args.inputs}: needs at least 2 FITS cutouts")
    commands = []
    for spec in args.command:
        label, _, exe = spec.partition("=")
        if not exe:
            raise SystemExit(f"--command {spec!r}: expected LABEL=EXECUTABLE [FLAGS]")
        commands.append((label, shlex.split(exe)))
    per: dict[str, dict[str, list[float]]] = {
        label: {"cpu_n": [], "cpu_1": [], "wall_n": []} for label, _ in commands
    }
    with tempfile.TemporaryDirectory(prefix="galprism-bench-") as tmp:
        for rep in range(args.repeat):
            for label, exe in commands:
                for key, inputs in (("cpu_1", paths[:1]), ("cpu_n", paths)):
                    out = Path(tmp) / f"{label}-{rep}-{key}"
                    argv = [*exe[:1], "separate", *inputs, "--output-dir", str(out)]
                    argv += ["--threads", "1", "--quiet", *exe[1:]]
                    cpu, wall = child_cpu_seconds(argv)
                    per[label][key].append(cpu)
                    if key == "cpu_n":
                        per[label]["wall_n"].append(wall)
    n = len(paths)
    runs = []
    for label, exe in commands:
        marginal = [
            (a - b) / (n - 1) for a, b in zip(per[label]["cpu_n"], per[label]["cpu_1"], strict=True)
        ]
        runs.append(
            {
                "label": label,
                "command": " ".join(exe),
                "cpu_seconds_per_cutout": round(statistics.median(marginal), 3),
                "cpu_seconds_per_cutout_runs": [round(v, 3) for v in marginal],
                "cutouts_per_cpu_minute": round(60 / statistics.median(marginal), 2),
                "startup_cpu_seconds": round(
                    statistics.median(
                        [b - m for b, m in zip(per[label]["cpu_1"], marginal, strict=True)]
                    ),
                    2,
                ),
            }
        )
    first = runs[0]["cpu_seconds_per_cutout_runs"]
    for r in runs:
        # Ratios within each repetition (runs of one repetition share the machine's state).
        ratios = [a / b for a, b in zip(first, r["cpu_seconds_per_cutout_runs"], strict=True)]
        r[f"speedup_vs_{runs[0]['label']}"] = round(statistics.median(ratios), 2)
    return {
        "benchmark": "separate_throughput",
        "mode": "commands",
        "inputs": str(args.inputs),
        "n_cutouts": n,
        "repeat": args.repeat,
        "cpu": platform.processor() or platform.machine(),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", default="default", help="built-in prior name or prior folder")
    ap.add_argument("--n-cutouts", type=int, default=100)
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument(
        "--steps", type=int, default=None, help="sampler steps (default: galprism's default)"
    )
    ap.add_argument("--cg-iterations", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument(
        "--devices", default="auto", help="comma list, or 'auto' = cpu plus cuda when available"
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    ap.add_argument(
        "--precision",
        choices=["float32", "bf16", "tf32"],
        default=None,
        help="prior networks' precision (default: galprism's, bf16 on CUDA, else float32)",
    )
    ap.add_argument(
        "--trim",
        action="store_true",
        help="also report the RSS after glibc's malloc_trim at each mark (Linux)",
    )
    ap.add_argument(
        "--command",
        action="append",
        default=[],
        help="LABEL=EXECUTABLE [FLAGS]: time this galprism's separate (repeatable)",
    )
    ap.add_argument("--inputs", type=Path, default=None, help="folder of cutouts (--command)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (--command)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.command:
        if args.inputs is None:
            raise SystemExit("--command needs --inputs DIR")
        report = compare_commands(args)
        if args.json:
            print(json.dumps(report))
        else:
            for r in report["runs"]:
                print(
                    f"{r['label']}: {r['cpu_seconds_per_cutout']} CPU s per cutout, "
                    f"{r['cutouts_per_cpu_minute']} cutouts per CPU-core-minute",
                    file=sys.stderr,
                )
        return 0

    from galprism.diffusion import SamplerConfig
    from galprism.priorset import load_priorset
    from galprism.separate import SeparateConfig

    defaults = {**SamplerConfig().to_dict(), "batch_size": SeparateConfig().batch_size}
    for key in ("steps", "cg_iterations", "batch_size"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = (
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        if args.devices == "auto"
        else args.devices.split(",")
    )
    t0 = time.perf_counter()
    prior = load_priorset(args.prior)
    load_seconds = time.perf_counter() - t0
    report = {
        "benchmark": "separate_throughput",
        "prior": prior.name,
        "prior_sha256": prior.sha256,
        "method": prior.method,
        "prior_shape": list(prior.frame.shape),
        "n_cutouts": args.n_cutouts,
        "n_samples": args.n_samples,
        "steps": args.steps,
        "cg_iterations": args.cg_iterations,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "prior_load_seconds": round(load_seconds, 2),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="galprism-bench-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "in").mkdir()
        paths = write_cutouts(
            tmp_path / "in",
            args.n_cutouts,
            tuple(prior.frame.shape),
            prior.frame.pixel_scale,
            prior.frame.zeropoint,
        )
        for device in devices:
            out = tmp_path / f"out-{device.replace(':', '')}"
            report["runs"].append(run_once(prior, paths, out, device, args))
    if args.json:
        print(json.dumps(report))
    else:
        for r in report["runs"]:
            print(
                f"{r['device']}: {r['cutouts_per_minute']} cutouts/min ({args.n_samples} samples, "
                f"{args.steps} steps), "
                f"{r['seconds']} s for {args.n_cutouts}",
                file=sys.stderr,
            )
    return 0 if all(r["errors"] == 0 for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Scene mode on a large field: CPU seconds per source and resident memory blend by blend.

Simulates ``--tiles`` x ``--tiles`` scenes of ``--tile-size`` pixels (``galprism simulate
--view scenes``, test-split galaxies, ``--galaxies`` per scene, half with a star), lays them
side by side into one image (SCI, VARIANCE, MASK; the first scene's PSF and WCS), and runs
``galprism separate FIELD --scene`` on it in a child process. While it runs, the child's
resident set size is read from ``/proc`` every ``--poll`` seconds together with how many
blends it has logged, so that the memory after the 10th, 100th, ... blend shows whether it
stays flat as the field is processed.

Prints one JSON object with ``--json``: the field's size, sources and blends, wall and CPU
seconds, CPU seconds per source, peak RSS and the RSS after given numbers of blends.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/scene_field.py --tiles 4 --tile-size 512 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table


def simulate_tiles(out: Path, tiles: int, size: int, galaxies: int, seed: int) -> list[Path]:
    """The ``tiles**2`` simulated scenes, by the ``galprism simulate`` command."""
    cmd = [
        "galprism",
        "simulate",
        "--view",
        "scenes",
        "--split",
        "test",
        "--size",
        str(size),
        "--galaxies",
        str(galaxies),
        str(galaxies),
        "--inner-fraction",
        "0.9",
        "-n",
        str(tiles * tiles),
        "-o",
        str(out),
        "--seed",
        str(seed),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    files = sorted(out.glob("*.fits"))
    if len(files) != tiles * tiles:
        raise RuntimeError(f"simulate wrote {len(files)} scenes, expected {tiles * tiles}")
    return files


def mosaic(files: list[Path], tiles: int, path: Path) -> int:
    """Lay the scenes out on a ``tiles`` x ``tiles`` grid in one FITS file.

    Returns the number of true sources in the field.
    """
    first = fits.open(files[0])
    size = first["SCI"].data.shape[0]
    planes = {
        name: np.zeros((tiles * size,) * 2, first[name].data.dtype)
        for name in ("SCI", "VARIANCE", "MASK")
    }
    n_true = 0
    for k, f in enumerate(files):
        j, i = divmod(k, tiles)
        with fits.open(f) as hdul:
            for name, plane in planes.items():
                plane[j * size : (j + 1) * size, i * size : (i + 1) * size] = hdul[name].data
        truth = f.parent / "truth" / f.name.replace(".fits", ".truth.ecsv")
        n_true += len(Table.read(truth))
    hdus = [fits.PrimaryHDU(header=first[0].header)]
    for name, plane in planes.items():
        hdus.append(fits.ImageHDU(plane, header=first[name].header, name=name))
    hdus.append(first["PSF"].copy())
    fits.HDUList(hdus).writeto(path)
    first.close()
    return n_true


def rss_mb(pid: int) -> float | None:
    """Resident set size of process ``pid`` now (Linux), or None once it has ended."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_scene(field: Path, out: Path, extra: list[str], poll: float) -> dict:
    """Run ``galprism separate FIELD --scene`` and follow its memory blend by blend."""
    cmd = ["galprism", "separate", str(field), "--scene", "--output-dir", str(out)]
    cmd += ["--threads", "1", "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    blends = [0]
    trace: list[tuple[int, float]] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            if ": blend " in line and "chi2" in line:
                blends[0] += 1

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    while True:
        # wait4 reaps the child and gives its own rusage (CPU time, not the simulation's).
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        r = rss_mb(proc.pid)
        if r is not None:
            trace.append((blends[0], r))
        time.sleep(poll)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    wall = time.perf_counter() - t0
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"galprism separate --scene failed ({proc.returncode}): {stdout}")
    return {"wall_s": wall, "trace": trace, "blends": blends[0], "stdout": stdout, "usage": usage}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=4, help="scenes per side of the field")
    ap.add_argument("--tile-size", type=int, default=512, help="pixels per side of one scene")
    ap.add_argument("--galaxies", type=int, default=20, help="galaxies per scene")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between RSS readings")
    ap.add_argument("--workdir", default=None, help="keep the field and outputs here")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("separate_args", nargs="*", help="more galprism separate flags (after --)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        files = simulate_tiles(work / "tiles", args.tiles, args.tile_size, args.galaxies, args.seed)
        field = work / "field.fits"
        field.unlink(missing_ok=True)
        n_true = mosaic(files, args.tiles, field)
        out = work / "out"
        res = run_scene(field, out, args.separate_args, args.poll)
        cpu = res["usage"]
        catalog = Table.read(out / "field.galprism.catalog.ecsv")
        trace = res["trace"]
        peak = max(r for _, r in trace) if trace else float("nan")
        marks = {}
        for mark in (1, 10, 30, 100, 300, 1000):
            after = [r for b, r in trace if b >= mark]
            if after:
                marks[str(mark)] = round(after[0], 1)
        marks["last"] = round(trace[-1][1], 1) if trace else None
    n = len(catalog)
    cpu_s = cpu.ru_utime + cpu.ru_stime
    report = {
        "benchmark": "scene_field",
        "field_px": args.tiles * args.tile_size,
        "true_sources": n_true,
        "sources": n,
        "blends": int(len(set(np.asarray(catalog["blend"]).tolist()))),
        "wall_s": round(res["wall_s"], 1),
        "cpu_s": round(cpu_s, 1),
        "cpu_s_per_source": round(cpu_s / max(n, 1), 2),
        "peak_rss_mb": round(peak, 1),
        "rss_mb_after_blends": marks,
        "separate_args": args.separate_args,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

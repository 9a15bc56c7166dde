#!/usr/bin/env python
"""Regenerate ``sample_fits/`` reproducibly.

Writes, into ``sample_fits/`` (or ``--output-dir``):

* ``hsc_cosmos35_i.fits``: the real HSC blend of ``hsc/hsc_cosmos_35.npz``, i band;
* ``hsc_cosmos35_grizy.fits``: the same blend in its five bands (a cube, bands first);
* ``multiview_hsc_i.fits``: the real HSC i band of ``multiview/Cut_HSC.fits``;
* ``sim_hsc_galaxies_test_00000{0..3}.fits`` + ``truth/*.truth.fits``: simulated
  galaxies-view cutouts of TEST-set COSMOS galaxies (seed 2025, cutouts 0-3, no
  selection), as ``galprism simulate --view galaxies --split test -n 4 --seed 2025
  --prefix sim_hsc_galaxies_test --no-hdf5`` would write them.

Usage: ``python scripts/make_sample_fits.py [--output-dir DIR] [--data-dir DIR] [--overwrite]``.
The files are byte-for-byte reproducible with the same library versions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from galprism.errors import GalprismError
from galprism.simulate import SimulationConfig, simulate_batch
from galprism.simulate.realdata import hsc_npz_hdul, multiview_hsc_hdul
from galprism.simulate.write import write_atomic

SEED = 2025
N_SIM = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).resolve().parents[1] / "sample_fits"
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    try:
        return _write(args)
    except GalprismError as exc:
        print(f"make_sample_fits: error: {exc}", file=sys.stderr)
        return 1


def _write(args: argparse.Namespace) -> int:
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(hsc_npz_hdul(args.data_dir), out / "hsc_cosmos35_i.fits", overwrite=args.overwrite)
    write_atomic(
        hsc_npz_hdul(args.data_dir, bands=("g", "r", "i", "z", "y")),
        out / "hsc_cosmos35_grizy.fits",
        overwrite=args.overwrite,
    )
    write_atomic(
        multiview_hsc_hdul(args.data_dir), out / "multiview_hsc_i.fits", overwrite=args.overwrite
    )
    config = SimulationConfig(
        view="galaxies", split="test", n=N_SIM, seed=SEED, data_dir=args.data_dir
    )
    result = simulate_batch(
        config, out, prefix="sim_hsc_galaxies_test", hdf5=None, overwrite=args.overwrite
    )
    if result.failed:
        print(f"failed: {result.failed}", file=sys.stderr)
        return 1
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1024:.0f} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

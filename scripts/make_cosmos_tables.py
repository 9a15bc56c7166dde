#!/usr/bin/env python
"""Regenerate the COSMOS table shipped inside ``galprism.simulate``.

``hst_noise.json``: each galaxy's HST stamp noise after rendering, for the default
HSC-like setups (both real HSC i-band PSFs, default truth kernel) and the catalogue
given, so that a batch does not spend ~20 s measuring it (:mod:`galprism.simulate.hstnoise`).

Usage: ``python scripts/make_cosmos_tables.py [--catalog FILE] [--data-dir DIR] [--check |
--report]`` (the data folder defaults to ``$GALPRISM_DATA_DIR``);
with ``--check`` nothing is written and the exit status says whether the shipped files
are current (about a minute on one core); ``--report`` prints, from the shipped files,
the per-galaxy stamp-noise table of ``docs/simulate.md`` for the default HSC setup.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import galprism.simulate as sim
from galprism.simulate.cosmos import CosmosCatalog
from galprism.simulate.hstnoise import NOISE_FILE, hst_noise, hst_noise_table, psf_key
from galprism.simulate.instrument import HSC_PSFS, make_instrument

PACKAGE = Path(sim.__file__).parent


def noise_document(catalog: CosmosCatalog, data_dir: str | None) -> dict:
    setups = {}
    for psf in HSC_PSFS:
        inst = make_instrument("hsc", catalog, psf=psf, data_dir=data_dir)
        key = psf_key(inst.psfs[0], inst.pixel_scale, inst.truth_fwhm)
        galaxies = {}
        for rec in catalog.records:
            m = hst_noise(
                catalog, rec, inst.psfs[0], inst.pixel_scale, inst.truth_fwhm, inst.zeropoint
            )
            galaxies[str(rec.ident)] = [round(m.obs_std, 9), round(m.truth_std, 9)]
            print(
                f"{psf} IDENT {rec.ident}: obs {m.obs_std:.5f} truth {m.truth_std:.5f} counts",
                file=sys.stderr,
            )
        setups[key] = {
            "origin": inst.psf_origin,
            "pixel_scale": inst.pixel_scale,
            "truth_fwhm": inst.truth_fwhm,
            "zeropoint": inst.zeropoint,
            "galaxies": galaxies,
        }
    return {
        "description": (
            "Std per output pixel (counts at ZP 27, catalogue flux) of each COSMOS stamp's own "
            "HST noise after rendering: [in the observation, in the PSF-free truth]. "
            "Keyed by galprism.simulate.hstnoise.psf_key."
        ),
        "catalog_fingerprint": catalog.fingerprint,
        "setups": setups,
    }


def report(catalog: CosmosCatalog, data_dir: str | None) -> str:
    """Markdown table of each galaxy's stamp noise and brightness cap (default HSC setup)."""
    from galprism.simulate import SimulationConfig, Simulator

    lines = [
        "| IDENT | split | MAG | ratio in obs at MAG | ratio in truth at MAG | brightest mag "
        "allowed | central |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    rows = []
    for split in ("train", "test"):
        sim = Simulator(
            SimulationConfig(view="galaxies", split=split, n=1, data_dir=data_dir), catalog
        )
        truth = {
            k: v.truth_std
            for k, v in hst_noise_table(
                catalog, catalog.members(split), sim.instrument.psfs[0], 0.168, sim.truth_fwhm, 27.0
            ).items()
        }
        sigma = sim.instrument.noise_sigma
        for g in sim.hst_noise_summary()["galaxies"]:
            rows.append(
                (
                    g["catalog_mag"],
                    f"| {g['ident']} | {split} | {g['catalog_mag']:.2f} | "
                    f"{g['ratio_at_catalog_mag']:.2f} | {truth[g['ident']] / sigma:.2f} | "
                    f"{g['brightest_mag']:.2f} | {'yes' if g['central'] else 'no'} |",
                )
            )
    lines += [r for _, r in sorted(rows)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=None, help="RealGalaxyCatalog FITS file")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--check", action="store_true", help="only compare with the shipped files")
    parser.add_argument(
        "--report", action="store_true", help="print the stamp-noise table (markdown) and exit"
    )
    args = parser.parse_args()
    catalog = CosmosCatalog(args.catalog, data_dir=args.data_dir)
    if args.report:
        print(report(catalog, args.data_dir))
        return 0
    docs = {NOISE_FILE: noise_document(catalog, args.data_dir)}
    stale = []
    for name, doc in docs.items():
        text = json.dumps(doc, indent=1) + "\n"
        path = PACKAGE / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}", file=sys.stderr)
    if stale:
        print(f"stale: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

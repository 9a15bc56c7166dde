"""Accuracy and flux calibration of one method across several evaluation report folders.

    python scripts/calibration_table.py REPORT_DIR [REPORT_DIR ...] [--limit 100] [--method
    galprism] [--json]

Reads ``results.jsonl`` of each ``galprism evaluate`` report folder (or a folder holding
only that method's rows) and prints, per folder, the medians of RMSE and absolute flux
error (all cutouts and the most blended third of the folder's own cutouts; medians and
thirds as the report computes them), the median
flux error, the 68% / 95% flux interval coverage, the median and robust spread
(1.4826 x MAD) of the flux z-scores and the SBC rank histogram. ``--limit N`` keeps the
first N cutouts in file order, so runs made with ``galprism evaluate --limit N`` can be
compared with the same cutouts of a full run.

``--by-galaxy`` pools the folders' rows and prints one line per test galaxy (the test
sets draw many scenes of few galaxies, ``central_ident``), with the pooled coverage and
its standard error clustered by galaxy: cutouts of one galaxy share its errors, so the
binomial error over cutouts understates the uncertainty.

Why the z-score spread: for a calibrated Gaussian posterior measured with 8 samples the
z-score ``(truth - mean) / std`` has a robust spread of about 1.1 (Student, 7 degrees of
freedom, times ``sqrt(1 + 1/8)``); a spread well below that means posteriors wider than
the errors they should describe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from galprism.evaluate.report import blendedness_edges, stat, third_of


def summarise(folder: Path, method: str, limit: int | None, n_samples: int = 8) -> dict:
    """Summary of ``method``'s rows in ``folder/results.jsonl`` (first ``limit`` cutouts)."""
    rows = [
        json.loads(line)
        for line in (folder / "results.jsonl").read_text().splitlines()
        if line.strip()
    ]
    rows = [r for r in rows if r["method"] == method]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise SystemExit(f"{folder}: no rows of method {method!r} in results.jsonl")
    # the report's own medians and blendedness thirds, so a full run's figures match its summary.md
    edges = blendedness_edges([r["blendedness"] for r in rows])
    most = [r for r in rows if third_of(r["blendedness"], edges) == 2]

    def median(subset: list[dict], key: str) -> float:
        return stat([r[key] for r in subset])[0]

    out = {
        "folder": str(folder),
        "n": len(rows),
        "rmse": median(rows, "rmse"),
        "rmse_most_blended": median(most, "rmse"),
        "abs_flux_err": median(rows, "abs_flux_err"),
        "abs_flux_err_most_blended": median(most, "abs_flux_err"),
        "flux_err": median(rows, "flux_err"),
    }
    if "flux_z" not in rows[0]:  # a point estimate (photutils, ASVD): no posterior to calibrate
        return out
    z = np.array([r["flux_z"] for r in rows])
    ranks = np.bincount([r["flux_rank"] for r in rows], minlength=n_samples + 1)
    if len(ranks) > n_samples + 1:
        raise SystemExit(f"{folder}: flux ranks above {n_samples}; pass --n-samples")
    out.update(
        coverage68=float(np.mean([r["flux_in68"] for r in rows])),
        coverage95=float(np.mean([r["flux_in95"] for r in rows])),
        z_median=float(np.median(z)),
        z_robust_std=float(1.4826 * np.median(np.abs(z - np.median(z)))),
        sbc_ranks=ranks.tolist(),
    )
    return out


def by_galaxy(folders: list[Path], method: str, limit: int | None) -> dict:
    """Flux error and coverage per test galaxy over the pooled rows of ``folders``."""
    rows = []
    for folder in folders:
        mine = [
            json.loads(line)
            for line in (folder / "results.jsonl").read_text().splitlines()
            if line.strip()
        ]
        mine = [r for r in mine if r["method"] == method]
        rows += mine[:limit] if limit is not None else mine
    if not rows or "flux_in68" not in rows[0]:
        raise SystemExit(f"--by-galaxy: no calibrated rows of method {method!r}")
    galaxies = []
    for ident in sorted({r["central_ident"] for r in rows}):
        mine = [r for r in rows if r["central_ident"] == ident]
        galaxies.append(
            {
                "ident": ident,
                "n": len(mine),
                "flux_true": float(np.median([r["flux_true"] for r in mine])),
                "flux_err": float(np.median([r["flux_err"] for r in mine])),
                "in68": int(sum(r["flux_in68"] for r in mine)),
                "in95": int(sum(r["flux_in95"] for r in mine)),
            }
        )
    n = np.array([g["n"] for g in galaxies], float)
    out = {"n": int(n.sum()), "galaxies": galaxies}
    for level in ("68", "95"):
        k = np.array([g[f"in{level}"] for g in galaxies], float)
        cov = k.sum() / n.sum()
        g = len(galaxies)
        # cluster-robust (sandwich) standard error of a ratio of sums over g clusters
        se = float(np.sqrt(np.sum((k - cov * n) ** 2) * g / max(g - 1, 1)) / n.sum())
        out[f"coverage{level}"] = float(cov)
        out[f"coverage{level}_se_galaxy"] = se
        out[f"coverage{level}_se_binomial"] = float(np.sqrt(cov * (1 - cov) / n.sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--method", default="galprism")
    ap.add_argument("--limit", type=int, default=None, help="first N cutouts of each folder")
    ap.add_argument(
        "--n-samples", type=int, default=8, help="posterior samples per cutout of the runs"
    )
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument(
        "--by-galaxy", action="store_true", help="pool the folders; one line per test galaxy"
    )
    args = ap.parse_args()
    if args.by_galaxy:
        res = by_galaxy(args.folders, args.method, args.limit)
        if args.json:
            print(json.dumps({"method": args.method, "limit": args.limit, **res}))
            return
        print("| galaxy | cutouts | median true flux | median flux err | 68% / 95% coverage |")
        print("|---:|---:|---:|---:|---:|")
        for g in res["galaxies"]:
            print(
                f"| {g['ident']} | {g['n']} | {g['flux_true']:.2f} | {g['flux_err']:+.3f} | "
                f"{100 * g['in68'] / g['n']:.0f} / {100 * g['in95'] / g['n']:.0f} |"
            )
        print(
            f"\npooled over {res['n']} cutouts of {len(res['galaxies'])} galaxies: 68% coverage "
            f"{100 * res['coverage68']:.1f} (standard error "
            f"{100 * res['coverage68_se_galaxy']:.1f} clustered by galaxy, "
            f"{100 * res['coverage68_se_binomial']:.1f} binomial), 95% coverage "
            f"{100 * res['coverage95']:.1f} "
            f"({100 * res['coverage95_se_galaxy']:.1f}, {100 * res['coverage95_se_binomial']:.1f})"
        )
        return
    table = [summarise(f, args.method, args.limit, args.n_samples) for f in args.folders]
    if args.json:
        print(json.dumps({"method": args.method, "limit": args.limit, "runs": table}))
        return
    print(
        "| run | n | RMSE all / most blended | abs flux err all / most blended | flux err | 68% / "
        "95% coverage | z median, robust std | SBC ranks |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for t in table:
        calibration = "| – | – | – |"
        if "sbc_ranks" in t:
            calibration = (
                f"| {100 * t['coverage68']:.1f} / {100 * t['coverage95']:.1f} | "
                f"{t['z_median']:+.2f}, {t['z_robust_std']:.2f} | "
                f"{' '.join(map(str, t['sbc_ranks']))} |"
            )
        print(
            f"| {Path(t['folder']).name} | {t['n']} | {t['rmse']:.3f} / "
            f"{t['rmse_most_blended']:.3f} | "
            f"{t['abs_flux_err']:.3f} / {t['abs_flux_err_most_blended']:.3f} | "
            f"{t['flux_err']:+.3f} " + calibration
        )


if __name__ == "__main__":
    main()

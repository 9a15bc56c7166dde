"""Accuracy and flux calibration of one method across several evaluation report folders.

    python scripts/calibration_table.py docs/results/v14-testsets/* [--limit 100] [--method galprism] [--json]

Reads ``results.jsonl`` of each ``galprism evaluate`` report folder (or a folder holding
only that method's rows) and prints, per folder, the medians of RMSE and absolute flux
error (all cutouts and the most blended third of the folder's own cutouts; medians and
thirds as the report computes them), the median
flux error, the 68% / 95% flux interval coverage, the median and robust spread
(1.4826 x MAD) of the flux z-scores and the SBC rank histogram. ``--limit N`` keeps the
first N cutouts in file order, so runs made with ``galprism evaluate --limit N`` can be
compared with the same cutouts of a full run.

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
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--method", default="galprism")
    ap.add_argument("--limit", type=int, default=None, help="first N cutouts of each folder")
    ap.add_argument("--n-samples", type=int, default=8, help="posterior samples per cutout of the runs")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    table = [summarise(f, args.method, args.limit, args.n_samples) for f in args.folders]
    if args.json:
        print(json.dumps({"method": args.method, "limit": args.limit, "runs": table}))
        return
    print("| run | n | RMSE all / most blended | abs flux err all / most blended | flux err | 68% / 95% coverage | z median, robust std | SBC ranks |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for t in table:
        calibration = "| – | – | – |"
        if "sbc_ranks" in t:
            calibration = (
                f"| {100 * t['coverage68']:.1f} / {100 * t['coverage95']:.1f} | {t['z_median']:+.2f}, {t['z_robust_std']:.2f} | "
                f"{' '.join(map(str, t['sbc_ranks']))} |"
            )
        print(
            f"| {Path(t['folder']).name} | {t['n']} | {t['rmse']:.3f} / {t['rmse_most_blended']:.3f} | "
            f"{t['abs_flux_err']:.3f} / {t['abs_flux_err_most_blended']:.3f} | {t['flux_err']:+.3f} " + calibration
        )


if __name__ == "__main__":
    main()

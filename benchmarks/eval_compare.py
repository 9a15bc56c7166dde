"""Compare ``galprism evaluate`` reports of one method at several settings, with errors.

For each report folder (``results.jsonl`` of the same test set) it gives the median
absolute flux error, the median RMSE and the 68 / 95 % flux-interval coverage, each with
a bootstrap standard error over cutouts, and the paired bootstrap difference from the
first (reference) report on the same cutouts: a setting is "unchanged" where every
difference is within its standard error (or two, with ``--k 2``).

Usage::

    python benchmarks/eval_compare.py REF_DIR OTHER_DIR ... [--method galprism] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

STATS = {
    "abs_flux_err": np.median,
    "rmse": np.median,
    "flux_in68": np.mean,
    "flux_in95": np.mean,
}


def load(folder: Path, method: str) -> dict[str, dict]:
    """Rows of ``method`` keyed by cutout name."""
    rows = {}
    with open(folder / "results.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("method") == method:
                rows[row["cutout"]] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--method", default="galprism")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--k", type=float, default=1.0, help="standard errors a change may span")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    tables = [load(p, args.method) for p in args.reports]
    names = sorted(set.intersection(*(set(t) for t in tables)))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(names), size=(args.boot, len(names)))
    ref = None
    out = []
    for folder, table in zip(args.reports, tables, strict=True):
        values = {k: np.array([float(table[n][k]) for n in names]) for k in STATS}
        summary = json.loads((folder / "summary.json").read_text())
        seconds = summary["methods"][args.method].get("seconds")
        row = {"report": str(folder), "n": len(names)}
        for key, stat in STATS.items():
            v = values[key]
            boot = np.array([stat(v[i]) for i in idx])
            row[key] = float(stat(v))
            row[key + "_se"] = float(boot.std(ddof=1))
            if ref is not None:
                rv = ref[key]
                diff = boot - np.array([stat(rv[i]) for i in idx])
                row[key + "_diff"] = float(stat(v) - stat(rv))
                row[key + "_diff_se"] = float(diff.std(ddof=1))
        if ref is not None:
            row["unchanged"] = all(
                abs(row[k + "_diff"]) <= args.k * max(row[k + "_diff_se"], 1e-12) for k in STATS
            )
        row["seconds_per_cutout"] = None if seconds is None else seconds / len(table)
        out.append(row)
        if ref is None:
            ref = values
    if args.json:
        print(json.dumps(out))
        return 0
    head = f"{'report':28s} {'abs flux err':>18s} {'rmse':>18s} {'cov68':>14s} {'cov95':>14s}"
    print(head)
    for row in out:
        cells = []
        for key in STATS:
            pct = 100 if key.startswith("flux_in") else 1
            fmt = ".1f" if pct == 100 else ".4f"
            cell = f"{pct * row[key]:{fmt}}±{pct * row[key + '_se']:{fmt}}"
            if key + "_diff" in row:
                cell += (
                    f" (d {pct * row[key + '_diff']:+{fmt}}±{pct * row[key + '_diff_se']:{fmt}})"
                )
            cells.append(cell)
        print(f"{Path(row['report']).name:28s} " + "  ".join(cells), row.get("unchanged", "ref"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

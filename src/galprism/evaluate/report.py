"""The report folder: ``summary.md``, ``results.csv``/``results.jsonl``, ``summary.json``, figures.

Every file is written atomically (:func:`galprism.atomic.atomic_path`); existing files are
replaced only with ``overwrite=True``. Numbers in ``summary.md`` are computed here from the
per-cutout rows, never typed in.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from .run import EvalResult

__all__ = [
    "HEADLINE",
    "INTRINSIC",
    "stat",
    "blendedness_edges",
    "summary_tables",
    "verdict",
    "summary_markdown",
    "write_report",
    "results_csv",
]

#: (row key, column title, format) of the headline (PSF-convolved) table
HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("rmse", "RMSE [σ]", "{:.3f}"),
    ("psnr", "PSNR [dB]", "{:.1f}"),
    ("flux_err", "flux err", "{:+.3f}"),
    ("abs_flux_err", "abs flux err", "{:.3f}"),
    ("centroid_err", "centroid [px]", "{:.3f}"),
    ("g_err", "abs Δg", "{:.3f}"),
    ("size_err", "size err", "{:+.3f}"),
)
INTRINSIC: tuple[tuple[str, str, str], ...] = tuple((f"int_{k}", t, f) for k, t, f in HEADLINE)


def stat(values: Sequence[float]) -> tuple[float, float, float, int]:
    """Median, 16th and 84th percentiles over the finite-or-infinite (non-NaN) values, and their
    count."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return math.nan, math.nan, math.nan, 0
    # 'inverted_cdf' keeps infinities (a perfect PSNR) from turning into NaN by interpolation.
    med, lo, hi = np.percentile(a, [50, 16, 84], method="inverted_cdf")
    return float(med), float(lo), float(hi), int(a.size)


def _fmt(value: float, spec: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return spec.format(value)


def cell(values: Sequence[float], spec: str) -> str:
    """``median [p16, p84]`` of ``values`` formatted with ``spec``."""
    med, lo, hi, n = stat(values)
    if n == 0:
        return "–"
    return f"{_fmt(med, spec)} [{_fmt(lo, spec)}, {_fmt(hi, spec)}]"


def blendedness_edges(values: Sequence[float]) -> np.ndarray:
    """Tertile edges ``[min, q1/3, q2/3, max]`` of the cutouts' blendedness."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return np.array([0.0, 0.0, 0.0, 0.0])
    return np.quantile(a, [0.0, 1 / 3, 2 / 3, 1.0])


def third_of(b: float, edges: np.ndarray) -> int:
    """0, 1 or 2: the blendedness third a cutout falls in (-1 when its blendedness is NaN)."""
    if not np.isfinite(b):
        return -1
    return int(min(2, max(0, np.searchsorted(edges[1:3], b, side="right"))))


def _rows_of(
    result: EvalResult, method: str, third: int | None = None, edges: np.ndarray | None = None
) -> list[dict]:
    rows = [r for r in result.rows if r["method"] == method]
    if third is not None and edges is not None:
        rows = [r for r in rows if third_of(r["blendedness"], edges) == third]
    return rows


def _table(
    result: EvalResult, columns: Sequence[tuple[str, str, str]], rows_for, methods: Sequence[str]
) -> str:
    labels = {m.name: m.label for m in result.methods}
    head = "| method | n | " + " | ".join(t for _, t, _ in columns) + " |"
    sep = "|---|---:|" + "---:|" * len(columns)
    lines = [head, sep]
    for name in methods:
        rows = rows_for(name)
        if not rows:
            continue
        cells = [cell([r.get(k, math.nan) for r in rows], f) for k, _, f in columns]
        lines.append(f"| {labels.get(name, name)} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_tables(result: EvalResult) -> dict[str, str]:
    """Markdown tables: ``overall``, ``third0..2``, ``intrinsic``, ``calibration``, ``timing``."""
    methods = [m.name for m in result.methods if m.error is None]
    edges = blendedness_edges([c.blendedness for c in result.cutouts])
    out = {"overall": _table(result, HEADLINE, lambda m: _rows_of(result, m), methods)}
    for k in range(3):
        out[f"third{k}"] = _table(
            result, HEADLINE, lambda m, k=k: _rows_of(result, m, k, edges), methods
        )
    intr = [m.name for m in result.methods if m.error is None and m.intrinsic]
    out["intrinsic"] = _table(result, INTRINSIC, lambda m: _rows_of(result, m), intr)
    cal = [
        "| method | interval | flux 68% | flux 95% | pixel 68% | pixel 95% | flux SBC p | pixel "
        "SBC p |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {m.name: m.label for m in result.methods}
    for name, c in result.calibration.items():
        cal.append(
            f"| {labels[name]} | {c.method}, S={c.n_samples} | "
            f"{100 * c.flux_coverage[0.68]:.1f} ± {100 * c.flux_coverage_err[0.68]:.1f} | "
            f"{100 * c.flux_coverage[0.95]:.1f} ± {100 * c.flux_coverage_err[0.95]:.1f} | "
            f"{_fmt(100 * c.pixel_coverage[0.68], '{:.1f}')} | "
            f"{_fmt(100 * c.pixel_coverage[0.95], '{:.1f}')} | "
            f"{c.flux_sbc_p:.3g} | {_fmt(c.pixel_sbc_p, '{:.3g}')} |"
        )
    out["calibration"] = "\n".join(cal)
    tim = [
        "| method | cutouts | total [s] | per cutout [s] | adaptive-moments failures | not "
        "detected or failed | status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for m in result.methods:
        per = m.seconds / m.n_cutouts if m.n_cutouts else math.nan
        status = "ok" if m.error is None else f"failed: {m.error}"
        tim.append(
            f"| {m.label} | {m.n_cutouts} | {m.seconds:.1f} | {_fmt(per, '{:.3f}')} | "
            f"{m.hsm_failures} | {m.not_detected} | {status} |"
        )
    out["timing"] = "\n".join(tim)
    out["edges"] = ", ".join(f"{e:.3f}" for e in edges)
    return out


def _best(result: EvalResult, key: str, rows_for) -> tuple[str | None, dict[str, float]]:
    meds = {}
    for m in result.methods:
        if m.error is None:
            med, _, _, n = stat([r.get(key, math.nan) for r in rows_for(m.name)])
            if n:
                meds[m.name] = med
    if not meds:
        return None, meds
    return min(meds, key=lambda k: meds[k]), meds


def verdict(result: EvalResult, main: str = "galprism", tolerance: float = 0.05) -> list[str]:
    """Plain statements: is ``main`` best in median RMSE and abs flux error, and calibrated?"""
    labels = {m.name: m.label for m in result.methods}
    if main not in labels or next(m for m in result.methods if m.name == main).error is not None:
        return [f"- `{main}` did not run, so no verdict on it."]
    edges = blendedness_edges([c.blendedness for c in result.cutouts])
    lines = []
    for scope, rows_for in (
        ("all cutouts", lambda m: _rows_of(result, m)),
        ("most blended third", lambda m: _rows_of(result, m, 2, edges)),
    ):
        for key, what in (("rmse", "median RMSE"), ("abs_flux_err", "median abs flux error")):
            best, meds = _best(result, key, rows_for)
            if best is None:
                continue
            ok = best == main
            others = ", ".join(f"{labels[k]} {v:.3f}" for k, v in meds.items())
            lines.append(
                f"- {what}, {scope}: {labels[main]} is "
                f"{'the best' if ok else 'NOT the best (best: ' + labels[best] + ')'} ({others})."
            )
    cal = result.calibration.get(main)
    if cal is not None:
        for lv in (0.68, 0.95):
            cov = cal.flux_coverage[lv]
            ok = abs(cov - lv) <= tolerance
            lines.append(
                f"- flux {int(100 * lv)}% interval coverage of {labels[main]}: {100 * cov:.1f}% "
                f"({'within' if ok else 'NOT within'} {int(100 * tolerance)} points of nominal)."
            )
    return lines


def summary_markdown(
    result: EvalResult, meta: dict[str, Any], extra_sections: Sequence[str] = ()
) -> str:
    """The whole ``summary.md``."""
    t = summary_tables(result)
    n = len(result.cutouts)
    thirds = ["least blended", "middle", "most blended"]
    parts = [
        "# galprism evaluation report",
        "",
        f"Command: `{meta.get('command', '')}`  ",
        f"galprism {meta.get('version', '')}, {meta.get('date', '')}, {meta.get('host', '')}; "
        f"total time {meta.get('seconds', math.nan):.0f} s.  ",
        f"Test set: {n} cutouts from `{meta.get('testset', '')}` (test split, seed "
        f"{meta.get('testset_seed', 'n/a')}).",
        "",
        "Values are the median and, in brackets, the 16th and 84th percentiles over cutouts. "
        "Headline measures compare each method's central galaxy **convolved with the cutout's "
        "PSF** "
        "against the convolved truth (`TRUE_GALAXY_CONV`), identically for every method; "
        "RMSE is in units of the noise sigma, flux errors are relative, centroid errors in pixels, "
        "abs Δg is the ellipticity error and size err the relative size error from adaptive "
        "moments "
        "(GalSim HSM; failures count in the timing table and are left out of the medians). "
        "See docs/evaluation.md for every definition.",
        "",
        "## Verdict",
        "",
        *verdict(result),
        "",
        "## All cutouts (PSF-convolved galaxy)",
        "",
        t["overall"],
        "",
        f"## By blendedness (thirds; edges {t['edges']})",
        "",
    ]
    for k in range(3):
        parts += [f"### {thirds[k]} third", "", t[f"third{k}"], ""]
    parts += [
        "## Intrinsic (PSF-free) galaxy, methods that model it",
        "",
        "Against `TRUE_GALAXY`; adaptive moments of undersampled intrinsic images fail more often.",
        "",
        t["intrinsic"],
        "",
        "## Calibration (probabilistic methods)",
        "",
        "Coverage (%) of central credible intervals of the intrinsic total flux (± binomial "
        "standard "
        "error at the nominal level) and of intrinsic pixel values in the galaxy footprint "
        "(convolved truth ≥ 1σ); SBC: chi-square p-value of the rank histogram (pixel ranks are "
        "pooled over correlated pixels, so their p-value is over-confident).",
        "",
        t["calibration"],
        "",
        "## Time and failures",
        "",
        t["timing"],
        "",
    ]
    parts += list(extra_sections)
    settings = {m.name: m.settings for m in result.methods}
    parts += [
        "## Settings",
        "",
        "```json",
        json.dumps({"run": meta.get("settings", {}), "methods": settings}, indent=2, default=str),
        "```",
        "",
    ]
    return "\n".join(parts)


def results_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of the per-cutout rows (union of keys, stable order)."""
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in keys})
    return buf.getvalue()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null / strings."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_text(path: Path, text: str, overwrite: bool) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def summary_json(
    result: EvalResult, meta: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Machine-readable summary (``--json`` and ``summary.json``)."""
    edges = blendedness_edges([c.blendedness for c in result.cutouts])
    methods = {}
    for m in result.methods:
        entry: dict[str, Any] = {
            "label": m.label,
            "status": "ok" if m.error is None else "failed",
            "seconds": m.seconds,
        }
        if m.error is not None:
            entry["error"] = m.error
        else:
            for scope, third in (("all", None), ("third0", 0), ("third1", 1), ("third2", 2)):
                rows = _rows_of(result, m.name, third, edges)
                entry[scope] = {
                    k: dict(
                        zip(
                            ("median", "p16", "p84", "n"),
                            stat([r.get(k, math.nan) for r in rows]),
                            strict=True,
                        )
                    )
                    for k, _, _ in HEADLINE + (INTRINSIC if m.intrinsic else ())
                }
            entry["hsm_failures"] = m.hsm_failures
            c = result.calibration.get(m.name)
            if c is not None:
                entry["calibration"] = {
                    "interval": c.method,
                    "n_samples": c.n_samples,
                    "flux_coverage": {str(k): v for k, v in c.flux_coverage.items()},
                    "pixel_coverage": {str(k): v for k, v in c.pixel_coverage.items()},
                    "flux_sbc_p": c.flux_sbc_p,
                    "flux_sbc_hist": c.flux_sbc_hist,
                    "pixel_sbc_p": c.pixel_sbc_p,
                }
        methods[m.name] = entry
    out = {
        "n_cutouts": len(result.cutouts),
        "blendedness_edges": edges.tolist(),
        "methods": methods,
        "meta": meta,
        **(extra or {}),
    }
    return _clean(out)


def write_report(
    result: EvalResult,
    folder: str | os.PathLike[str],
    meta: dict[str, Any],
    *,
    overwrite: bool = False,
    extra_sections: Sequence[str] = (),
    extra_json: dict[str, Any] | None = None,
    figures: bool = True,
    extra_figures: dict[str, Path] | None = None,
) -> dict[str, Path]:
    """Write the report files into ``folder``; returns ``{kind: path}``."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["results_csv"] = write_text(root / "results.csv", results_csv(result.rows), overwrite)
    lines = "".join(json.dumps(_clean(r), default=_json_default) + "\n" for r in result.rows)
    paths["results_jsonl"] = write_text(root / "results.jsonl", lines, overwrite)
    if figures:
        from .figures import write_figures  # local: matplotlib

        paths.update(write_figures(result, root, overwrite=overwrite))
    paths.update(extra_figures or {})
    fig_lines = (
        ["## Figures", ""]
        + [f"![{k}]({p.name})" for k, p in paths.items() if p.suffix == ".png"]
        + [""]
    )
    summary = summary_markdown(result, meta, [*extra_sections, *fig_lines])
    paths["summary_md"] = write_text(root / "summary.md", summary, overwrite)
    data = summary_json(result, meta, extra_json)
    paths["summary_json"] = write_text(
        root / "summary.json", json.dumps(data, indent=2, default=_json_default) + "\n", overwrite
    )
    return paths

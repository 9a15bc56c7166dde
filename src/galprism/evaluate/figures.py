"""PNG figures of an evaluation (matplotlib, Agg backend): metric vs blendedness, gallery,
calibration."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from .run import EvalResult  # noqa: E402

__all__ = ["write_figures", "save_figure", "gallery_indices", "show_image"]

_PANELS = (
    ("rmse", "RMSE [noise σ]", True),
    ("abs_flux_err", "abs relative flux error", True),
    ("g_err", "ellipticity error abs Δg", True),
    ("centroid_err", "centroid error [px]", True),
)


def save_figure(fig, path: Path, overwrite: bool) -> Path:
    """Save atomically and close."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _binned_median(x: np.ndarray, y: np.ndarray, nbins: int = 6) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < nbins:
        return np.array([]), np.array([])
    edges = np.quantile(x, np.linspace(0, 1, nbins + 1))
    idx = np.clip(np.searchsorted(edges[1:-1], x, side="right"), 0, nbins - 1)
    xm = np.array([np.median(x[idx == k]) for k in range(nbins) if (idx == k).any()])
    ym = np.array([np.median(y[idx == k]) for k in range(nbins) if (idx == k).any()])
    return xm, ym


def metric_vs_blendedness(result: EvalResult, path: Path, overwrite: bool) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    methods = [m for m in result.methods if m.error is None]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    floor = 1e-3
    for ax, (key, title, logy) in zip(axes.ravel(), _PANELS, strict=True):
        for i, m in enumerate(methods):
            rows = [r for r in result.rows if r["method"] == m.name]
            x = np.maximum(np.array([r["blendedness"] for r in rows], dtype=float), floor)
            y = np.array([r.get(key, np.nan) for r in rows], dtype=float)
            c = colours[i % len(colours)]
            ax.scatter(x, y, s=6, alpha=0.25, color=c, label=m.label)
            xm, ym = _binned_median(x, y)
            ax.plot(xm, ym, "-o", color=c, ms=4)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(f"blendedness (floored at {floor:g})")
        ax.set_title(title)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Central-galaxy errors vs blendedness (points: cutouts; lines: binned medians)")
    fig.tight_layout()
    return save_figure(fig, path, overwrite)


def gallery_indices(blendedness: Sequence[float], n: int) -> list[int]:
    """Cutouts at evenly spaced blendedness quantiles (least to most blended)."""
    b = np.asarray(blendedness, dtype=float)
    order = [int(i) for i in np.argsort(np.where(np.isfinite(b), b, -1.0))]
    if len(order) <= n:
        return order
    picks = np.linspace(0, len(order) - 1, n).round().astype(int)
    return [order[p] for p in picks]


def show_image(ax, image: np.ndarray, scale: float, title: str | None = None) -> None:
    """asinh stretch with softening ``scale`` (about the noise), shared within a row."""
    ax.imshow(
        np.arcsinh(np.asarray(image) / scale),
        origin="lower",
        cmap="magma",
        vmin=-1.0,
        vmax=np.arcsinh(50.0),
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 20)), fontsize=8)


def gallery(result: EvalResult, path: Path, overwrite: bool, n: int = 6) -> Path:
    methods = [m for m in result.methods if m.error is None]
    idx = gallery_indices([c.blendedness for c in result.cutouts], n)
    intrinsic = [m for m in methods if m.intrinsic]
    ncol = 2 + len(methods) + (1 + len(intrinsic) if intrinsic else 0)
    fig, axes = plt.subplots(len(idx), ncol, figsize=(1.6 * ncol, 1.7 * len(idx)), squeeze=False)
    for r, i in enumerate(idx):
        c = result.cutouts[i]
        s = c.sigma
        row = axes[r]
        first = r == 0
        show_image(row[0], np.where(c.valid, c.image, np.nan), s, "observation" if first else None)
        row[0].set_ylabel(f"b={c.blendedness:.2f}", fontsize=8)
        show_image(row[1], c.galaxy_conv, s, "truth (conv.)" if first else None)
        for k, m in enumerate(methods):
            est = result.estimates[m.name][i]
            if est is None:
                row[2 + k].set_axis_off()
                continue
            show_image(row[2 + k], est.galaxy_conv, s, m.label if first else None)
        if intrinsic:
            base = 2 + len(methods)
            show_image(row[base], c.galaxy, s, "truth (intrinsic)" if first else None)
            for k, m in enumerate(intrinsic):
                est = result.estimates[m.name][i]
                if est is None or est.galaxy is None:
                    row[base + 1 + k].set_axis_off()
                    continue
                show_image(
                    row[base + 1 + k], est.galaxy, s, f"{m.label} (intr.)" if first else None
                )
    fig.suptitle(
        "Gallery: observation, truth and each method's central galaxy (asinh, softening = noise σ)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path, overwrite)


def calibration(result: EvalResult, path: Path, overwrite: bool) -> Path | None:
    cals = list(result.calibration.items())
    if not cals:
        return None
    labels = {m.name: m.label for m in result.methods}
    fig, axes = plt.subplots(len(cals), 3, figsize=(13, 3.6 * len(cals)), squeeze=False)
    for row, (name, c) in zip(axes, cals, strict=True):
        for ax, hist, what, p in (
            (row[0], c.flux_sbc_hist, "total flux", c.flux_sbc_p),
            (row[1], c.pixel_sbc_hist, "footprint pixels", c.pixel_sbc_p),
        ):
            if not hist:
                ax.set_axis_off()
                continue
            h = np.asarray(hist, dtype=float)
            expected = h.sum() / len(h)
            ax.bar(np.arange(len(h)), h, color="tab:blue", alpha=0.7)
            ax.axhline(expected, color="k")
            ax.axhspan(
                expected - 2 * np.sqrt(expected),
                expected + 2 * np.sqrt(expected),
                color="k",
                alpha=0.1,
            )
            ax.set_title(f"{labels[name]}\nSBC ranks, {what} (p={p:.2g})", fontsize=9)
            ax.set_xlabel(f"rank of truth among S={c.n_samples} samples (bins)")
        ax = row[2]
        levels = sorted(c.flux_coverage)
        x = np.arange(len(levels))
        ax.bar(x - 0.2, [100 * c.flux_coverage[lv] for lv in levels], 0.4, label="total flux")
        ax.bar(
            x + 0.2, [100 * c.pixel_coverage[lv] for lv in levels], 0.4, label="footprint pixels"
        )
        for k, lv in enumerate(levels):
            ax.hlines(100 * lv, k - 0.45, k + 0.45, color="k")
            ax.axhspan(
                100 * lv - 5,
                100 * lv + 5,
                xmin=(k + 0.05) / len(levels),
                xmax=(k + 0.95) / len(levels),
                color="k",
                alpha=0.1,
            )
        ax.set_xticks(x, [f"{int(100 * lv)}%" for lv in levels])
        ax.set_ylim(0, 100)
        ax.set_ylabel("coverage [%]")
        ax.set_title(
            f"{labels[name]}\ncoverage ({c.method} intervals; bands ±5 points)", fontsize=9
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, overwrite)


def write_figures(result: EvalResult, folder: Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Write every figure of the simulated evaluation; returns ``{name: path}``."""
    out = {
        "eval_metric_vs_blendedness": metric_vs_blendedness(
            result, folder / "eval_metric_vs_blendedness.png", overwrite
        ),
        "eval_gallery": gallery(result, folder / "eval_gallery.png", overwrite),
    }
    cal = calibration(result, folder / "eval_calibration.png", overwrite)
    if cal is not None:
        out["eval_calibration"] = cal
    return out


def real_figure(result: EvalResult, path: Path, overwrite: bool = False) -> Path:
    """The real cutout: observation, HST truth (convolved and intrinsic), each method's estimate
    and residual."""
    c = result.cutouts[0]
    methods = [m for m in result.methods if m.error is None]
    ncol = 3 + len(methods)
    fig, axes = plt.subplots(2, ncol, figsize=(1.9 * ncol, 4.0), squeeze=False)
    s = c.sigma
    show_image(axes[0, 0], np.where(c.valid, c.image, np.nan), s, "HSC i (observation)")
    show_image(axes[0, 1], c.galaxy_conv, s, "HST truth (HSC PSF)")
    show_image(axes[0, 2], c.galaxy, s, "HST truth (intrinsic)")
    for k, m in enumerate(methods):
        est = result.estimates[m.name][0]
        if est is None:
            axes[0, 3 + k].set_axis_off()
            axes[1, 3 + k].set_axis_off()
            continue
        show_image(axes[0, 3 + k], est.galaxy_conv, s, m.label)
        ax = axes[1, 3 + k]
        ax.imshow(
            (est.galaxy_conv - c.galaxy_conv) / s, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("estimate − truth [σ]", fontsize=8)
    for ax in axes[1, :3]:
        ax.set_axis_off()
    fig.suptitle(
        "Real data: HSC i-band central galaxy against HST (asinh, softening = HSC noise σ)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path, overwrite)

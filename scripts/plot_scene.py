#!/usr/bin/env python
"""Draw a ``galprism separate --scene`` result: data, model, residual and every source.

Reads the input image and the output file (``<stem>.galprism.fits``) and writes one PNG:
the data, the posterior-mean ``MODEL``, the normalised residual ``RESID`` and each source's
flux-conserving child (``CHILDREN`` placed at ``child_x0``, ``child_y0``), labelled with its
catalogue id, kind and flux. Images of several bands are colour composites (Lupton et al.
2004, ``astropy.visualization.make_lupton_rgb``) of i, r, g (or the last three bands), all
with the data's stretch so that model and sources compare with it; the residual is shown
band by band in grey, clipped at +-5 sigma, with its reduced chi^2 per band.

Usage::

    python scripts/plot_scene.py sample_fits/hsc_cosmos35_grizy.fits \\
        out/hsc_cosmos35_grizy.galprism.fits -o docs/figures/real_hsc_grizy_scene.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402
from astropy.visualization import make_lupton_rgb  # noqa: E402

from galprism.io.read import read_cutout  # noqa: E402


def rgb_index(bands: list[str] | None, n: int) -> list[int]:
    """Red, green, blue planes: i, r, g when present, else the last three bands."""
    if bands:
        lower = [b.lower() for b in bands]
        if all(b in lower for b in ("i", "r", "g")):
            return [lower.index(b) for b in ("i", "r", "g")]
    return list(range(n))[-3:][::-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path, help="the input of galprism separate --scene")
    ap.add_argument("result", type=Path, help="its <stem>.galprism.fits")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    obs = read_cutout(args.image)
    data = np.where(obs.valid, obs.image, 0.0)  # (C, H, W)
    c, h, w = data.shape
    with fits.open(args.result) as hdul:
        model = np.asarray(hdul["MODEL"].data, dtype=np.float64).reshape(c, h, w)
        resid = np.asarray(hdul["RESID"].data, dtype=np.float64).reshape(c, h, w)
        children = np.asarray(hdul["CHILDREN"].data, dtype=np.float64)
        catalog = Table.read(hdul["CATALOG"])
    children = children.reshape(len(catalog), c, *children.shape[-2:])
    sources = []
    for k, row in enumerate(catalog):
        img = np.zeros((c, h, w))
        x0, y0 = int(row["child_x0"]), int(row["child_y0"])
        ny, nx = min(children.shape[-2], h - y0), min(children.shape[-1], w - x0)
        img[:, y0 : y0 + ny, x0 : x0 + nx] = children[k, :, :ny, :nx]
        sources.append(img)
    flux_col = "flux_i" if "flux_i" in catalog.colnames else "flux"
    if c >= 3:
        idx = rgb_index(list(obs.bands) if obs.bands else None, c)
        stretch = float(np.percentile(data[idx], 99.5)) / 3.0

        def show(img: np.ndarray) -> np.ndarray:
            return make_lupton_rgb(*(img[i] for i in idx), stretch=stretch, Q=8, minimum=0.0)

        cname = "RGB = " + ", ".join(obs.bands[i] if obs.bands else str(i) for i in idx)
    else:
        soft = float(np.percentile(np.abs(data[0]), 90.0))
        top = float(np.arcsinh(np.percentile(data[0], 99.9) / soft))

        def show(img: np.ndarray) -> np.ndarray:
            return np.clip(np.arcsinh(img[0] / soft) / top, 0.0, 1.0)

        cname = "asinh"
    panels = [("data", show(data)), ("model", show(model))]
    panels += [
        (f"{row['id']} {row['kind']}\n{flux_col} {row[flux_col]:.3g}", show(src))
        for row, src in zip(catalog, sources, strict=True)
    ]
    n_cols = max(4, c)
    n_rows = 1 + int(np.ceil(len(panels) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.0 * n_cols, 2.2 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for b in range(c):
        ax = axes[0, b]
        chi2 = float(np.nanmean(resid[b] ** 2))
        ax.imshow(resid[b], origin="lower", cmap="gray", vmin=-5, vmax=5)
        name = obs.bands[b] if obs.bands else str(b)
        ax.set_title(f"resid {name}: chi2 {chi2:.2f}", fontsize=8)
    for k, (title, img) in enumerate(panels):
        ax = axes[1 + k // n_cols, k % n_cols]
        ax.imshow(img, origin="lower", cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=8)
    fig.suptitle(args.title or f"{args.image.name} ({cname})", fontsize=9)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

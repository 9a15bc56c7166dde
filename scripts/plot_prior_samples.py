#!/usr/bin/env python
"""Draw samples of one source of a prior as a PNG grid: colour images for several bands.

With three or more bands the image is a Lupton et al. (2004) asinh colour composite
(``astropy.visualization.make_lupton_rgb``) of the reddest three of ``i``, ``r``, ``g``
(or the last three bands when the prior names none of them), with one stretch for the
whole grid so that colours and brightnesses compare between samples; with fewer bands,
an asinh grey scale of the first band.

Usage::

    python scripts/plot_prior_samples.py --prior hsc-grizy --source galaxy -n 16 \\
        -o docs/figures/prior_grizy_galaxy_samples.png --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from astropy.visualization import make_lupton_rgb  # noqa: E402

from galprism.priorset import load_priorset  # noqa: E402


def colour_bands(bands: list[str] | None, n_bands: int) -> list[int]:
    """Indices of the red, green and blue planes: i, r, g when the prior has them."""
    if bands is not None:
        lower = [b.lower() for b in bands]
        if all(b in lower for b in ("i", "r", "g")):
            return [lower.index(b) for b in ("i", "r", "g")]
    return list(range(n_bands))[-3:][::-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="default")
    ap.add_argument("--source", default="galaxy")
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stretch", type=float, default=None, help="asinh softening (flux units)")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prior = load_priorset(args.prior)
    x = prior.sample_prior(
        args.source, args.n, steps=args.steps, generator=torch.Generator().manual_seed(args.seed)
    )
    x = x.detach().numpy().astype(np.float64)  # (n, C, H, W)
    if x.ndim == 3:
        x = x[:, None]
    n, c = x.shape[:2]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    if c >= 3:
        rgb = colour_bands(list(prior.frame.bands) if prior.frame.bands else None, c)
        stretch = args.stretch or float(np.percentile(np.abs(x[:, rgb]), 99.5)) / 4.0
        images = [
            make_lupton_rgb(*(s[b] for b in rgb), stretch=stretch, Q=8, minimum=0.0) for s in x
        ]
        title = "RGB = " + ", ".join(
            prior.frame.bands[b] if prior.frame.bands else str(b) for b in rgb
        )
    else:
        soft = args.stretch or float(np.percentile(np.abs(x[:, 0]), 99.0)) / 10.0
        top = float(np.arcsinh(np.percentile(x[:, 0], 99.9) / soft))
        images = [np.clip(np.arcsinh(s[0] / soft) / top, 0.0, 1.0) for s in x]
        title = "asinh stretch"
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < n:
            ax.imshow(images[k], origin="lower", cmap="gray", interpolation="nearest")
    fig.suptitle(f"{prior.name}: {n} samples of {args.source} ({title})", fontsize=9)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

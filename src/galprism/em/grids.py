"""PNG grids of image samples, written each lap for a quick look at what EM learns."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import Tensor

from ..atomic import atomic_path

__all__ = ["save_grid"]


def save_grid(images: Tensor, path: Path, title: str = "") -> None:
    """Save ``(n, C, H, W)`` images (first band) as a square grid PNG, each image scaled
    by the grid's robust range (arcsinh stretch so faint outskirts stay visible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = images.detach().float().cpu().numpy()[:, 0]
    n = arr.shape[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    lo, hi = np.percentile(arr, [1, 99.5])
    scale = max(hi - lo, 1e-12)
    stretched = np.arcsinh((arr - lo) / (0.1 * scale))
    vmax = np.arcsinh(10.0)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(stretched[i], cmap="magma", vmin=0, vmax=vmax, origin="lower")
    if title:
        fig.suptitle(title, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)

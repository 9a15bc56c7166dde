"""Fitting the adversarial-SVD baseline for an evaluation, on training-split cutouts only.

ASVD is semi-supervised (``docs/asvd.md``): clean examples of one source plus
mixtures. Here the clean examples are ``sky`` cutouts (neighbours and background, no
central galaxy) and the mixtures are ``galaxies`` cutouts, so the unseen source is the
central galaxy. Both come from the simulator's *training* split (never the test
galaxies), without defects (ASVD has no mask during fitting), and are divided by the
noise sigma so that the fit is scale-free.
"""

from __future__ import annotations

import time

import numpy as np

from ..asvd import fit_asvd
from .methods import ASVDMethod

__all__ = ["training_cutouts", "fit_asvd_method"]


def training_cutouts(
    view: str, n: int, seed: int, data_dir: str | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """``(n, 1, H, W)`` training-split cutouts of one view (no defects) and the instrument's
    ``noise_sigma``, ``pixel_scale`` and ``zeropoint``."""
    from ..simulate import SimulationConfig, Simulator  # local: loads the GalSim catalogue

    sim = Simulator(
        SimulationConfig(
            view=view, split="train", n=n, seed=seed, mask_fraction=0.0, data_dir=data_dir
        )
    )
    images = np.stack([sim.cutout(i).image for i in range(n)]).astype(np.float64)
    inst = sim.instrument
    meta = {
        "noise_sigma": float(inst.noise_sigma),
        "pixel_scale": float(inst.pixel_scale),
        "zeropoint": float(inst.zeropoint),
    }
    return images[:, None], meta


def fit_asvd_method(
    n_train: int,
    seed: int,
    *,
    ranks: tuple[int, int] = (32, 16),
    tau: float | str = "auto",
    projection: str = "nonneg",
    split: str = "wiener",
    data_dir: str | None = None,
) -> ASVDMethod:
    """Simulate ``n_train`` sky and ``n_train`` galaxy training cutouts and fit ASVD on them.

    The seed of the training batches is derived from ``seed`` (``seed + 1`` for sky,
    ``seed + 2`` for galaxies) so that they never coincide with a test batch of the same
    seed, which is anyway drawn from other galaxies.
    """
    t0 = time.perf_counter()
    clean, meta = training_cutouts("sky", n_train, seed + 1, data_dir)
    mixed, _ = training_cutouts("galaxies", n_train, seed + 2, data_dir)
    sigma = meta["noise_sigma"]
    simulate_seconds = time.perf_counter() - t0
    model = fit_asvd(
        clean / sigma,
        mixed / sigma,
        rank_clean=ranks[0],
        rank_unseen=ranks[1],
        tau=tau,
        sources=("sky", "galaxy"),
        projection=projection,
        split=split,
        pixel_scale=meta["pixel_scale"],
        zeropoint=meta["zeropoint"],
        seed=seed,
    )
    model.info["simulate_seconds"] = round(simulate_seconds, 2)
    model.info["n_train_per_view"] = int(n_train)
    model.info["train_seeds"] = [seed + 1, seed + 2]
    return ASVDMethod(model, sigma)

"""Scene mode on the real HSC i cutout of the HST+HSC pair: the central galaxy against HST.

The truth is the evaluation's (:func:`galprism.evaluate.real.build_real_case`): the HST
image's central segment brought to the HSC PSF and pixels, in HSC units; the cutout's
noise and zero point are stated there. Each prior separates the cutout in scene mode
(detection, classification, blends, defaults); the detection nearest the truth's
centroid is the central galaxy, and its posterior-mean light (the ``STAMPS`` mean, PSF
included) is compared with the truth over the cutout:

* ``centroid_offset_px``: distance between the light-weighted centroids;
* ``rmse_sigma``: RMSE of the two images in units of the cutout's noise;
* ``flux`` and ``truth_flux``; the blend's reduced chi^2.

Usage::

    python benchmarks/real_scene_central.py --prior default --prior hsc-galaxy-gaussian --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import numpy as np

from galprism.evaluate.real import build_real_case
from galprism.priorset import load_priorset
from galprism.scene.run import separate_scene
from galprism.separate import SeparateConfig


def _centroid(image: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    return float((image * xx).sum() / image.sum()), float((image * yy).sum() / image.sum())


def _place(stamp: np.ndarray, x0: int, y0: int, shape: tuple[int, int]) -> np.ndarray:
    """``stamp`` (first pixel ``x0``, ``y0``) on an image of ``shape``, clipped."""
    out = np.zeros(shape)
    sh, sw = stamp.shape
    ys, xs = slice(max(y0, 0), min(y0 + sh, shape[0])), slice(max(x0, 0), min(x0 + sw, shape[1]))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys, xs] = stamp[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return out


def measure(prior_name: str, data_dir: str | None, seed: int) -> dict[str, Any]:
    """The central galaxy of one prior's scene-mode run against the HST truth."""
    case = build_real_case(data_dir)
    obs = case.cutout.observation
    truth = np.asarray(case.cutout.galaxy_conv, dtype=np.float64).reshape(obs.shape[-2:])
    tc = _centroid(truth)
    result = separate_scene(obs, load_priorset(prior_name), SeparateConfig(), seed=seed)
    cat = result.catalog
    d = np.hypot(np.asarray(cat["x"], float) - tc[0], np.asarray(cat["y"], float) - tc[1])
    k = int(np.argmin(d))
    light = _place(
        result.stamps[k, 0, 0], int(cat["stamp_x0"][k]), int(cat["stamp_y0"][k]), truth.shape
    )
    c = _centroid(light)
    return {
        "prior": prior_name,
        "sources": len(cat),
        "central_id": int(cat["id"][k]),
        "kind": str(cat["kind"][k]),
        "truth_centroid": list(tc),
        "centroid": list(c),
        "centroid_offset_px": math.hypot(c[0] - tc[0], c[1] - tc[1]),
        "rmse_sigma": float(np.sqrt(np.mean((light - truth) ** 2)) / case.cutout.sigma),
        "flux": float(cat["flux"][k]),
        "flux_err": float(cat["flux_err"][k]),
        "truth_flux": float(truth.sum()),
        "blend_chi2": float(cat["chi2"][k]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", action="append", help="prior name or folder (repeatable)")
    ap.add_argument("--data-dir", default=None, help="the shared data folder (multiview/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    rows = [measure(p, args.data_dir, args.seed) for p in (args.prior or ["default"])]
    if args.json:
        print(json.dumps({"seed": args.seed, "priors": rows}, indent=1))
    else:
        for r in rows:
            print(
                f"{r['prior']}: centroid offset {r['centroid_offset_px']:.2f} px, RMSE "
                f"{r['rmse_sigma']:.2f} sigma, flux {r['flux']:.1f} (truth {r['truth_flux']:.1f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

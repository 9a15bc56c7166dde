"""HSC alone against HSC + HST jointly, scene mode, on the real ``multiview/`` pair.

Inputs (the shared data's ``multiview/`` folder): the HSC i band of ``Cut_HSC.fits``
(0.168"/px) and ``Cut_HST.fits`` (ACS F814W, 0.03"/px), with their PSFs. Neither file
has a zero point or a noise map, so the script states its calibration:

* HSC: noise the sigma-clipped std of source-free pixels; zero point that gives that
  noise the level of the HSC data the built-in priors were trained on
  (:func:`galprism.evaluate.real.build_real_case`, ``zeropoint_assumed``).
* HST: noise the same estimate times the measured correlation factor of its drizzled
  noise (std of 5 x 5 block sums over 5 sigma), so that the white-noise variance has the
  noise's large-scale level; zero point from the least-squares flux scale between the
  HST scene brought to HSC (PSF matched) and the HSC image, and the HST WCS shifted by
  the astrometric offset that fit finds (both from ``build_real_case``). The HST PSF is
  re-centred on its centroid (it is 0.7, 1.0 px off) by a Fourier shift.

Both runs use the built-in ``hsc-galaxy`` prior, detection on HSC, the same seed and
sampler settings. Figures (``--json`` prints them):

* per source: posterior flux std (``flux_err``) of HSC alone and jointly, and the ratio;
  per blend: the std of the blend's total flux (sum over its sources, sample by sample);
* per view: reduced chi^2 of the posterior-mean model (HST: against the noise bound, with
  the value pure noise gives against it, ``noise_chi2``);
* RMSE against the HST image at HST resolution: the posterior-mean sources on the model
  frame without PSF (``SceneResult.frame_sources``, the prior's 0.2" resolution) put on
  the HST pixel grid by the flux-conserving ``Resample`` (frame -> HST WCS) and converted
  to HST units, against the HST image brought to the same 0.2" resolution by its matching
  kernel, minus its sigma-clipped sky, over the HST pixels whose model-frame pixel the
  HST view informs. Also on the model frame (the HST view's matched data there).

Usage::

    python benchmarks/multiview_real.py --json [--figure docs/figures/multiview_real.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np
import scipy.ndimage
import scipy.signal


def _recentre(psf: np.ndarray) -> np.ndarray:
    n, m = psf.shape
    yy, xx = np.mgrid[:n, :m]
    tot = psf.sum()
    dy, dx = (psf * yy).sum() / tot - n // 2, (psf * xx).sum() / tot - m // 2
    out = np.fft.ifft2(scipy.ndimage.fourier_shift(np.fft.fft2(psf), (-dy, -dx))).real
    return out / out.sum()


def build_views(data_dir: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """The HSC i-band and HST observations, calibrated as the module docstring says."""
    from galprism.evaluate.real import _noise_sigma, build_real_case, load_multiview, pixel_affine
    from galprism.observation import Observation

    mv = load_multiview(data_dir)
    case = build_real_case(data_dir)
    info = case.info
    zp = float(info["zeropoint_assumed"])
    sigma = float(info["hsc_noise_sigma"])
    scale_px = float(np.sqrt(abs(np.linalg.det(mv.hsc_wcs.pixel_scale_matrix))) * 3600.0)
    hsc = Observation(
        mv.hsc,
        np.full(mv.hsc.shape, sigma**2),
        mv.hsc_psf,
        wcs=mv.hsc_wcs,
        pixel_scale=scale_px,
        zeropoint=zp,
        name="Cut_HSC.fits[i]",
    )
    hst_sky, hst_sigma = _noise_sigma(mv.hst)
    corr = float(info["hst_noise_correlation_factor"])
    flux_scale = float(info["flux_scale_hst_to_hsc"])
    zp_hst = zp - 2.5 * math.log10(flux_scale)
    a, _, _ = pixel_affine(mv.hst_wcs, mv.hsc_wcs, mv.hst.shape)
    delta = np.linalg.solve(a, np.asarray(info["astrometric_shift_px"], dtype=np.float64))
    wcs = mv.hst_wcs.deepcopy()
    wcs.wcs.crpix = wcs.wcs.crpix - delta
    hst = Observation(
        mv.hst,
        np.full(mv.hst.shape, (corr * hst_sigma) ** 2),
        _recentre(mv.hst_psf),
        wcs=wcs,
        pixel_scale=0.03,
        zeropoint=zp_hst,
        name="Cut_HST.fits",
    )
    calib = {
        "hsc_zeropoint": zp,
        "hsc_noise_sigma": sigma,
        "hst_zeropoint": zp_hst,
        "hst_noise_sigma": hst_sigma,
        "hst_noise_correlation_factor": corr,
        "hst_sky": hst_sky,
        "hst_wcs_shift_hst_px": [float(delta[0]), float(delta[1])],
    }
    return hsc, hst, calib


def hst_resolution_rmse(result: Any, hst: Any, matched: Any, sky: float) -> dict[str, float]:
    """RMSE of the posterior-mean sources against the HST image (module docstring)."""
    from galprism.resample import Resample
    from galprism.scene.views import MODEL_FWHM, matching_kernel, model_kernel

    obs = result.observation
    frame_wcs = matched.wcs
    src = result.frame_sources[0]  # HSC units per frame pixel
    to_hst = 1.0 / (10.0 ** (0.4 * (obs.zeropoint - hst.zeropoint)))
    _, hv, wv = hst.shape
    rs = Resample(frame_wcs, src.shape, hst.wcs, (hv, wv))
    model = (rs.matrix @ src.reshape(-1)).reshape(hv, wv) * to_hst
    fw = MODEL_FWHM / hst.pixel_scale
    kernel, _ = matching_kernel(
        np.asarray(hst.psf[0]), model_kernel(fw, 2 * math.ceil(4.5 * fw) + 1)
    )
    data = scipy.signal.fftconvolve(hst.image[0] - sky, kernel, mode="same")
    # HST pixels whose model-frame pixel the HST view informs.
    back = Resample(hst.wcs, (hv, wv), frame_wcs, src.shape)
    seen = matched.valid[0].reshape(-1).astype(float)
    inside = (back.matrix.T @ seen).reshape(hv, wv) > 1.0 - 1e-6
    r_hst = float(np.sqrt(np.mean((model - data)[inside] ** 2)))
    frame_data = matched.image[0]  # HST units, model frame
    v = matched.valid[0]
    sky_frame = sky * float(np.median(np.asarray(back.matrix.sum(axis=1)).ravel()[v.ravel()]))
    r_frame = float(np.sqrt(np.mean((src * to_hst - (frame_data - sky_frame))[v] ** 2)))
    return {"rmse_hst_pixels": r_hst, "rmse_model_frame": r_frame, "hst_pixels": int(inside.sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--figure", help="write a PNG of data, model, residual per view")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: separate's)")
    ap.add_argument("-n", "--n-samples", type=int, default=None)
    ap.add_argument("--cg-iterations", type=int, default=None)
    args = ap.parse_args(argv)

    import torch

    from galprism.diffusion.samplers import SamplerConfig
    from galprism.priorset import load_priorset
    from galprism.scene.run import separate_scene
    from galprism.separate import SeparateConfig

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data_dir = os.environ.get("GALPRISM_DATA_DIR")
    hsc, hst, calib = build_views(data_dir)
    prior = load_priorset("hsc-galaxy")
    kw = {}
    if args.steps is not None:
        kw["steps"] = args.steps
    if args.n_samples is not None:
        kw["n_samples"] = args.n_samples
    if args.cg_iterations is not None:
        kw["cg_iterations"] = args.cg_iterations
    config = SeparateConfig(sampler=SamplerConfig(**kw))
    t0 = time.perf_counter()
    alone = separate_scene(hsc, prior, config, args.seed)
    t1 = time.perf_counter()
    joint = separate_scene(hsc, prior, config, args.seed, views=[hst])
    t2 = time.perf_counter()
    view = joint.views[0]
    a_cat, j_cat = alone.catalog, joint.catalog
    sources = []
    for ra, rj in zip(a_cat, j_cat, strict=True):
        assert int(ra["id"]) == int(rj["id"])
        sources.append(
            {
                "id": int(ra["id"]),
                "kind": str(ra["kind"]),
                "x": float(ra["x"]),
                "y": float(ra["y"]),
                "flux_alone": float(ra["flux"]),
                "flux_joint": float(rj["flux"]),
                "flux_err_alone": float(ra["flux_err"]),
                "flux_err_joint": float(rj["flux_err"]),
                "flux_err_ratio": float(rj["flux_err"]) / float(ra["flux_err"]),
            }
        )
    blends = {}
    for run, res in (("alone", alone), ("joint", joint)):
        total = res.flux_samples[..., 0]  # (N, S)
        for b in sorted(set(int(v) for v in res.catalog["blend"])):
            rows = np.asarray(res.catalog["blend"]) == b
            entry = blends.setdefault(str(b), {"sources": int(rows.sum())})
            entry[f"total_flux_{run}"] = float(total[rows].sum(0).mean())
            entry[f"total_flux_err_{run}"] = float(total[rows].sum(0).std(ddof=1))
    for entry in blends.values():
        entry["total_flux_err_ratio"] = (
            entry["total_flux_err_joint"] / entry["total_flux_err_alone"]
        )
    rmse_alone = hst_resolution_rmse(alone, hst, view.matched, calib["hst_sky"])
    rmse_joint = hst_resolution_rmse(joint, hst, view.matched, calib["hst_sky"])
    out = {
        "calibration": calib,
        "sampler": SamplerConfig(**kw).__dict__,
        "seed": args.seed,
        "sources": sources,
        "blends": blends,
        "chi2": {
            "hsc_alone": alone.chi2,
            "hsc_joint": joint.chi2,
            "hst_joint": view.chi2,
            "hst_noise_chi2": view.matched.noise_chi2,
            "hst_pixels": int(view.matched.valid.sum()),
            "matching_mismatch": float(view.matched.mismatch[0]),
        },
        "rmse_vs_hst": {"alone": rmse_alone, "joint": rmse_joint},
        "seconds": {"alone": t1 - t0, "joint": t2 - t1},
    }
    if args.figure:
        _figure(args.figure, alone, joint)
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
    return 0


def _figure(path: str, alone: Any, joint: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = joint.observation
    view = joint.views[0]
    m = view.matched
    rows = [
        ("HSC i (alone)", obs.image[0], alone.model[0], alone.resid[0]),
        ("HSC i (joint)", obs.image[0], joint.model[0], joint.resid[0]),
        (
            "HST matched (joint)",
            np.where(m.valid[0], m.image[0], np.nan),
            view.model[0],
            view.resid[0],
        ),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(9, 9), constrained_layout=True)
    for r, (label, data, model, resid) in enumerate(rows):
        lo, hi = np.nanpercentile(data, [1, 99.5])
        for c, (img, title) in enumerate(((data, "data"), (model, "model"))):
            axes[r, c].imshow(img, origin="lower", vmin=lo, vmax=hi, cmap="gray_r")
            axes[r, c].set_title(f"{label}: {title}", fontsize=9)
        im = axes[r, 2].imshow(resid, origin="lower", vmin=-5, vmax=5, cmap="RdBu_r")
        axes[r, 2].set_title(f"{label}: (data - model) / sigma", fontsize=9)
        fig.colorbar(im, ax=axes[r, 2], shrink=0.7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    raise SystemExit(main())

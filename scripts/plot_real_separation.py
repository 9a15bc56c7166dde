"""Separate the real HSC cutouts of sample_fits/ with the built-in prior and draw the result.

    python scripts/plot_real_separation.py [--prior default] [--out
    docs/figures/real_hsc_separation.png]

For each real cutout (``hsc_cosmos35_i.fits``, ``multiview_hsc_i.fits``) the figure shows
the data, the posterior mean of the galaxy, of the sky and of the free-form components
(``galprism.freeform``; blank when the cutout has none), one posterior sample of the
galaxy, the galaxy's posterior standard deviation, the model of the data and the
residuals in noise units, and prints one JSON line per cutout with two reduced chi^2
over unmasked pixels: ``reduced_chi2_samples``, the posterior-predictive check (header
``CHI2``: each sample's predicted data against the data, averaged over samples; 1 for a
calibrated fit) and ``reduced_chi2``, that of the mean model (``CHI2MOD``, the mean of
``RESID**2``, lower by the parameters the data pin down). Uses galprism's library calls
only (the same as ``galprism separate`` with its defaults and seed 0, or ``--steps``/
``--cg-iterations``/``--sampler``/``--seed``/``--no-freeform``/``--freeform-residual``).

``multiview_hsc_i.fits`` is a renormalised cube without a zero point. As in ``galprism
evaluate`` (docs/evaluation.md, "Real data"), its zero point is taken to be the one that
gives its noise the simulations' level, ``27 + 2.5 log10(sigma_cutout / sigma_sim)``
(``--no-noise-matched-zeropoint``: assume the prior's zero point 27 instead, which makes
its galaxies 9 times fainter, relative to the noise, than anything the prior knows).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
from astropy.io import fits
from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from galprism.diffusion import SamplerConfig  # noqa: E402
from galprism.freeform import FreeformConfig  # noqa: E402
from galprism.io.flux import noise_matched_zeropoint  # noqa: E402
from galprism.io.read import ReadOptions  # noqa: E402
from galprism.priorset import load_priorset  # noqa: E402
from galprism.separate import SeparateConfig, run_separate  # noqa: E402
from galprism.simulate.noise import hsc_i_sigma  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CUTOUTS = ["sample_fits/hsc_cosmos35_i.fits", "sample_fits/multiview_hsc_i.fits"]
NO_ZEROPOINT = {"sample_fits/multiview_hsc_i.fits"}
# Both cutouts are larger than the prior's 48x48 grid, and separate models a larger image
# only around an explicit center: (x, y), 0-based pixels, the whole pixel at (or just
# past) each image's center.
CENTERS = {
    "sample_fits/hsc_cosmos35_i.fits": (24.0, 29.0),
    "sample_fits/multiview_hsc_i.fits": (25.0, 25.0),
}


def cutout_zeropoint(path: Path, prior_zeropoint: float = 27.0) -> float:
    """The zero point giving the cutout's median noise the simulations' level (as evaluate)."""
    with fits.open(path) as h:
        sigma = math.sqrt(float(np.median(h["VARIANCE"].data)))
    return noise_matched_zeropoint(sigma, hsc_i_sigma(), prior_zeropoint)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="default")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps [separate's default]")
    ap.add_argument(
        "--cg-iterations", type=int, default=None, help="CG iterations [separate's default]"
    )
    ap.add_argument("--sampler", default=None, help="posterior sampler [separate's default]")
    ap.add_argument("--seed", type=int, default=0, help="run seed [0]")
    ap.add_argument(
        "--no-freeform", action="store_true", help="no free-form components (galprism.freeform)"
    )
    ap.add_argument(
        "--freeform-residual", type=float, default=None, help="residual boxes above this S/N [none]"
    )
    ap.add_argument("--no-noise-matched-zeropoint", action="store_true")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "figures" / "real_hsc_separation.png"
    )
    args = ap.parse_args()
    prior = load_priorset(args.prior)
    cols = [
        "data",
        "galaxy mean",
        "sky mean",
        "free-form mean",
        "galaxy sample",
        "galaxy std",
        "model",
        "residual / sigma",
    ]
    fig, axes = plt.subplots(
        len(CUTOUTS), len(cols), figsize=(2.1 * len(cols), 2.4 * len(CUTOUTS)), squeeze=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        for row, name in enumerate(CUTOUTS):
            out = Path(tmp) / (Path(name).stem + ".galprism.fits")
            options = {
                k: v
                for k, v in (
                    ("steps", args.steps),
                    ("cg_iterations", args.cg_iterations),
                    ("method", args.sampler),
                )
                if v is not None
            }
            options["seed"] = args.seed
            if args.no_freeform:
                options["freeform"] = FreeformConfig(bright=None, edge=None)
            elif args.freeform_residual is not None:
                options["freeform"] = FreeformConfig(residual=args.freeform_residual)
            zp = None
            if name in NO_ZEROPOINT and not args.no_noise_matched_zeropoint:
                zp = cutout_zeropoint(ROOT / name)
            read = ReadOptions(zeropoint=zp)
            summary = run_separate(
                [str(ROOT / name)],
                prior,
                SeparateConfig(
                    output=out,
                    read=read,
                    center=CENTERS[name],
                    seed=options["seed"],
                    sampler=SamplerConfig(
                        **{k: v for k, v in options.items() if k not in ("seed", "freeform")}
                    ),
                    **({"freeform": options["freeform"]} if "freeform" in options else {}),
                ),
            )
            if summary.exit_code != 0:
                raise SystemExit(f"{name}: separation failed")
            with fits.open(out) as h:
                resid = h["RESID"].data
                model = h["MODEL"].data
                gal, sky = h["GALAXY_MEAN"].data, h["SKY_MEAN"].data
                sample, std = h["GALAXY"].data[0], h["GALAXY_STD"].data
                x0, y0 = int(h[0].header["CROPX0"]), int(h[0].header["CROPY0"])
                boxes = int(h[0].header["FFBOXES"])
                free = h["FREEFORM_MEAN"].data if "FREEFORM_MEAN" in h else np.zeros_like(gal)
                chi2_samples = float(h[0].header["CHI2"])
            with fits.open(ROOT / name) as src:
                image = src["SCI"].data.astype(float)
            ok = np.isfinite(resid)  # RESID is NaN at masked pixels (RESIDDEF)
            chi2 = float(np.mean(resid[ok] ** 2))
            print(
                json.dumps(
                    {
                        "input": name,
                        "prior": prior.name,
                        "reduced_chi2": round(chi2, 2),
                        "reduced_chi2_samples": round(chi2_samples, 2),
                        "pixels": int(ok.sum()),
                        "zeropoint_assumed": None if zp is None else round(zp, 3),
                        "freeform_boxes": boxes,
                        **{k: v for k, v in options.items() if k != "freeform"},
                        "freeform": not args.no_freeform,
                        "freeform_residual": args.freeform_residual,
                    }
                )
            )
            # The outputs are on the crop's grid (CROPX0/CROPY0: its origin in the input,
            # negative where it was padded); show the same crop of the input.
            ny, nx = model.shape[-2:]
            data = np.full((ny, nx), np.nan)
            ys = slice(max(y0, 0), min(y0 + ny, image.shape[0]))
            xs = slice(max(x0, 0), min(x0 + nx, image.shape[1]))
            data[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = image[ys, xs]
            norm = ImageNormalize(
                data[np.isfinite(data)],
                interval=PercentileInterval(99.5),
                stretch=AsinhStretch(0.02),
            )
            panels = [data, gal, sky, free, sample, std, model, resid]
            for col, (title, img) in enumerate(zip(cols, panels, strict=True)):
                ax = axes[row][col]
                if title.startswith("residual"):
                    ax.imshow(np.squeeze(img), origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
                elif title == "galaxy std":
                    ax.imshow(np.squeeze(img), origin="lower", cmap="magma")
                else:
                    ax.imshow(np.squeeze(img), origin="lower", cmap="magma", norm=norm)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(title, fontsize=9)
            axes[row][0].set_ylabel(
                f"{Path(name).stem}\nCHI2 {chi2_samples:.2f} (MODEL {chi2:.2f})", fontsize=8
            )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(json.dumps({"figure": str(args.out)}))


if __name__ == "__main__":
    main()

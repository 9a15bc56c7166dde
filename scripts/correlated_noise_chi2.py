"""What correlated noise alone does to the posterior-predictive chi^2: the same simulated
cutouts with their white noise, and with it replaced by correlated noise of the same
variance.

    python scripts/correlated_noise_chi2.py SIM_DIR [-n 24] [--rho-kernel 0.1]
        [--sampler pc --steps 64 --cg-iterations 3] [--freeform-residual 5] [--json]

``SIM_DIR`` is a ``galprism simulate --view galaxies`` folder (its ``truth/`` files hold
``TRUE_NOISE``, the noise that was added). For each of the first ``-n`` cutouts the
script writes two copies into a temporary folder, under the cutout's own file name (so
both copies get the same seed): ``white``, the cutout as simulated, and ``correlated``,
``SCI - TRUE_NOISE + n_c`` with ``n_c`` white noise of the cutout's sigma convolved with
the separable kernel ``[e, 1, e] x [e, 1, e]`` normalised to unit sum of squares (pixel
variance unchanged, so ``VARIANCE`` stays exact; ``e = 0.1`` gives a neighbour
correlation of 0.2, that of the real HSC coadd cutouts of ``sample_fits/`` by
``scripts/noise_check.py``). It separates both sets with ``galprism separate``'s library
call and prints the median ``CHI2`` and ``CHI2MOD`` of each.

Only the noise's correlation differs between the two sets, and the model of both is
right (the cutouts were simulated as the built-in prior was trained), so the difference
of the two medians is what pixel-to-pixel noise correlation, which the likelihood
treats as white, does to the check.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage

from galprism.diffusion import SamplerConfig
from galprism.freeform import FreeformConfig
from galprism.priorset import load_priorset
from galprism.separate import SeparateConfig, run_separate


def correlation_kernel(e: float) -> np.ndarray:
    """The separable 3x3 kernel ``[e, 1, e]`` outer itself, with unit sum of squares."""
    k1 = np.array([e, 1.0, e])
    k = np.outer(k1, k1)
    return k / np.sqrt((k**2).sum())


def write_copies(
    sim_dir: Path, n: int, e: float, out: Path, seed: int
) -> tuple[list[Path], list[Path]]:
    """The white and correlated copies of the first ``n`` cutouts of ``sim_dir``."""
    files = sorted(p for p in sim_dir.glob("*.fits"))[:n]
    if len(files) < n:
        raise SystemExit(f"{sim_dir}: {len(files)} cutouts, {n} asked")
    kernel = correlation_kernel(e)
    rng = np.random.default_rng(seed)
    white, corr = out / "white", out / "correlated"
    white.mkdir()
    corr.mkdir()
    for f in files:
        noise = fits.getdata(
            sim_dir / "truth" / f.name.replace(".fits", ".truth.fits"), "TRUE_NOISE"
        )
        with fits.open(f) as h:
            h.writeto(white / f.name)
            sigma = float(np.sqrt(np.median(h["VARIANCE"].data)))
            n_c = ndimage.convolve(rng.standard_normal(noise.shape), kernel, mode="wrap") * sigma
            h["SCI"].data = (h["SCI"].data - noise + n_c).astype(np.float32)
            h.writeto(corr / f.name)
    return sorted(white.iterdir()), sorted(corr.iterdir())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sim_dir", type=Path)
    ap.add_argument("-n", type=int, default=24)
    ap.add_argument("--rho-kernel", type=float, default=0.1, help="kernel side weight e [0.1]")
    ap.add_argument("--noise-seed", type=int, default=123)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cg-iterations", type=int, default=None)
    ap.add_argument("--freeform-residual", type=float, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    prior = load_priorset(args.prior)
    options = {
        k: v
        for k, v in (
            ("steps", args.steps),
            ("cg_iterations", args.cg_iterations),
            ("method", args.sampler),
        )
        if v is not None
    }
    if args.freeform_residual is not None:
        options["freeform"] = FreeformConfig(residual=args.freeform_residual)
    report: dict[str, object] = {"cutouts": args.n, "kernel_e": args.rho_kernel, **options}
    if "freeform" in options:
        report["freeform"] = f"residual={args.freeform_residual}"
    with tempfile.TemporaryDirectory() as tmp:
        sets = write_copies(args.sim_dir, args.n, args.rho_kernel, Path(tmp), args.noise_seed)
        z = ndimage.convolve(
            np.random.default_rng(0).standard_normal((512, 512)),
            correlation_kernel(args.rho_kernel),
            mode="wrap",
        )
        report["noise_rho_x"] = round(
            float(np.corrcoef(z[:, 1:].ravel(), z[:, :-1].ravel())[0, 1]), 3
        )
        for name, files in zip(("white", "correlated"), sets, strict=True):
            out = Path(tmp) / f"out_{name}"
            out.mkdir()
            summary = run_separate(
                [str(f) for f in files],
                prior,
                SeparateConfig(
                    output_dir=out,
                    sampler=SamplerConfig(**{k: v for k, v in options.items() if k != "freeform"}),
                    **({"freeform": options["freeform"]} if "freeform" in options else {}),
                ),
            )
            if summary.exit_code != 0:
                raise SystemExit(f"{name}: separation failed")
            chi2, chi2mod = [], []
            for f in sorted(out.glob("*.galprism.fits")):
                hd = fits.getheader(f)
                chi2.append(float(hd["CHI2"]))
                chi2mod.append(float(hd["CHI2MOD"]))
            report[name] = {
                "chi2_median": round(float(np.median(chi2)), 3),
                "chi2_p05_p95": [round(float(v), 3) for v in np.percentile(chi2, [5, 95])],
                "chi2mod_median": round(float(np.median(chi2mod)), 3),
                "chi2": [round(v, 3) for v in chi2],
            }
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Adversarial SVD on grassy digits: SVD vs ASVD separation quality, and speed.

Quality: clean = grass crops (grass-only view), mixtures = grass + amplitude x digit
(mixed view), both with noise sigma 0.01, from the *train* split; tau is chosen on the
*validation* split (its digits and grass rows are disjoint from both others) and the
reported PSNR is measured on the *test* split. For each rank pair ``d0 x d1``:

* ``svd_psnr``: tau = 0 (plain SVD clean basis);
* ``asvd_psnr`` at ``tau``: the tau of the grid with the best validation PSNR;
* ``auto_psnr`` at ``auto_tau``: ``fit_asvd(tau="auto")``, which sees no digit truth.

PSNR per separated source and test mixture is ``10 log10(1 / MSE)`` (valid range [0, 1]),
averaged over both sources and all test mixtures; the digit's truth is the digit as it
appears in the mixture (``amplitude x digit``).

Speed: fitting on 10,000 clean cutouts + 10,000 mixtures of 64x64 pixels with fixed tau,
and separating 10,000 such cutouts (no operator; also through a shared PSF +
2x-downsampling operator). The 1-minute load average is recorded next to the timings
because the machine is shared.

Usage::

    python benchmarks/asvd.py --json                      # full run (a few minutes)
    python benchmarks/asvd.py --json --quick              # small sizes, smoke test
    python benchmarks/asvd.py --json --plot docs/figures  # also write the PNGs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from paper.grassy import GrassyView, grassy_view

from galprism import __version__
from galprism.asvd import (
    SecondMoment,
    adversarial_basis,
    fit_asvd,
    fit_unseen_basis,
    separate_with_bases,
)
from galprism.asvd.separate import pseudo_inverse
from galprism.operators import Composition, Convolve, Downsample

RANKS = ((16, 8), (128, 64))
TALK = {
    "16x8": {"svd_psnr": 21.55, "asvd_psnr": 24.00},
    "128x64": {"svd_psnr": 15.41, "asvd_psnr": 25.04},
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-source PSNR ``(B, K)`` for images in [0, 1]."""
    mse = ((estimate.double() - truth.double()) ** 2).flatten(2).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-20))


def truth_of(view: GrassyView) -> torch.Tensor:
    return view.sources_in_mixture  # (B, 2, 1, S, S)


def evaluate_curve(
    moment_u: SecondMoment,
    moment_v: SecondMoment,
    d0: int,
    d1: int,
    taus: list[float],
    val: GrassyView,
    test: GrassyView,
    shape: tuple[int, ...],
) -> list[dict[str, float]]:
    """Validation and test PSNR for every tau, sharing the second moments."""
    rows = []
    for tau in taus:
        w0 = adversarial_basis(moment_u, moment_v, d0, tau).vectors
        w1 = fit_unseen_basis(w0, moment_v, d1, init="deflated").basis
        pinv = pseudo_inverse([w0, w1])
        row = {"tau": tau}
        for name, view in (("val", val), ("test", test)):
            est = separate_with_bases(view.y, [w0, w1], shape, pinv=pinv)
            p = psnr(est, truth_of(view))
            row[f"{name}_psnr"] = float(p.mean())
        rows.append(row)
        log(f"  tau={tau:.2f}  val {row['val_psnr']:.2f} dB  test {row['test_psnr']:.2f} dB")
    return rows


def quality(args: argparse.Namespace) -> dict[str, Any]:
    common = {
        "size": args.size,
        "amplitude": args.amplitude,
        "noise_sigma": args.noise,
        "seed": args.seed,
    }
    clean = grassy_view("grass", args.n_train, split="train", **common)
    mixed = grassy_view("mixed", args.n_train, split="train", **common)
    val = grassy_view("mixed", args.n_val, split="val", **common)
    test = grassy_view("mixed", args.n_test, split="test", **common)
    shape = (1, args.size, args.size)
    moment_u = SecondMoment(clean.y.reshape(len(clean), -1))
    moment_v = SecondMoment(mixed.y.reshape(len(mixed), -1))
    taus = [round(0.05 * i, 2) for i in range(21)]
    half = psnr(torch.stack([test.y, test.y], dim=1) / 2, truth_of(test))
    out: dict[str, Any] = {"half_split_psnr": float(half.mean())}
    for d0, d1 in RANKS:
        key = f"{d0}x{d1}"
        log(f"ranks {key}: tau curve")
        curve = evaluate_curve(moment_u, moment_v, d0, d1, taus, val, test, shape)
        best = max(curve, key=lambda r: (r["val_psnr"], -r["tau"]))
        entry: dict[str, Any] = {}
        for label, tau in (("svd", 0.0), ("asvd", best["tau"])):
            model = fit_asvd(
                clean.y, mixed.y, d0, d1, tau, sources=("grass", "digit"), seed=args.seed
            )
            p = psnr(model.separate(test.y), truth_of(test))
            entry[f"{label}_psnr"] = float(p.mean())
            entry[f"{label}_psnr_grass"] = float(p[:, 0].mean())
            entry[f"{label}_psnr_digit"] = float(p[:, 1].mean())
        entry["tau"] = best["tau"]
        # Upper bound of any separation with this clean basis: the true test grass
        # projected onto the tau = 0 (SVD) basis of rank d0.
        w_svd = adversarial_basis(moment_u, moment_v, d0, 0.0).vectors.to(torch.float32)
        grass = truth_of(test)[:, :1].reshape(len(test), -1)
        projected = (grass @ w_svd) @ w_svd.T
        entry["grass_in_svd_basis_psnr"] = float(
            psnr(projected.reshape(len(test), 1, -1), grass.reshape(len(test), 1, -1)).mean()
        )
        t0 = time.perf_counter()
        auto = fit_asvd(
            clean.y, mixed.y, d0, d1, "auto", sources=("grass", "digit"), seed=args.seed
        )
        entry["auto_fit_seconds"] = time.perf_counter() - t0
        entry["auto_tau"] = auto.tau
        entry["auto_psnr"] = float(psnr(auto.separate(test.y), truth_of(test)).mean())
        entry["auto_curve"] = auto.info["tau_selection"]["curve"]
        entry["curve"] = curve
        entry["asvd_beats_svd"] = entry["asvd_psnr"] > entry["svd_psnr"]
        out[key] = entry
        log(
            f"ranks {key}: SVD {entry['svd_psnr']:.2f} dB, ASVD {entry['asvd_psnr']:.2f} dB at "
            f"tau={entry['tau']}, "
            f"auto {entry['auto_psnr']:.2f} dB at tau={entry['auto_tau']}"
        )
    small, large = out["16x8"], out["128x64"]
    out["claims"] = {
        "asvd_beats_svd_at_both_ranks": bool(small["asvd_beats_svd"] and large["asvd_beats_svd"]),
        "svd_worse_at_larger_rank": bool(large["svd_psnr"] < small["svd_psnr"]),
        "asvd_not_worse_at_larger_rank": bool(large["asvd_psnr"] >= small["asvd_psnr"]),
    }
    out["_views"] = (test, shape)
    return out


def speed(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n_speed
    log(f"speed: drawing {n} clean + {n} mixtures of 64x64")
    clean = grassy_view(
        "grass", n, split="train", size=64, amplitude=args.amplitude, seed=args.seed
    )
    mixed = grassy_view(
        "mixed", n, split="train", size=64, amplitude=args.amplitude, seed=args.seed + 1
    )
    out: dict[str, Any] = {"n_clean": n, "n_mixed": n, "shape": [1, 64, 64], "tau": 0.2}
    psf = torch.tensor(np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]), dtype=torch.float32)
    operator = Composition([Downsample(2, (1, 64, 64)), Convolve(psf, (1, 64, 64))])
    observed = operator.apply(mixed.y[: min(n, 2000)])
    for d0, d1 in RANKS:
        key = f"{d0}x{d1}"
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        model = fit_asvd(clean.y, mixed.y, d0, d1, 0.2, seed=args.seed)
        fit_s = time.perf_counter() - t0
        model.separate(mixed.y[:16])  # warm-up (pseudo-inverse cached)
        t0 = time.perf_counter()
        model.separate(mixed.y)
        sep_rate = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.separate(observed, operator=operator)
        op_rate = observed.shape[0] / (time.perf_counter() - t0)
        out[key] = {
            "fit_seconds": fit_s,
            "separate_per_second": sep_rate,
            "separate_per_second_psf_downsample": op_rate,
            "eigensolver": model.info["eigensolver"],
            "loadavg_1min_at_start": load,
        }
        log(
            f"speed {key}: fit {fit_s:.1f} s, separate {sep_rate:.0f}/s, through PSF+2x "
            f"{op_rate:.0f}/s (load {load:.1f})"
        )
    return out


def plot(
    result: dict[str, Any],
    folder: Path,
    views: tuple[GrassyView, tuple[int, ...]],
    args: argparse.Namespace,
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, color in (("16x8", "tab:blue"), ("128x64", "tab:red")):
        entry = result["quality"][key]
        taus = [r["tau"] for r in entry["curve"]]
        axes[0].plot(
            taus,
            [r["test_psnr"] for r in entry["curve"]],
            "-o",
            ms=3,
            color=color,
            label=f"{key} test",
        )
        axes[0].plot(
            taus,
            [r["val_psnr"] for r in entry["curve"]],
            "--",
            color=color,
            alpha=0.6,
            label=f"{key} validation",
        )
        axes[0].axvline(entry["tau"], color=color, lw=0.8, ls=":")
        auto = entry["auto_curve"]
        axes[1].plot(
            [r["tau"] for r in auto], [r["score"] for r in auto], "-o", ms=3, color=color, label=key
        )
        axes[1].axvline(entry["auto_tau"], color=color, lw=0.8, ls=":")
    axes[0].axhline(
        result["quality"]["half_split_psnr"], color="grey", lw=0.8, label="half/half split"
    )
    axes[0].set(
        xlabel="tau", ylabel="mean PSNR of both sources [dB]", title="Separation quality vs tau"
    )
    axes[0].legend(fontsize=7)
    axes[1].set(
        xlabel="tau", ylabel="held-out moment mismatch", title="tau='auto' score (no digit truth)"
    )
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = folder / "asvd_tau_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(str(path))

    test, shape = views
    clean = grassy_view(
        "grass",
        args.n_train,
        split="train",
        size=args.size,
        amplitude=args.amplitude,
        noise_sigma=args.noise,
        seed=args.seed,
    )
    mixed = grassy_view(
        "mixed",
        args.n_train,
        split="train",
        size=args.size,
        amplitude=args.amplitude,
        noise_sigma=args.noise,
        seed=args.seed,
    )
    key = "128x64"
    models = {
        "SVD": fit_asvd(clean.y, mixed.y, 128, 64, 0.0),
        f"ASVD tau={result['quality'][key]['tau']}": fit_asvd(
            clean.y, mixed.y, 128, 64, result["quality"][key]["tau"]
        ),
    }
    n_show = 6
    truth = truth_of(test)[:n_show, :, 0]
    rows = [
        ("mixture", test.y[:n_show, 0]),
        ("true grass", truth[:, 0]),
        ("true digit", truth[:, 1]),
    ]
    for name, model in models.items():
        est = model.separate(test.y[:n_show])[:, :, 0]
        rows += [(f"{name} grass", est[:, 0]), (f"{name} digit", est[:, 1])]
    fig, axes = plt.subplots(len(rows), n_show, figsize=(1.3 * n_show, 1.35 * len(rows)))
    for r, (label, images) in enumerate(rows):
        for c in range(n_show):
            axes[r, c].imshow(images[c].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=6)
    fig.suptitle(f"Test mixtures, ranks {key}", fontsize=8)
    fig.tight_layout()
    path = folder / "asvd_examples.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test, < 1 minute)")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="folder for asvd_tau_curve.png and asvd_examples.png",
    )
    parser.add_argument(
        "--amplitude", type=float, default=1.0, help="digit amplitude in the mixture (default 1)"
    )
    parser.add_argument("--noise", type=float, default=0.01, help="noise sigma (default 0.01)")
    parser.add_argument(
        "--size", type=int, default=28, help="crop size of the quality run (default 28)"
    )
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-speed", type=int, default=10000)
    parser.add_argument(
        "--part", choices=("all", "quality", "speed"), default="all", help="run only one part"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.plot is not None and args.part == "speed":
        parser.error("--plot needs the quality part")
    if args.quick:
        args.n_train, args.n_val, args.n_test, args.n_speed = 1500, 300, 300, 2000
    start = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "asvd",
        "galprism_version": __version__,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        # scipy's BLAS (the second moments) reads these when it loads; --threads cannot
        # change it afterwards, so set them on the command line for single-thread runs.
        "blas_env": {
            k: os.environ.get(k)
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        },
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "quick": bool(args.quick),
        "data": {
            "set": "grassy digits (mnist_5k + grass.png)",
            "size": args.size,
            "amplitude": args.amplitude,
            "noise_sigma": args.noise,
            "n_train_clean": args.n_train,
            "n_train_mixed": args.n_train,
            "n_val": args.n_val,
            "n_test": args.n_test,
            "seed": args.seed,
        },
        "talk_numbers": TALK,
    }
    views = None
    if args.part in ("all", "quality"):
        q = quality(args)
        views = q.pop("_views")
        result["quality"] = q
        result["ranks"] = {
            key: {k: q[key][k] for k in ("svd_psnr", "asvd_psnr", "tau", "auto_tau", "auto_psnr")}
            for key in ("16x8", "128x64")
        }
        result["claims"] = q["claims"]
    if args.part in ("all", "speed"):
        s = speed(args)
        result["speed"] = s
        result["fit_seconds_10k_64x64"] = max(s[f"{a}x{b}"]["fit_seconds"] for a, b in RANKS)
        result["separate_per_second"] = min(s[f"{a}x{b}"]["separate_per_second"] for a, b in RANKS)
        if args.n_speed != 10000:
            result["fit_seconds_note"] = f"measured on {args.n_speed} cutouts, not 10,000"
    if args.plot is not None and views is not None:
        result["figures"] = plot(result, args.plot, views, args)
    result["wall_seconds"] = time.perf_counter() - start
    result["loadavg_1min_at_end"] = os.getloadavg()[0]
    text = json.dumps(result, indent=None if args.json else 2, allow_nan=False, default=float)
    if not math.isfinite(result["wall_seconds"]):
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

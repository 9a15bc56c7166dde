"""EM on grassy digits (docs/method.md section 6): digit posterior PSNR against PCPCA.

Learns a grass prior from the grass-only view and then a digit prior from the grass +
0.5 x digit view with the grass frozen (stage-wise EM, :func:`galprism.em.run_em`: Gaussian
warm start then diffusion laps, U-Net priors on 28x28 images), all from noisy observations
(noise 0.01) of the training split. On the test split (digits and grass rows never seen in
training) it draws posterior samples of the mixed view and reports the digit's per-image
PSNR (peak 1, ``20 log10(1 / RMSE)``) of one posterior sample and of the mean of
``--n-samples`` samples, next to PCPCA fitted on the same training observations (its
``(n_components, gamma)`` chosen on the validation split, as ``benchmarks/pcpca_grassy.py``
does) and the EM run's own Gaussian (PPCA) warm start. Prints ONE JSON object with
``--json``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/grassy_em.py --json
    OMP_NUM_THREADS=1 python benchmarks/grassy_em.py --downsample 2 --json

Run with ``OMP_NUM_THREADS=1``; the script calls ``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def digit_scores(
    priors, view, n_samples: int, sampler, cg: int, seed: int, batch: int = 50
) -> dict[str, float]:
    """Digit PSNR of one posterior sample and of the posterior mean on a mixed view."""
    from galprism.em import View
    from galprism.metrics import mean_psnr
    from galprism.sampling import sample_posterior

    v = View.from_source_sum("mixed", ["grass", "digit"], view.y, view.noise_var, view.operator)
    gen = torch.Generator().manual_seed(seed)
    xs = []
    for start in range(0, len(view), batch):
        sl = slice(start, start + batch)
        xs.append(
            sample_posterior(
                list(priors),
                v.operator,
                v.y[sl],
                v.noise_var[sl],
                replace(sampler, n_samples=n_samples, cg_iterations=cg, trust=4.0),
                generators=gen,
            )[:, :, 1]
        )
    digit = torch.cat(xs).double().numpy().reshape(len(view), n_samples, -1)
    truth = view.x[:, 1].reshape(len(view), -1).double().numpy()
    return {
        "psnr_posterior_sample": round(mean_psnr(truth, digit[:, 0], 1.0), 3),
        "psnr_posterior_mean": round(mean_psnr(truth, digit.mean(1), 1.0), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=4096, help="observations per training view")
    parser.add_argument(
        "--n-eval", type=int, default=500, help="test (and validation) mixed observations"
    )
    parser.add_argument("--downsample", type=int, default=1, choices=(1, 2, 4))
    parser.add_argument("--gaussian-laps", type=int, default=2)
    parser.add_argument("--diffusion-laps", type=int, default=4)
    parser.add_argument("--estep", type=int, default=1024, help="E-step observations per lap")
    parser.add_argument("--train-steps", type=int, default=800)
    parser.add_argument(
        "--steps", type=int, default=16, help="sampler steps (E-step and evaluation)"
    )
    parser.add_argument("--cg", type=int, default=1, help="CG iterations")
    parser.add_argument(
        "--n-samples", type=int, default=4, help="posterior samples per test observation"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--run-dir", default=None, help="keep the EM run folder here (default: temporary)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from paper.grassy import grassy_problem, grassy_view
    from paper.pcpca import PCPCA
    from pcpca_grassy import evaluate as pcpca_scores
    from pcpca_grassy import flat

    from galprism.diffusion import SamplerConfig
    from galprism.em import EMConfig, View, run_em
    from galprism.em.config import ESTEP_SAMPLER

    t0 = time.perf_counter()
    kw = dict(downsample=args.downsample)
    train = grassy_problem(args.n_train, args.n_train, split="train", seed=args.seed, **kw)
    val = grassy_view("mixed", args.n_eval, split="val", seed=args.seed + 1, **kw)
    test = grassy_view("mixed", args.n_eval, split="test", seed=args.seed + 2, **kw)
    names = ["grass", "digit"]
    views = [
        View.from_source_sum(v.name, names, v.y, v.noise_var, v.operator)
        for v in (train["grass"], train["mixed"])
    ]
    config = EMConfig(
        sources=names,
        shape=[1, 28, 28],
        arrangement="stagewise",
        seed=args.seed,
        gaussian_laps=args.gaussian_laps,
        diffusion_laps=args.diffusion_laps,
        gaussian_rank=32,
        estep_observations=args.estep,
        estep_batch=64,
        sampler=replace(ESTEP_SAMPLER, method="ddim", steps=args.steps, cg_iterations=args.cg),
        train_steps=args.train_steps,
        train_batch=32,
        lr=1e-3,
        ema_decay=0.995,
        backbone="unet",
        backbone_kwargs={"widths": [16, 32, 32], "attention_levels": []},
        sigma_min=1e-3,
        sigma_max=10.0,
        initial_variance="auto",
        grid_samples=16,
        grid_steps=16,
        keep_checkpoints=2,
    )
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="galprism-grassy-")
    t_em = time.perf_counter()
    result = run_em(views, config, run_dir, progress=None if not args.json else False)
    em_seconds = time.perf_counter() - t_em

    sampler = SamplerConfig("ddim", args.steps)
    t_eval = time.perf_counter()
    learned = digit_scores(
        result.priors.priors, test, args.n_samples, sampler, args.cg, args.seed + 5
    )
    gaussian = digit_scores(
        result.gaussian_priors.priors, test, args.n_samples, sampler, args.cg, args.seed + 5
    )
    eval_seconds = time.perf_counter() - t_eval

    target, background = flat(train["mixed"].y), flat(train["grass"].y)
    grid = []
    for k in (8, 32, 64):
        for gamma in (0.0, 0.5, 0.9, 0.99):
            try:
                model = PCPCA(k, gamma).fit(target, background)
            except Exception as exc:  # a degenerate setting is reported, not fatal
                grid.append({"n_components": k, "gamma": gamma, "error": str(exc)})
                continue
            grid.append(
                {"n_components": k, "gamma": gamma, **pcpca_scores(model, val, args.seed + 3)}
            )
    best = max((r for r in grid if "error" not in r), key=lambda r: r["psnr_posterior_sample"])
    pcpca = pcpca_scores(
        PCPCA(best["n_components"], best["gamma"]).fit(target, background), test, args.seed + 4
    )
    out = {
        "benchmark": "grassy_em",
        "test": {"ddprism": learned, "gaussian_warm_start": gaussian, "pcpca": pcpca},
        "pcpca_selected_on_val": {"n_components": best["n_components"], "gamma": best["gamma"]},
        "paper": {"ddprism_psnr": 25.60 if args.downsample == 1 else 19.73, "pcpca_psnr": 18.99},
        "em_laps": len(result.history),
        "history": [
            {k: h[k] for k in ("lap", "phase", "learning", "loss", "chi2", "seconds")}
            for h in result.history
        ],
        "settings": {
            **vars(args),
            "amplitude": test.amplitude,
            "noise_sigma": float(test.noise_var) ** 0.5,
            "em": {k: v for k, v in config.to_dict().items() if k != "metadata"},
        },
        "seconds": {
            "em": round(em_seconds, 1),
            "eval": round(eval_seconds, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "run_dir": run_dir,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Is the truth a fixed point of our EM? The E-step sampler's bias, measured on the 1-D manifold problem.

Exact EM leaves the true prior where it is: if every source's prior is the truth, the
posterior samples of all observations are distributed as the truth, and training on them
changes nothing. An E-step whose samples are biased instead moves the prior a little each
lap, and on the contrastive manifold problem (3 observed values for 10 unknowns) EM's pull
back towards the truth is weak, so the error adds up from lap to lap.

This script isolates the E-step of the second stage of the 2-source contrastive problem
(``benchmarks/manifold.py --sources 2``): source 1 is frozen at an *oracle* prior (trained on
true draws, as ``manifold.py --oracle``), and source 2 is learned by EM laps on the
crowded view exactly as :func:`galprism.em.run_em` does them (E-step by
:func:`galprism.em.estep.posterior_samples` with its chi^2 check, M-step continuing one
:class:`~galprism.diffusion.training.Trainer` on the samples). It starts either

* ``--start oracle``: source 2 at its oracle prior too (the fixed-point test), or
* ``--start gaussian``: source 2 at a network trained on draws of a Gaussian with the true
  source's mean and covariance (the best a Gaussian warm start could give), or
* ``--start RUN_DIR:LAP``: source 2 at the prior of a kept ``manifold.py --sources 2
  --run-dir`` run's lap checkpoint (to continue a run's crowded-view laps with other
  E-step or M-step settings).

After every lap it prints the learned prior's debiased W2 against fresh truth (prior drawn
with 64 PC steps), the median distance of the same prior samples to the true curve, and
the E-step samples' PSNR, chi^2 and median distance to the curves. One JSON object with ``--json``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/em_fixed_point.py --start oracle --laps 6 --steps 64 --json
    OMP_NUM_THREADS=1 python benchmarks/em_fixed_point.py --start gaussian --laps 12 --steps 256 \
        --corrections 3 --estep 2048 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from manifold import curve_distance, device_info, oracle_priors, prior_samples  # noqa: E402
from manifold_thickness import run_prior  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="oracle", metavar="oracle|gaussian|RUN_DIR:LAP")
    parser.add_argument("--laps", type=int, default=6)
    parser.add_argument("--sampler", choices=("pc", "ddim", "heun"), default="pc")
    parser.add_argument("--steps", type=int, default=64, help="E-step sampler steps")
    parser.add_argument("--corrections", type=int, default=1)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--estep", type=int, default=4096, help="observations per E-step")
    parser.add_argument("--reject-chi2", type=float, default=20.0)
    parser.add_argument("--redraws", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning rate within each lap's M-step (EMConfig.lr_schedule)",
    )
    parser.add_argument(
        "--truth-mstep",
        action="store_true",
        help="M-step on the true source-2 values of the same observations (isolates the M-step)",
    )
    parser.add_argument(
        "--source1",
        type=Path,
        default=None,
        metavar="RUN_DIR:LAP",
        help="freeze source 1 at the prior of an EM run's lap checkpoint (a run of "
        "manifold.py --sources 1|2 --run-dir) instead of its oracle",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.start not in ("oracle", "gaussian") and ":" not in args.start:
        parser.error(f"--start: expected oracle, gaussian or RUN_DIR:LAP, got {args.start!r}")
    torch.set_num_threads(args.threads)

    from paper.manifold import contrastive_problem

    from galprism.diffusion import DiffusionPrior, SamplerConfig, VESchedule
    from galprism.diffusion.training import Trainer
    from galprism.em import EMConfig, View
    from galprism.em.estep import posterior_samples
    from galprism.metrics import mean_psnr

    t_start = time.perf_counter()
    problem = contrastive_problem(2, 65536, seed=args.seed)
    names = problem.source_names
    # The quick/full budgets' network and training settings (benchmarks/manifold.py).
    config = EMConfig(
        sources=names,
        shape=[5],
        seed=args.seed,
        backbone_kwargs={"hidden": 128, "blocks": 2},
        train_batch=256,
        lr=1e-3,
        ema_decay=0.99,
        time_sampling="uniform",
    )
    oracle1, oracle2 = oracle_priors(problem, config, 65536, 5000, "cpu")
    if args.source1 is not None:
        run_dir, _, lap = str(args.source1).rpartition(":")
        oracle1 = run_prior(Path(run_dir), int(lap), "source1").eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(args.seed + 5)
    truth2 = problem.sample_source(1, 2048, seed=args.seed + 7)

    net = DiffusionPrior(
        [5],
        "mlp",
        {"features": 5, **config.backbone_kwargs},
        VESchedule(config.sigma_min, config.sigma_max),
        float(oracle2.sigma_data),
    )
    if args.start == "oracle":
        net.load_state_dict(oracle2.state_dict())
    elif args.start != "gaussian":
        run_dir, _, lap = args.start.rpartition(":")
        start = run_prior(Path(run_dir), int(lap), "source2")
        net.load_state_dict(start.state_dict())
        net.sigma_data = start.sigma_data
    else:
        x = problem.sample_source(1, 65536, seed=args.seed + 2)
        gauss = torch.distributions.MultivariateNormal(x.mean(0), torch.cov(x.T))
        warm = Trainer(net, lr=config.lr, ema_decay=config.ema_decay, time_sampling="uniform")
        warm.fit(gauss.sample((65536,)), 3000, config.train_batch, generator=gen)
        net.load_state_dict(warm.snapshot().state_dict())
    trainer = Trainer(
        net,
        lr=config.lr,
        ema_decay=config.ema_decay,
        time_sampling="uniform",
        lr_schedule=args.lr_schedule,
    )
    current = trainer.snapshot()

    mview = problem.views[1]
    view = View.from_source_sum(mview.name, names, mview.y, mview.noise_var, mview.operator)
    sampler = SamplerConfig(
        args.sampler,
        args.steps,
        eta=args.eta,
        corrections=args.corrections,
        tau=0.1,
        n_samples=1,
        cg_iterations=3,
        trust=4.0,
    )
    from galprism.metrics import wasserstein_divergence

    def prior_metrics(prior: torch.nn.Module) -> dict[str, float]:
        x = prior_samples(prior, truth2.shape[0])
        return {
            "prior_w2": wasserstein_divergence(x, truth2),
            "prior_curve_distance": curve_distance(problem, 1, x)["curve_distance_median"],
        }

    laps = [{"lap": 0, **prior_metrics(current)}]
    for lap in range(1, args.laps + 1):
        t0 = time.perf_counter()
        index = torch.randperm(mview.n_obs, generator=gen)[: args.estep]
        est = posterior_samples(
            view,
            [oracle1, current],
            index,
            sampler,
            batch=args.estep,
            generator=gen,
            reject_chi2=args.reject_chi2,
            redraws=args.redraws,
        )
        keep = ~est.failed
        truth = mview.x[est.index]
        psnr = [mean_psnr(truth[keep, b], est.x[keep, b], 4.0) for b in range(2)]
        data = truth[keep, 1] if args.truth_mstep else est.x[keep, 1]
        trainer.fit(data.contiguous(), args.train_steps, config.train_batch, generator=gen)
        current = trainer.snapshot()
        laps.append(
            {
                "lap": lap,
                **prior_metrics(current),
                "estep_psnr": psnr,
                "estep_curve_distance": [
                    curve_distance(problem, b, est.x[keep, b])["curve_distance_median"]
                    for b in range(2)
                ],
                "estep_chi2_median": float(est.chi2.median()),
                "redrawn": est.redrawn,
                "left_out": int(est.failed.sum()),
                "seconds": time.perf_counter() - t0,
            }
        )
        if not args.json:
            print(json.dumps(laps[-1]), file=sys.stderr, flush=True)
    report = {
        "benchmark": "em_fixed_point",
        "start": args.start,
        "seed": args.seed,
        "settings": {
            "sampler": sampler.to_dict(),
            "estep_observations": args.estep,
            "reject_chi2": args.reject_chi2,
            "redraws": args.redraws,
            "train_steps": args.train_steps,
            "lr_schedule": args.lr_schedule,
            "truth_mstep": args.truth_mstep,
            "source1": None if args.source1 is None else str(args.source1),
            "backbone_kwargs": config.backbone_kwargs,
        },
        "laps": laps,
        "wall_seconds": time.perf_counter() - t_start,
        "device": device_info("cpu"),
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""EM on the paper's random 1-D manifold problem (docs/method.md section 6), with its metrics.

Generates the contrastive problem (``--sources 2|3``: view k holds sources 1..k) or the
mixed one (``--mixed F``: two views, each source at weight 1 in its own view and F in the
other), learns one prior per source by EM (:func:`galprism.em.run_em`: Gaussian warm start,
then diffusion laps; stage-wise for contrastive views, joint for mixed ones) and prints
ONE JSON object:

* ``posterior``: per source, the debiased Sinkhorn divergence between posterior samples
  and the truth behind the same observations, and the mean per-sample PSNR
  (``20 log10(4 / RMSE)``) of one posterior sample against the truth. Each source is
  evaluated on the view where its weight is largest (ties: the most crowded view), i.e.
  the view with every source for the contrastive problem, its own view for the mixed one.
* ``prior``: per source, the Sinkhorn divergence between prior samples and fresh truth.
* Sinkhorn values with the paper's settings (``reg=1e-3``, ``stopThr=1e-2``, 1,024
  iterations) at ``eval_n`` samples (16,384 in the paper; that test passes after one
  iteration there, see docs/metrics.md), or at ``sinkhorn_n`` of them (the quick
  3-source row, or ``--set sinkhorn_n=N``), and,
  as a converged companion, the debiased exact transport cost (``wasserstein``,
  ``ot.emd2``) at ``min(eval_n, 2048)`` samples.
* the same metrics for the Gaussian warm start (``gaussian``; without Sinkhorn in the quick
  budget, where it alone would take minutes), EM laps, wall times,
  device, the settings used and the per-lap history (chi^2 per view).

Usage::

    python benchmarks/manifold.py --sources 2 --budget quick --json
    python benchmarks/manifold.py --sources 3 --budget full --json
    python benchmarks/manifold.py --mixed 0.1 --budget quick --seed 1 --json
    python benchmarks/manifold.py --sources 2 --set sampler.cg_iterations=1 --set sampler.steps=64
    # priors from the truth:
    python benchmarks/manifold.py --sources 2 --oracle 5000 --set eval_steps=64 --json

Run with ``OMP_NUM_THREADS=1``; the script also calls ``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

#: EM settings per budget (EMConfig fields; ``sampler``: the E-step SamplerConfig's settings
#: other than EM's defaults, galprism.em.config.ESTEP_SAMPLER) and evaluation settings.
BUDGETS: dict[str, dict[str, Any]] = {
    # Aimed at 5 minutes: E-steps on 4,096-observation subsets, SMC with 4 particles
    # (docs/em.md, "The quick budget with SMC E-steps"). On both cores of a 2-core CPU with
    # --no-eval-gaussian: 2 sources 131 s, mixed 177 s, 3 sources (``rows.sources3``) 195 s.
    "quick": dict(
        n_obs=65536,
        eval_n=2048,
        eval_steps=32,
        eval_corrections=1,
        em=dict(
            gaussian_laps=4,
            diffusion_laps=4,
            gaussian_rank=5,
            estep_observations=4096,
            estep_batch=4096,
            sampler=dict(
                method="smc", particles=4, steps=16, corrections=1, cg_iterations=3, trust=4.0
            ),
            train_steps=1000,
            train_batch=256,
            lr=1e-3,
            ema_decay=0.99,
            lr_schedule="constant",
            time_sampling="uniform",
            backbone_kwargs={"hidden": 128, "blocks": 2},
            reject_chi2=0.0,
            redraws=0,
        ),
        rows={
            # The mixed problem has one joint stage of two sources: 6 laps fit in 5 minutes.
            "mixed": dict(em=dict(diffusion_laps=6)),
            # Three stages take 7 to 9 minutes with the settings above, 40 % of it in the
            # paper-setting Sinkhorn of the poorly learned source 3, whose iterations grow
            # as the fit worsens (hundreds at n = 2,048; docs/em.md).
            # Fewer laps on fewer observations and the Sinkhorn on 1,024 of the 2,048
            # evaluation samples: 195 s instead of 401 to 535 s, 0.4 to 1.6 dB less.
            "sources3": dict(
                sinkhorn_n=1024,
                em=dict(
                    gaussian_laps=2,
                    estep_observations=2048,
                    estep_batch=2048,
                    diffusion_laps=[4, 3, 3],
                ),
            ),
        },
    ),
    # docs/em.md section 3: MMPS alone samples a learned prior's modes near their prior
    # weight, which kept a broad cloud in the crowded-view source however many laps ran
    # ("The E-step's mode weights"); twisted SMC, 64 steps x 16 particles, weighs them by
    # their evidence at the cost of the earlier PC 256 x 3, and with a cosine learning rate
    # in every M-step the 2-source row reaches 41.9 / 42.6 dB after 8 / 24 diffusion laps.
    # Fewer E-step observations (2,048) pay for the dear sampler. The first stage (a source
    # seen alone) converges within ~8 diffusion laps, so the laps go to the later stages
    # (``rows``: laps per stage for each contrastive row). 20 later-stage laps keep the
    # 2-source row inside its hour on both cores (16 laps with 8 evaluation particles took
    # 41 minutes and gave 38.5 / 37.6 dB, short of the paper's 38.27). The 3-source row has
    # laps of its own (``rows``): with 8 / 20 / 20 source 3 stopped at 18.4 dB, still
    # learning; 8 / 16 / 32 gives 22.6 / 22.8 / 20.2 dB in 87 to 124 minutes, depending on
    # how much CPU the machine loses to other jobs.
    "full": dict(
        n_obs=65536,
        eval_n=16384,
        eval_steps=64,
        eval_corrections=1,
        em=dict(
            gaussian_laps=4,
            diffusion_laps=24,
            gaussian_rank=5,
            estep_observations=2048,
            estep_batch=2048,
            sampler=dict(
                method="smc", particles=16, steps=64, corrections=1, cg_iterations=3, trust=4.0
            ),
            train_steps=1000,
            train_batch=256,
            lr=1e-3,
            ema_decay=0.99,
            lr_schedule="cosine",
            time_sampling="uniform",
            backbone_kwargs={"hidden": 128, "blocks": 2},
            reject_chi2=20.0,
            redraws=2,
        ),
        # ``em.diffusion_laps`` (24) serves the mixed row and --sources 1.
        rows={
            "sources2": dict(em=dict(diffusion_laps=[8, 20])),
            "sources3": dict(em=dict(diffusion_laps=[8, 16, 32])),
        },
    ),
}


#: Settings of the evaluation (the rest of ``--set`` goes to :class:`galprism.em.EMConfig`,
#: ``sampler.NAME`` to its E-step sampler).
EVAL_SETTINGS = (
    "n_obs",
    "eval_n",
    "eval_steps",
    "eval_corrections",
    "eval_sampler",
    "eval_particles",
    "sinkhorn_n",
)


def sinkhorn_samples(settings: dict[str, Any]) -> int:
    """Number of evaluation samples the Sinkhorn divergence is taken on: ``sinkhorn_n``
    where a row or ``--set`` gives it (at most ``eval_n``, the samples there are), else
    all ``eval_n``."""
    return min(settings.get("sinkhorn_n") or settings["eval_n"], settings["eval_n"])


def em_config(fixed: dict[str, Any], settings: dict[str, Any]):
    """The :class:`galprism.em.EMConfig` of ``fixed`` (problem-given settings) and
    ``settings["em"]``, whose ``sampler`` mapping overrides EM's default E-step sampler
    (``steps``/``corrections`` may be schedules, as in a fit file's ``[em.sampler]``)."""
    from galprism.em import EMConfig
    from galprism.em.config import estep_sampler_settings
    from galprism.errors import ConfigError

    em = dict(settings["em"])
    former = EMConfig.former_key(em)
    if former is not None:
        name = "method" if former == "sampler" else former
        raise ConfigError(f"manifold: E-step sampler setting {former!r} is now sampler.{name}")
    em.update(estep_sampler_settings(em.pop("sampler", {}), "manifold: sampler"))
    return EMConfig.from_dict({**fixed, **em})


def eval_sampler(settings: dict[str, Any]):
    """The evaluation's posterior and prior sampler: ``eval_*`` settings, the rest (method,
    particles unless given, CG iterations, trust) the E-step sampler's."""
    from galprism.diffusion import SamplerConfig
    from galprism.em.config import estep_sampler_settings

    estep = estep_sampler_settings(settings["em"].get("sampler", {}), "manifold: sampler")
    estep = estep["sampler"]
    return SamplerConfig(
        settings.get("eval_sampler") or estep.method,
        settings["eval_steps"],
        corrections=settings["eval_corrections"],
        tau=0.1,
        particles=settings.get("eval_particles") or estep.particles,
        n_samples=1,
        cg_iterations=estep.cg_iterations,
        trust=estep.trust,
    )


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_problem(args: argparse.Namespace, n_obs: int):
    from paper.manifold import contrastive_problem, mixed_problem

    if args.mixed is not None:
        return mixed_problem(args.mixed, 2, n_obs, seed=args.seed)
    return contrastive_problem(args.sources, n_obs, seed=args.seed)


def eval_view(problem, b: int) -> int:
    """Index of the view source ``b`` is evaluated on (largest weight, then most crowded)."""
    ws = [v.weights[b] for v in problem.views]
    best = max(ws)
    return max(i for i, w in enumerate(ws) if w == best)


def evaluate(
    problem,
    views,
    priors: list[torch.nn.Module],
    settings: dict[str, Any],
    seed: int,
    sinkhorn: bool = True,
) -> dict[str, Any]:
    """Posterior and prior metrics of ``priors`` (one per source); ``sinkhorn=False`` skips
    the paper's Sinkhorn divergence (minutes per call for a poor model, docs/metrics.md)."""
    from galprism.metrics import mean_psnr, sinkhorn_divergence_details, wasserstein_divergence
    from galprism.sampling import sample_posterior, sample_prior

    n = settings["eval_n"]
    n_sinkhorn = sinkhorn_samples(settings)
    sampler = eval_sampler(settings)
    gen = torch.Generator().manual_seed(10_000 + seed)
    names = problem.source_names
    out: dict[str, Any] = {"posterior": {}, "prior": {}}
    cache: dict[int, torch.Tensor] = {}
    # Where the evaluation's time goes (sampling, Sinkhorn, exact W2), reported with the
    # wall times: a poorly learned source costs many more Sinkhorn iterations (docs/em.md).
    parts = {"posterior_sampling": 0.0, "prior_sampling": 0.0, "sinkhorn": 0.0, "wasserstein": 0.0}

    def timed(part: str, fn, *a, **kw):
        t = time.perf_counter()
        value = fn(*a, **kw)
        parts[part] += time.perf_counter() - t
        return value

    t0 = time.perf_counter()
    for b, name in enumerate(names):
        v = eval_view(problem, b)
        mv, view = problem.views[v], views[v]
        idx = torch.arange(min(n, mv.n_obs))
        if v not in cache:
            xs = []
            for start in range(0, idx.numel(), 4096):
                i = idx[start : start + 4096]
                op = view.operator.take(i)
                xs.append(
                    timed(
                        "posterior_sampling",
                        sample_posterior,
                        [priors[names.index(s)] for s in view.sources],
                        op,
                        view.y[i],
                        view.noise_var[i],
                        sampler,
                        generators=gen,
                    )[:, 0]
                )
            cache[v] = torch.cat(xs)
        x = cache[v][:, view.sources.index(name)]
        truth = mv.x[idx, b]
        chi2 = view.chi2_per_observation(cache[v], idx)
        sk = (
            timed("sinkhorn", sinkhorn_divergence_details, x, truth, n_samples=n_sinkhorn)
            if sinkhorn
            else None
        )
        out["posterior"][name] = {
            "view": mv.name,
            "sinkhorn": sk.divergence if sk else None,
            "sinkhorn_iterations": list(sk.iterations) if sk else None,
            "wasserstein": timed(
                "wasserstein", wasserstein_divergence, x, truth, n_samples=min(n, 2048)
            ),
            "psnr": mean_psnr(truth, x, 4.0),
            **curve_distance(problem, b, x),
            "chi2_median": float(chi2.median()),
            "chi2_over_20": float((chi2 > 20).float().mean()),
        }
    t1 = time.perf_counter()
    xp = timed("prior_sampling", sample_prior, priors, n, config=sampler, generators=gen)
    for b, name in enumerate(names):
        truth = problem.sample_source(b, n, seed=seed + 1)
        sk = (
            timed("sinkhorn", sinkhorn_divergence_details, xp[:, b], truth, n_samples=n_sinkhorn)
            if sinkhorn
            else None
        )
        out["prior"][name] = {
            "sinkhorn": sk.divergence if sk else None,
            "sinkhorn_iterations": list(sk.iterations) if sk else None,
            "wasserstein": timed(
                "wasserstein", wasserstein_divergence, xp[:, b], truth, n_samples=min(n, 2048)
            ),
            **curve_distance(problem, b, xp[:, b]),
        }
    out["seconds"] = {"posterior": t1 - t0, "prior": time.perf_counter() - t1}
    out["parts"] = parts
    return out


def curve_distance(problem, b: int, x: torch.Tensor) -> dict[str, float]:
    """Median and RMS distance of samples ``x`` of source ``b`` to its true curve: how far a
    learned prior's samples scatter off the manifold, which W2 at a few thousand samples
    hardly sees (docs/em.md, "Thick priors")."""
    dist, _ = problem.curves[b].distance(x)
    return {
        "curve_distance_median": float(np.median(dist)),
        "curve_distance_rms": float(np.sqrt(np.mean(dist**2))),
    }


def prior_samples(prior: torch.nn.Module, n: int) -> torch.Tensor:
    """``n`` samples of one prior, drawn with 64 PC steps so that the sampler does not blur
    a sharp prior."""
    from galprism.diffusion import SamplerConfig
    from galprism.sampling import sample_prior

    return sample_prior(
        [prior],
        n,
        config=SamplerConfig("pc", 64, corrections=1, tau=0.1),
        generators=torch.Generator().manual_seed(1),
    )[:, 0]


def prior_w2(prior: torch.nn.Module, truth: torch.Tensor) -> float:
    """Debiased exact W2 of ``len(truth)`` samples of one prior (:func:`prior_samples`)
    against ``truth``."""
    from galprism.metrics import wasserstein_divergence

    return wasserstein_divergence(prior_samples(prior, truth.shape[0]), truth)


def track_hook(problem, seed: int):
    """EM lap hook: debiased W2 (n = 2,048) of each learned prior against fresh truth, and
    the median distance of the same samples to the source's curve."""
    from galprism.metrics import wasserstein_divergence

    names = problem.source_names

    def hook(record, priors, data):
        w2, dist = {}, {}
        for s, p in priors.items():
            b = names.index(s)
            x = prior_samples(p, 2048)
            w2[s] = round(
                wasserstein_divergence(x, problem.sample_source(b, 2048, seed=seed + 7)), 4
            )
            dist[s] = round(curve_distance(problem, b, x)["curve_distance_median"], 4)
        return {"w2": w2, "curve_distance": dist}

    return hook


def oracle_priors(problem, config, n_obs: int, steps: int, device: str) -> list[torch.nn.Module]:
    """Priors trained on *true* source samples (no EM): the ceiling EM could reach with this
    network, sampler and evaluation. One fit of ``steps`` steps per source on ``n_obs`` fresh
    draws, with the EM ``config``'s network, schedule, batch and EMA and the learning rate
    decayed along a half cosine."""
    from galprism.diffusion import DiffusionPrior, VESchedule
    from galprism.diffusion.training import Trainer

    seed = config.seed
    gen = torch.Generator().manual_seed(20_000 + seed)
    priors = []
    for b in range(len(problem.source_names)):
        x = problem.sample_source(b, n_obs, seed=seed + 2)
        torch.manual_seed(seed + b)
        kwargs = {"features": 5, **config.backbone_kwargs}
        schedule = VESchedule(config.sigma_min, config.sigma_max)
        prior = DiffusionPrior([5], "mlp", kwargs, schedule, float(x.std())).to(device)
        trainer = Trainer(
            prior,
            lr=config.lr,
            ema_decay=config.ema_decay,
            time_sampling=config.time_sampling,
            lr_schedule="cosine",
        )
        trainer.fit(x.to(device), steps, config.train_batch, generator=gen)
        priors.append(trainer.snapshot())
    return priors


def cpu_counters() -> tuple[float, list[int] | None]:
    """This process's CPU seconds, and the machine's ``/proc/stat`` CPU tick counters (None
    where there is no ``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        ticks = None
    return time.process_time(), ticks


def cpu_report(start: tuple[float, list[int] | None]) -> dict[str, Any]:
    """CPU use since ``start`` (:func:`cpu_counters`): the process's CPU seconds and the
    share of the machine's CPU time the hypervisor gave to other guests ("steal"). Our
    2-core machine is a shared virtual one; a wall time taken while much was stolen says
    more about the neighbours than about the code (docs/em.md)."""
    process, ticks = cpu_counters()
    out: dict[str, Any] = {"process_seconds": process - start[0], "steal_share": None}
    if ticks is not None and start[1] is not None and len(ticks) == len(start[1]) == 8:
        delta = [b - a for a, b in zip(start[1], ticks, strict=True)]
        # user nice system idle iowait irq softirq steal
        out["steal_share"] = delta[7] / max(sum(delta), 1)
    return out


def device_info(device: str) -> dict[str, Any]:
    """Where a benchmark ran: torch device, threads, CPU, load."""
    return {
        "torch": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "torch_version": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sources",
        type=int,
        default=2,
        choices=(1, 2, 3),
        help="contrastive problem with this many sources (1: source 1 alone, for trade-offs)",
    )
    parser.add_argument(
        "--mixed",
        type=float,
        default=None,
        metavar="F",
        help="mixed variant with f_mix = F (2 sources)",
    )
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="quick")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problem and of the EM run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an EMConfig field (JSON value), the E-step sampler's NAME as "
        "sampler.NAME, or an evaluation setting: n_obs/eval_n/eval_steps/"
        "eval_corrections/eval_sampler/eval_particles (evaluation sampler; default: the "
        "E-step's)/sinkhorn_n (Sinkhorn samples; default: eval_n)",
    )
    parser.add_argument(
        "--arrangement",
        choices=("stagewise", "joint"),
        default=None,
        help="default: stagewise for contrastive views, joint for mixed ones",
    )
    parser.add_argument(
        "--no-eval-gaussian",
        action="store_true",
        help="skip the metrics of the Gaussian warm start",
    )
    parser.add_argument(
        "--run-dir", default=None, help="keep the EM run folder here (default: a temporary one)"
    )
    parser.add_argument(
        "--oracle",
        type=int,
        default=None,
        metavar="STEPS",
        help="no EM: train each prior for STEPS steps on true source samples and evaluate it",
    )
    parser.add_argument(
        "--track",
        action="store_true",
        help="record each learned prior's W2 against fresh truth and the median distance of its "
        "samples to the true curve after every lap (history 'w2', 'curve_distance')",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (otherwise a summary)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from galprism.em import View, run_em

    settings = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BUDGETS[args.budget].items()}
    settings["em"] = dict(settings["em"])
    settings["em"]["sampler"] = dict(settings["em"].get("sampler", {}))
    rows = settings.pop("rows", {})
    row = dict(rows.get("mixed" if args.mixed is not None else f"sources{args.sources}", {}))
    settings["em"].update(row.pop("em", {}))
    for key, value in [*row.items(), *_parse_set(args.set).items()]:
        if key in EVAL_SETTINGS:
            settings[key] = value
        elif key.startswith("sampler."):
            settings["em"]["sampler"][key.removeprefix("sampler.")] = value
        else:
            settings["em"][key] = value
    t_start, cpu_start = time.perf_counter(), cpu_counters()
    problem = build_problem(args, settings["n_obs"])
    names = problem.source_names
    views = [
        View.from_source_sum(v.name, names, v.y, v.noise_var, v.operator) for v in problem.views
    ]
    arrangement = args.arrangement or ("joint" if args.mixed is not None else "stagewise")
    config = em_config(
        dict(
            sources=names,
            shape=[5],
            arrangement=arrangement,
            seed=args.seed,
            initial_variance="auto",
            grid_samples=0,
        ),
        settings,
    )
    if args.oracle is not None:
        t_fit = time.perf_counter()
        priors = oracle_priors(problem, config, settings["n_obs"], args.oracle, args.device)
        fit_seconds = time.perf_counter() - t_fit
        metrics = evaluate(problem, views, priors, settings, args.seed)
        report = {
            "benchmark": "manifold",
            "oracle": True,
            "oracle_steps": args.oracle,
            "problem": problem.config.to_dict(),
            "budget": args.budget,
            "settings": {**{k: v for k, v in settings.items() if k != "em"}, "em": settings["em"]},
            "posterior": metrics["posterior"],
            "prior": metrics["prior"],
            "cpu": cpu_report(cpu_start),
            "wall_seconds": {
                "total": time.perf_counter() - t_start,
                "fit": fit_seconds,
                "eval": sum(metrics["seconds"].values()),
                "eval_parts": metrics["parts"],
            },
            "device": device_info(args.device),
            "seed": args.seed,
        }
        print(json.dumps(report) if args.json else json.dumps(report, indent=1))
        return 0
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="galprism-manifold-")
    t_em = time.perf_counter()
    result = run_em(
        views,
        config,
        run_dir,
        device=args.device,
        progress=None if not args.json else False,
        hook=track_hook(problem, args.seed) if args.track else None,
    )
    em_seconds = time.perf_counter() - t_em
    final = [p.to(args.device) for p in result.priors.priors]
    metrics = evaluate(problem, views, final, settings, args.seed)
    gaussian = None
    if not args.no_eval_gaussian:
        gaussian = evaluate(
            problem,
            views,
            list(result.gaussian_priors.priors),
            settings,
            args.seed,
            sinkhorn=args.budget == "full",
        )
    report = {
        "benchmark": "manifold",
        "problem": problem.config.to_dict(),
        "budget": args.budget,
        "arrangement": arrangement,
        "settings": {**{k: v for k, v in settings.items() if k != "em"}, "em": config.to_dict()},
        "em_laps": len(result.history),
        "posterior": metrics["posterior"],
        "prior": metrics["prior"],
        "gaussian": None
        if gaussian is None
        else {"posterior": gaussian["posterior"], "prior": gaussian["prior"]},
        "sinkhorn_settings": {
            "reg": 1e-3,
            "stop_thr": 1e-2,
            "max_iter": 1024,
            "n_samples": sinkhorn_samples(settings),
            "wasserstein_n": min(settings["eval_n"], 2048),
        },
        "history": [
            {
                k: h[k]
                for k in (
                    "lap",
                    "stage",
                    "phase",
                    "learning",
                    "loss",
                    "chi2",
                    "rejected",
                    "seconds",
                    "w2",
                    "curve_distance",
                )
                if k in h
            }
            for h in result.history
        ],
        "cpu": cpu_report(cpu_start),
        "wall_seconds": {
            "total": time.perf_counter() - t_start,
            "em": em_seconds,
            "eval": sum(metrics["seconds"].values()),
            "eval_parts": metrics["parts"],
        },
        "device": device_info(args.device),
        "seed": args.seed,
    }
    if args.run_dir is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        for kind in ("posterior", "prior"):
            for s, m in report[kind].items():
                extra = f" PSNR {m['psnr']:.2f} dB" if "psnr" in m else ""
                print(f"{kind:9s} {s}: Sinkhorn {m['sinkhorn']} W2 {m['wasserstein']:.3f}{extra}")
        print(
            f"laps {report['em_laps']}, wall {report['wall_seconds']['total']:.0f} s",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

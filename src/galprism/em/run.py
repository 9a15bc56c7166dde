"""Expectation-maximisation over views (docs/method.md section 5).

A run is a fixed sequence of laps planned from the views and the config
(:mod:`galprism.em.plan`): per stage, Gaussian (PPCA) laps, then diffusion laps. Each lap
draws one joint posterior sample per observation (or a random subset) with the current
priors (:mod:`galprism.em.estep`), then refits the PPCA prior or continues training the
network of every source the stage learns on those samples. The first diffusion lap's
E-step uses the final Gaussian priors, so the networks start from the warm start's
samples.

Each lap ends with a checkpoint (priors, optimisers, the random stream), written
atomically before the lap's history line, so a run killed at any moment resumes from its
last completed lap and reproduces the numbers of an uninterrupted run.

Under ``torchrun`` the E-step and M-step work is shared among the processes and rank 0
alone writes the run folder (:mod:`galprism.em.distributed`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..diffusion import DiffusionPrior, SamplerConfig, random_flux_scaling
from ..errors import ConfigError
from ..frame import Frame
from ..gaussian import GaussianPrior
from ..priorset import PriorSet
from ..sampling import sample_prior
from .config import EMConfig
from .distributed import Distributed
from .estep import posterior_samples
from .grids import save_grid
from .plan import LapPlan, Stage, plan_laps, plan_stages
from .progress import Progress
from .state import EMState
from .store import RunStore
from .views import View

__all__ = ["Stage", "LapPlan", "plan_stages", "plan_laps", "EMResult", "LapHook", "run_em"]

#: ``hook(record, priors, samples) -> extra metrics`` called after each lap.
LapHook = Callable[[dict[str, Any], dict[str, nn.Module], dict[str, Tensor]], dict[str, Any]]


@dataclass
class EMResult:
    """Outcome of :func:`run_em`.

    Attributes
    ----------
    priors
        The learned priors (diffusion where diffusion laps ran).
    gaussian_priors
        The PPCA priors of the warm start.
    history
        One record per lap (see :func:`run_em`).
    run_dir
        The run folder.
    """

    priors: PriorSet
    gaussian_priors: PriorSet
    history: list[dict[str, Any]]
    run_dir: Path


def run_em(
    views: Sequence[View],
    config: EMConfig,
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool | None = None,
    hook: LapHook | None = None,
    stop_after: int | None = None,
    notify: Callable[[str], None] | None = None,
    distributed: Distributed | None = None,
) -> EMResult | None:
    """Learn one prior per source from ``views`` by EM; write everything to ``run_dir``.

    Parameters
    ----------
    views
        The observations, grouped by the sources they contain.
    config
        Run settings (compared with the stored ones when resuming).
    run_dir
        Run folder (see :mod:`galprism.em.store`).
    device
        Where sampling and training run.
    resume
        Continue a run found in ``run_dir`` (the default); false refuses to reuse it.
    progress
        Rich progress on stderr; by default only when stderr is a terminal.
    hook
        Called after each lap with the lap record, the current priors of the sources the
        stage learns and their E-step samples; whatever it returns is added to the
        history line.
    stop_after
        Stop (returning None) once this many laps are complete, as a kill would.
    notify
        Where resume messages go (which lap a run resumes from, unusable checkpoints
        skipped); default one ``galprism:`` line each on stderr.
    distributed
        This process's place among several (:mod:`galprism.em.distributed`); by default
        taken from ``torchrun``'s environment, joining its process group for the run.
        In a distributed run every process calls :func:`run_em` with the same views and
        config; each observation's E-step noise comes from its own seed, so the samples
        and the learned priors do not depend on the number of processes (up to float
        round-off), but differ from a run without ``torchrun``, which draws all noise
        from one stream. Rank 0 alone writes ``run_dir`` and speaks; ``hook`` runs on
        every rank.

    Returns
    -------
    EMResult or None
        The learned priors (diffusion and the Gaussian warm start) and the history.
        History records hold ``lap, stage, phase, phase_lap, learning, loss`` (mean
        training loss of the lap's last quarter per source), ``chi2`` (mean
        posterior-predictive reduced chi^2 per view), ``redrawn`` and ``rejected``
        (fractions of E-step samples per view), ``estep_samples``, ``seconds`` and
        ``time``.

    Raises
    ------
    ConfigError
        Bad views for the config (see :func:`plan_stages`), or a run folder written by
        another configuration (the message names the differing settings).
    """
    device = torch.device(device)
    dist = distributed if distributed is not None else Distributed.from_env(device)
    try:
        return _run(
            views, config, run_dir, device, resume, progress, hook, stop_after, notify, dist
        )
    finally:
        dist.close()


def _run(
    views: Sequence[View],
    config: EMConfig,
    run_dir: str | Path,
    device: torch.device,
    resume: bool,
    progress: bool | None,
    hook: LapHook | None,
    stop_after: int | None,
    notify: Callable[[str], None] | None,
    dist: Distributed,
) -> EMResult | None:
    views = list(views)
    stages = plan_stages(views, config)
    laps = plan_laps(stages, config)
    by_name = {v.name: v for v in views}
    store = RunStore(run_dir)
    done = dist.on_main(
        lambda: store.init(
            config,
            resume=resume,
            extends=lambda stored, n: plan_laps(stages, stored)[:n] == laps[:n],
        )
    )
    if done > len(laps):
        raise ConfigError(f"{run_dir}: holds {done} laps but this configuration plans {len(laps)}")
    state = EMState(config, device)
    say = notify or (lambda msg: print(f"galprism: {msg}", file=sys.stderr, flush=True))
    if not dist.is_main:
        say = lambda msg: None  # noqa: E731 - rank 0 speaks for the run
    if done:
        # Rank 0 picks the checkpoint (skipping unusable ones); the others load that one.
        done = dist.on_main(lambda: store.load_latest(done, state.load_state_dict, say))
        if done and not dist.is_main:
            state.load_state_dict(store.load_checkpoint(done))
    if done:
        say(f"{store.root}: resuming after lap {done} of {len(laps)}")
    else:
        state = EMState(config, device)  # nothing of a checkpoint that failed to apply
        for source in config.sources:
            state.gaussians[source] = state.initial_gaussian(
                _initial_variance(views, source, config)
            )

    with Progress(len(laps), progress if dist.is_main else False) as bar:
        bar.lap_done(done)
        for plan in laps[done:]:
            if stop_after is not None and plan.lap > stop_after:
                return None
            record, current, data = _lap(plan, stages, by_name, state, config, device, bar, dist)
            if len(config.shape) == 3 and config.grid_samples:
                if dist.is_main:
                    _grids(store, plan, current, data, config, state.generator, device)
                # The grids drew from the run's stream on rank 0 only.
                dist.sync_generator(state.generator)
            if hook is not None:
                record.update(hook(record, current, data))
            if dist.is_main:
                ckpt = {
                    "lap": plan.lap,
                    "galprism_version": __version__,
                    "config": config.to_dict(),
                    **state.state_dict(),
                }
                store.save_checkpoint(plan.lap, ckpt, keep=config.keep_checkpoints)
                store.append_history(record)
            bar.lap_done(plan.lap)
            bar.log(
                f"lap {plan.lap}/{len(laps)} {plan.phase} {','.join(record['learning'])}: "
                f"loss {record['loss']} chi2 {record['chi2']}"
            )

    return _finish(state, config, store, dist)


def _lap(
    plan: LapPlan,
    stages: Sequence[Stage],
    by_name: dict[str, View],
    state: EMState,
    config: EMConfig,
    device: torch.device,
    bar: Progress,
    dist: Distributed,
) -> tuple[dict[str, Any], dict[str, nn.Module], dict[str, Tensor]]:
    """One E-step and M-step; returns the history record, current priors and samples."""
    stage = stages[plan.stage]
    t0 = time.perf_counter()
    for earlier in stages[: plan.stage]:
        for s in earlier.learn:
            state.freeze(s)
    sampler = config.sampler_of(plan.phase_lap)
    samples: dict[str, list[Tensor]] = {s: [] for s in stage.learn}
    chi2, redrawn, rejected = {}, {}, {}
    for vname in stage.views:
        view = by_name[vname]
        n = min(config.estep_observations or view.n_obs, view.n_obs)
        index = torch.randperm(view.n_obs, generator=state.generator)[:n].sort().values
        seed, lo, hi = None, 0, n
        if dist.enabled:
            seed = int(torch.randint(2**62, (1,), generator=state.generator))
            lo, hi = dist.shard(n)
        step = bar.start(
            f"lap {plan.lap} {plan.phase} E-step {vname}", -(-(hi - lo) // config.estep_batch)
        )
        res = posterior_samples(
            view,
            [state.prior_for(s, plan.phase).to(device) for s in view.sources],
            index[lo:hi],
            sampler,
            batch=config.estep_batch,
            generator=state.generator,
            device=device,
            reject_chi2=config.reject_chi2,
            redraws=config.redraws,
            progress=step,
            observation_seed=seed,
        )
        if dist.enabled:
            res.x = dist.assemble(res.x, lo, n)
            res.chi2 = dist.assemble(res.chi2, lo, n)
            res.failed = dist.assemble(res.failed, lo, n)
            res.index = index
            res.redrawn = int(dist.all_sum(torch.tensor(res.redrawn)))
        chi2[vname] = float(res.chi2.nanmean())
        redrawn[vname] = res.redrawn / n
        rejected[vname] = float(res.failed.float().mean())
        for k, s in enumerate(view.sources):
            if s in samples:
                # A sample that does not explain its observation is a sampler failure:
                # training on it would teach the prior the failure.
                samples[s].append(res.x[~res.failed, k])
    data = {s: torch.cat(v) for s, v in samples.items()}
    loss: dict[str, float] = {}
    for s in stage.learn:
        if data[s].shape[0] < 2:
            raise ConfigError(
                f"EM lap {plan.lap}: source {s!r} has {data[s].shape[0]} usable E-step samples"
            )
        if plan.phase == "gaussian":
            state.gaussians[s] = _fit_gaussian(data[s], config, state, dist)
            continue
        if s not in state.trainers:
            state.trainers[s] = state.new_trainer(float(data[s].std()))
        step = bar.start(f"lap {plan.lap} M-step {s}", config.train_steps)
        spec = dict(plan.augment).get(s)
        augment = random_flux_scaling(*spec) if spec is not None else None
        loss[s] = state.trainers[s].fit(
            data[s].to(device),
            config.train_steps,
            config.train_batch,
            generator=state.generator,
            callback=step,
            augment=augment,
            split=dist if dist.enabled else None,
        )
    record = {
        "lap": plan.lap,
        "stage": plan.stage,
        "phase": plan.phase,
        "phase_lap": plan.phase_lap,
        "learning": list(stage.learn),
        "loss": loss,
        "chi2": chi2,
        "redrawn": redrawn,
        "rejected": rejected,
        "estep_samples": {s: int(v.shape[0]) for s, v in data.items()},
        "seconds": time.perf_counter() - t0,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return record, {s: state.prior_for(s, plan.phase) for s in stage.learn}, data


def _fit_gaussian(
    data: Tensor, config: EMConfig, state: EMState, dist: Distributed
) -> GaussianPrior:
    """The PPCA fit to ``data``; in a distributed run rank 0 fits (every rank holds all
    samples) and the others take its result, so that all ranks keep one prior even where
    the fit draws random numbers (randomised SVD of large images)."""
    if not dist.enabled:
        return GaussianPrior.fit(data, config.gaussian_rank, state.schedule())

    def fit() -> dict[str, Any]:
        prior = GaussianPrior.fit(data, config.gaussian_rank, state.schedule())
        return {"config": prior.config(), "state": prior.state_dict()}

    fitted = dist.on_main(fit)
    prior = GaussianPrior.from_config(fitted["config"])
    prior.load_state_dict(fitted["state"])
    return prior


def _initial_variance(views: Sequence[View], source: str, config: EMConfig) -> float:
    """The starting isotropic variance of ``source`` (see ``EMConfig.initial_variance``)."""
    if config.initial_variance != "auto":
        return float(config.initial_variance)
    estimates, scale = [], 0.0
    for v in views:
        valid = v.valid if v.valid is not None else torch.ones_like(v.y, dtype=torch.bool)
        power = float((v.y[valid] ** 2).mean())
        scale = max(scale, power)
        if source in v.sources:
            estimate = (power - float(v.noise_var[valid].mean())) / len(v.sources)
            if source in v.amplitudes:  # a normalised source: its power divided by a^2
                estimate /= float((v.amplitudes[source].to(torch.float64) ** 2).mean())
            estimates.append(estimate)
    return max(min(estimates), 1e-4 * scale)


def _grids(
    store: RunStore,
    plan: LapPlan,
    priors: dict[str, nn.Module],
    data: dict[str, Tensor],
    config: EMConfig,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    n = config.grid_samples
    for s, prior in priors.items():
        store.grids.mkdir(exist_ok=True)
        save_grid(
            data[s][:n],
            store.grids / f"lap-{plan.lap:04d}-{s}-posterior.png",
            f"lap {plan.lap} {s} posterior",
        )
        x = sample_prior(
            [prior.to(device)],
            n,
            config=SamplerConfig("pc", config.grid_steps),
            generators=generator,
            device=device,
        )
        save_grid(
            x[:, 0].cpu(),
            store.grids / f"lap-{plan.lap:04d}-{s}-prior.png",
            f"lap {plan.lap} {s} prior",
        )


def _finish(state: EMState, config: EMConfig, store: RunStore, dist: Distributed) -> EMResult:
    meta = config.metadata
    common = dict(
        frame=Frame(
            tuple(config.shape),
            bands=meta.get("bands"),
            pixel_scale=meta.get("pixel_scale"),
            zeropoint=meta.get("zeropoint"),
            bunit=meta.get("bunit"),
            flux_scale=float(meta.get("flux_scale", 1.0)),
        ),
        support=dict(meta.get("support") or {}),
        amplitude=dict(meta.get("amplitude") or {}),
    )
    training = {
        "em": {k: v for k, v in config.to_dict().items() if k != "metadata"},
        "laps": len(store.history()),
        **meta.get("training", {}),
    }
    name = meta.get("name", store.root.name)
    finals = [state.final_prior(s).cpu() for s in config.sources]
    method = "diffusion" if any(isinstance(p, DiffusionPrior) for p in finals) else "gaussian"
    diff = PriorSet(
        name, method, list(config.sources), finals, manifest={"training": training}, **common
    )
    if dist.is_main:
        diff.save(store.root / "prior", overwrite=True)
    gauss = PriorSet(
        f"{name}-gaussian",
        "gaussian",
        list(config.sources),
        [state.gaussians[s] for s in config.sources],
        manifest={"training": training},
        **common,
    )
    if dist.is_main:
        gauss.save(store.root / "prior-gaussian", overwrite=True)
    # The other ranks return once rank 0's files are complete.
    dist.barrier()
    return EMResult(diff, gauss, store.history(), store.root)

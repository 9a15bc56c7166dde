"""Expectation-maximisation over views (METHOD.md section 5).

A run is a fixed sequence of laps planned from the views and the config:

* stages: ``joint`` learns every source in one stage from every view; ``stagewise``
  orders views by how many sources they hold and learns, in each stage, the sources a
  view adds to those already learned (which stay frozen);
* in each stage, ``gaussian_laps`` PPCA laps (E-step with the closed-form Gaussian
  denoiser, refit mean and covariance on the posterior samples), then ``diffusion_laps``
  laps (E-step with the current priors, then continue training each learning source's
  network on its posterior samples). The first diffusion lap's E-step uses the final
  Gaussian priors, so its networks start from the warm start's samples.

Each lap ends with a checkpoint (priors, optimisers, the random stream), so a run killed
at any moment resumes from its last completed lap and reproduces the same numbers.
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
from ..diffusion import DiffusionPrior, SamplerConfig, Trainer, VESchedule
from ..errors import ConfigError, ShapeError
from ..gaussian import GaussianPrior
from ..posterior import sample_posterior, sample_prior
from ..priorset import PriorSet
from .config import EMConfig
from .grids import save_grid
from .store import RunStore
from .views import View

__all__ = ["Stage", "LapPlan", "plan_stages", "plan_laps", "EMResult", "run_em"]

#: ``hook(record, priors, samples) -> extra metrics`` called after each lap.
LapHook = Callable[[dict[str, Any], dict[str, nn.Module], dict[str, Tensor]], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    learn: tuple[str, ...]
    views: tuple[str, ...]


@dataclass(frozen=True)
class LapPlan:
    lap: int
    stage: int
    phase: str  # "gaussian" or "diffusion"
    phase_lap: int


def plan_stages(views: Sequence[View], config: EMConfig) -> list[Stage]:
    """Which sources each stage learns, and from which views.

    Raises
    ------
    ConfigError
        A view naming an unknown source, a source no view contains, or (stage-wise) a
        view that adds sources none of the earlier views pinned down.
    """
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ConfigError(f"EM: view names must be unique, got {names}")
    for v in views:
        for s in v.sources:
            if s not in config.sources:
                raise ConfigError(f"view {v.name!r}: names unknown source {s!r} (sources: {', '.join(config.sources)})")
        if v.source_shape != tuple(config.shape):
            raise ShapeError(f"view {v.name!r}: operator expects sources of shape {v.source_shape}, config says {tuple(config.shape)}")
    seen = {s for v in views for s in v.sources}
    missing = [s for s in config.sources if s not in seen]
    if missing:
        raise ConfigError(f"EM: no view contains source(s) {missing}")
    if config.arrangement == "joint":
        return [Stage(tuple(config.sources), tuple(names))]
    stages: list[Stage] = []
    known: set[str] = set()
    for v in sorted(views, key=lambda v: len(v.sources)):
        new = tuple(s for s in config.sources if s in v.sources and s not in known)
        if not new:
            # Holds only sources learned already: it helps the stage that learned the
            # last of them.
            last = max(i for i, st in enumerate(stages) if set(st.learn) & set(v.sources))
            stages[last] = Stage(stages[last].learn, stages[last].views + (v.name,))
            continue
        match = [i for i, st in enumerate(stages) if st.learn == new]
        if match:
            stages[match[0]] = Stage(new, stages[match[0]].views + (v.name,))
        else:
            stages.append(Stage(new, (v.name,)))
        known |= set(new)
    return stages


def plan_laps(stages: Sequence[Stage], config: EMConfig) -> list[LapPlan]:
    laps: list[LapPlan] = []
    for i, _ in enumerate(stages):
        for phase, n in (("gaussian", config.gaussian_laps), ("diffusion", config.diffusion_laps)):
            for j in range(n):
                laps.append(LapPlan(len(laps) + 1, i, phase, j))
    return laps


@dataclass
class EMResult:
    """Outcome of :func:`run_em`."""

    priors: PriorSet
    gaussian_priors: PriorSet
    history: list[dict[str, Any]]
    run_dir: Path


class _State:
    """Priors of every source and the random stream: what a checkpoint holds."""

    def __init__(self, config: EMConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.gaussians: dict[str, GaussianPrior] = {}
        self.trainers: dict[str, Trainer] = {}
        self.frozen: dict[str, nn.Module] = {}
        self.generator = torch.Generator().manual_seed(config.seed)

    def schedule(self) -> VESchedule:
        return VESchedule(self.config.sigma_min, self.config.sigma_max)

    def initial_gaussian(self, sigma: float) -> GaussianPrior:
        shape = tuple(self.config.shape)
        d = int(torch.tensor(shape).prod())
        return GaussianPrior(torch.zeros(shape), torch.zeros(d, 0), torch.zeros(0), sigma**2, self.schedule())

    def prior_for(self, source: str, phase: str) -> nn.Module:
        if source in self.frozen:
            return self.frozen[source]
        if phase == "diffusion" and source in self.trainers:
            return self.trainers[source].ema_prior
        return self.gaussians[source]

    def new_trainer(self, source: str, sigma_data: float) -> Trainer:
        c = self.config
        kwargs = dict(c.backbone_kwargs)
        if c.backbone == "mlp":
            kwargs.setdefault("features", int(c.shape[0]))
        else:
            kwargs.setdefault("channels", int(c.shape[0]))
        # Seed weight initialisation from the run's stream so that runs are reproducible.
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))
        prior = DiffusionPrior(c.shape, c.backbone, kwargs, self.schedule(), sigma_data).to(self.device)
        return Trainer(prior, lr=c.lr, ema_decay=c.ema_decay, time_sampling=c.time_sampling)

    def state_dict(self) -> dict[str, Any]:
        return {
            "gaussians": {s: {"config": g.config(), "state": g.state_dict()} for s, g in self.gaussians.items()},
            "trainers": {
                s: {"config": t.prior.config(), "state": t.state_dict()} for s, t in self.trainers.items()
            },
            "frozen": {s: {"config": p.config(), "state": p.state_dict(), "kind": _kind(p)} for s, p in self.frozen.items()},
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gaussians = {}
        for s, g in state["gaussians"].items():
            prior = GaussianPrior.from_config(g["config"])
            prior.load_state_dict(g["state"])
            self.gaussians[s] = prior
        self.trainers = {}
        for s, t in state["trainers"].items():
            prior = DiffusionPrior.from_config(t["config"]).to(self.device)
            trainer = Trainer(prior, lr=self.config.lr, ema_decay=self.config.ema_decay,
                              time_sampling=self.config.time_sampling)
            trainer.load_state_dict(t["state"])
            self.trainers[s] = trainer
        self.frozen = {}
        for s, f in state["frozen"].items():
            cls = DiffusionPrior if f["kind"] == "diffusion" else GaussianPrior
            prior = cls.from_config(f["config"])
            prior.load_state_dict(f["state"])
            self.frozen[s] = prior.to(self.device).eval().requires_grad_(False)
        self.generator.set_state(state["rng"])


def _kind(prior: nn.Module) -> str:
    return "diffusion" if isinstance(prior, DiffusionPrior) else "gaussian"


class _Progress:
    """Rich progress on stderr (lap, step, ETA); silent when stderr is not a terminal."""

    def __init__(self, total_laps: int, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self.laps = self.bar.add_task("EM laps", total=total_laps)
            self.steps = self.bar.add_task("", total=1)

    def __enter__(self) -> _Progress:
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def lap_done(self, completed: int) -> None:
        if self.bar:
            self.bar.update(self.laps, completed=completed)

    def start(self, description: str, total: int) -> Callable[..., None]:
        if not self.bar:
            return lambda *a: None
        self.bar.reset(self.steps, total=total, description=description)
        return lambda *a: self.bar.advance(self.steps)

    def log(self, message: str) -> None:
        if self.bar:
            self.bar.console.log(message)


def _estep(
    view: View,
    priors: Sequence[nn.Module],
    config: EMConfig,
    generator: torch.Generator,
    device: torch.device,
    progress: Callable[..., None],
) -> tuple[Tensor, Tensor, Tensor]:
    """Posterior samples ``(n, K_view, *shape)`` for a random subset of a view, the subset's
    indices and each sample's posterior-predictive reduced chi^2."""
    n = view.n_obs if config.estep_observations == 0 else min(config.estep_observations, view.n_obs)
    index = torch.randperm(view.n_obs, generator=generator)[:n].sort().values
    sampler = SamplerConfig(config.sampler, config.steps, corrections=config.corrections, tau=config.tau)
    out = []
    for start in range(0, n, config.estep_batch):
        idx = index[start : start + config.estep_batch]
        op = view.operator.take(idx) if view.operator.batch_size is not None else view.operator
        x = sample_posterior(
            priors, op, view.y[idx].to(device), view.noise_var[idx].to(device),
            n_samples=1, config=sampler, cg_iterations=config.cg_iterations, generators=generator,
            trust=config.trust,
        )
        out.append(x[:, 0].cpu())
        progress()
    samples = torch.cat(out)
    return samples, index, view.chi2_per_observation(samples, index)


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
        Called after each lap with the lap record, the current priors and the E-step
        samples per source; whatever it returns is added to the history line.
    stop_after
        Stop (returning None) once this many laps are complete, as a kill would.

    Returns
    -------
    EMResult or None
        The learned priors (diffusion and the Gaussian warm start) and the history.
    """
    device = torch.device(device)
    views = list(views)
    stages = plan_stages(views, config)
    laps = plan_laps(stages, config)
    by_name = {v.name: v for v in views}
    store = RunStore(run_dir)
    done = store.init(config, resume=resume)
    if done > len(laps):
        raise ConfigError(f"{run_dir}: holds {done} laps but this configuration plans {len(laps)}")
    state = _State(config, device)
    if done:
        state.load_state_dict(store.load_checkpoint(done))
    else:
        for source in config.sources:
            state.gaussians[source] = state.initial_gaussian(_initial_variance(views, source, config) ** 0.5)

    with _Progress(len(laps), progress) as bar:
        bar.lap_done(done)
        for plan in laps[done:]:
            if stop_after is not None and plan.lap > stop_after:
                return None
            stage = stages[plan.stage]
            t0 = time.perf_counter()
            # Entering a new stage: sources learned by the previous stage become frozen.
            for i in range(plan.stage):
                for s in stages[i].learn:
                    if s not in state.frozen:
                        state.frozen[s] = _final_prior(state, s)
                        # A frozen source's optimiser state is no longer needed.
                        state.trainers.pop(s, None)
            samples: dict[str, list[Tensor]] = {s: [] for s in stage.learn}
            chi2, rejected = {}, {}
            for vname in stage.views:
                view = by_name[vname]
                priors = [state.prior_for(s, plan.phase).to(device) for s in view.sources]
                step = bar.start(f"lap {plan.lap} {plan.phase} E-step {vname}", -(-min(view.n_obs, config.estep_observations or view.n_obs) // config.estep_batch))
                x, _, chi2_obs = _estep(view, priors, config, state.generator, device, step)
                chi2[vname] = float(chi2_obs.nanmean())
                keep = torch.ones(x.shape[0], dtype=torch.bool)
                if config.reject_chi2 > 0 and plan.phase == "diffusion":
                    # A sample that does not explain its observation is a sampler failure;
                    # training on it would teach the prior the failure.
                    keep = ~(chi2_obs > config.reject_chi2)
                rejected[vname] = float(1 - keep.float().mean())
                for k, s in enumerate(view.sources):
                    if s in samples:
                        samples[s].append(x[keep, k])
            data = {s: torch.cat(v) for s, v in samples.items()}
            loss: dict[str, float] = {}
            for s in stage.learn:
                if plan.phase == "gaussian":
                    state.gaussians[s] = GaussianPrior.fit(data[s], config.gaussian_rank, state.schedule())
                else:
                    if s not in state.trainers:
                        state.trainers[s] = state.new_trainer(s, float(data[s].std()))
                    step = bar.start(f"lap {plan.lap} M-step {s}", config.train_steps)
                    loss[s] = state.trainers[s].fit(
                        data[s].to(device), config.train_steps, config.train_batch,
                        generator=state.generator, callback=step,
                    )
            record = {
                "lap": plan.lap,
                "stage": plan.stage,
                "phase": plan.phase,
                "phase_lap": plan.phase_lap,
                "learning": list(stage.learn),
                "loss": loss,
                "chi2": chi2,
                "rejected": rejected,
                "estep_samples": {s: int(v.shape[0]) for s, v in data.items()},
                "seconds": time.perf_counter() - t0,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            current = {s: state.prior_for(s, plan.phase) for s in stage.learn}
            if len(config.shape) == 3 and config.grid_samples:
                _grids(store, plan, current, data, config, state.generator, device)
            if hook is not None:
                record.update(hook(record, current, data))
            ckpt = {"lap": plan.lap, "galprism_version": __version__, "config": config.to_dict(), **state.state_dict()}
            store.save_checkpoint(plan.lap, ckpt, keep=config.keep_checkpoints)
            store.append_history(record)
            bar.lap_done(plan.lap)
            bar.log(f"lap {plan.lap}/{len(laps)} {plan.phase} {','.join(stage.learn)}: loss {loss} chi2 {chi2}")

    return _finish(state, stages, config, store)


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
            estimates.append((power - float(v.noise_var[valid].mean())) / len(v.sources))
    return max(min(estimates), 1e-4 * scale)


def _final_prior(state: _State, source: str) -> nn.Module:
    if source in state.frozen:
        return state.frozen[source]
    if source in state.trainers:
        return state.trainers[source].snapshot()
    return state.gaussians[source]


def _grids(store: RunStore, plan: LapPlan, priors: dict[str, nn.Module], data: dict[str, Tensor],
           config: EMConfig, generator: torch.Generator, device: torch.device) -> None:
    n = config.grid_samples
    for s, prior in priors.items():
        store.grids.mkdir(exist_ok=True)
        save_grid(data[s][:n], store.grids / f"lap-{plan.lap:04d}-{s}-posterior.png", f"lap {plan.lap} {s} posterior")
        x = sample_prior([prior.to(device)], n, config=SamplerConfig("pc", config.grid_steps), generators=generator, device=device)
        save_grid(x[:, 0].cpu(), store.grids / f"lap-{plan.lap:04d}-{s}-prior.png", f"lap {plan.lap} {s} prior")


def _finish(state: _State, stages: Sequence[Stage], config: EMConfig, store: RunStore) -> EMResult:
    meta = config.metadata
    common = dict(
        shape=tuple(config.shape),
        pixel_scale=meta.get("pixel_scale"),
        zeropoint=meta.get("zeropoint"),
        bunit=meta.get("bunit"),
        flux_scale=float(meta.get("flux_scale", 1.0)),
    )
    training = {
        "em": {k: v for k, v in config.to_dict().items() if k != "metadata"},
        "laps": len(store.history()),
        **meta.get("training", {}),
    }
    name = meta.get("name", store.root.name)
    finals = [_final_prior(state, s).cpu() for s in config.sources]
    method = "diffusion" if config.diffusion_laps else "gaussian"
    diff = PriorSet(name, method, list(config.sources), finals, manifest={"training": training}, **common)
    diff.save(store.root / "prior", overwrite=True)
    gauss = PriorSet(f"{name}-gaussian", "gaussian", list(config.sources), [state.gaussians[s] for s in config.sources],
                     manifest={"training": training}, **common)
    gauss.save(store.root / "prior-gaussian", overwrite=True)
    return EMResult(diff, gauss, store.history(), store.root)

"""What an EM checkpoint holds: every source's prior, the optimisers and the random stream."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..diffusion import DiffusionPrior, Trainer, VESchedule
from ..gaussian import GaussianPrior
from .config import EMConfig

__all__ = ["EMState"]


class EMState:
    """Priors of every source and the run's single random stream.

    Attributes
    ----------
    gaussians
        Latest PPCA prior of every source (the warm start; kept after diffusion starts).
    trainers
        Diffusion priors being learned, with their optimisers and EMA weights.
    frozen
        Sources learned by earlier stages, fixed for the rest of the run.
    generator
        The only source of randomness of the run (E-step noise, minibatches, network
        initialisation); its state is checkpointed so a resumed run repeats the numbers.
    """

    def __init__(self, config: EMConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.gaussians: dict[str, GaussianPrior] = {}
        self.trainers: dict[str, Trainer] = {}
        self.frozen: dict[str, nn.Module] = {}
        self.generator = torch.Generator().manual_seed(config.seed)

    def schedule(self) -> VESchedule:
        return VESchedule(self.config.sigma_min, self.config.sigma_max)

    def initial_gaussian(self, variance: float) -> GaussianPrior:
        """Zero-mean isotropic Gaussian of the given variance per value."""
        shape = tuple(self.config.shape)
        d = int(torch.tensor(shape).prod())
        return GaussianPrior(
            torch.zeros(shape), torch.zeros(d, 0), torch.zeros(0), variance, self.schedule()
        )

    def prior_for(self, source: str, phase: str) -> nn.Module:
        """The prior the E-step of a ``phase`` lap uses for ``source``."""
        if source in self.frozen:
            return self.frozen[source]
        if phase == "diffusion" and source in self.trainers:
            return self.trainers[source].ema_prior
        return self.gaussians[source]

    def final_prior(self, source: str) -> nn.Module:
        """The prior to keep for ``source``: frozen, else a snapshot of the EMA network,
        else the Gaussian."""
        if source in self.frozen:
            return self.frozen[source]
        if source in self.trainers:
            return self.trainers[source].snapshot()
        return self.gaussians[source]

    def freeze(self, source: str) -> None:
        """Fix ``source`` for the rest of the run (its optimiser state is dropped)."""
        if source not in self.frozen:
            self.frozen[source] = self.final_prior(source)
            self.trainers.pop(source, None)

    def new_trainer(self, sigma_data: float) -> Trainer:
        """A fresh network and optimiser, initialised from the run's stream."""
        c = self.config
        kwargs = dict(c.backbone_kwargs)
        if c.backbone == "mlp":
            kwargs.setdefault("features", int(c.shape[0]))
        else:
            kwargs.setdefault("channels", int(c.shape[0]))
        # torch initialises weights from the global generator: seed it from the run's
        # stream so that runs are reproducible.
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))
        prior = DiffusionPrior(c.shape, c.backbone, kwargs, self.schedule(), sigma_data).to(
            self.device
        )
        return self._trainer(prior)

    def _trainer(self, prior: DiffusionPrior) -> Trainer:
        c = self.config
        return Trainer(
            prior,
            lr=c.lr,
            ema_decay=c.ema_decay,
            time_sampling=c.time_sampling,
            lr_schedule=c.lr_schedule,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "gaussians": {
                s: {"config": g.config(), "state": g.state_dict()}
                for s, g in self.gaussians.items()
            },
            "trainers": {
                s: {"config": t.prior.config(), "state": t.state_dict()}
                for s, t in self.trainers.items()
            },
            "frozen": {
                s: {"config": p.config(), "state": p.state_dict(), "kind": _kind(p)}
                for s, p in self.frozen.items()
            },
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
            trainer = self._trainer(DiffusionPrior.from_config(t["config"]).to(self.device))
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

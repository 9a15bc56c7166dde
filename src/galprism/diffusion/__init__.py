"""Diffusion priors: noise schedule, preconditioned denoiser, training, samplers."""

from .denoiser import DiffusionPrior
from .ema import EMA
from .loss import denoising_loss
from .samplers import SamplerConfig, sample
from .schedule import VESchedule
from .training import Trainer, random_flux_scaling

__all__ = [
    "DiffusionPrior",
    "EMA",
    "SamplerConfig",
    "Trainer",
    "VESchedule",
    "denoising_loss",
    "random_flux_scaling",
    "sample",
]

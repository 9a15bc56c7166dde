"""Variance-exploding noise schedule ``x_t = x + sigma(t) z``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["VESchedule"]


@dataclass(frozen=True)
class VESchedule:
    """Log-linear ``sigma(t) = sigma_min^(1-t) sigma_max^t`` for ``t`` in [0, 1].

    Parameters
    ----------
    sigma_min, sigma_max
        Noise levels at ``t = 0`` and ``t = 1``, in the prior's normalised units.
        ``sigma_max`` must dwarf the data's spread so that ``x_1`` is pure noise;
        ``sigma_min`` must sit below the smallest detail that matters.
    """

    sigma_min: float = 1e-3
    sigma_max: float = 1e2

    def __post_init__(self) -> None:
        if not (0 < self.sigma_min < self.sigma_max) or not math.isfinite(self.sigma_max):
            raise ValueError(
                f"VESchedule: need 0 < sigma_min < sigma_max < inf, got {self.sigma_min}, "
                f"{self.sigma_max}"
            )

    def sigma(self, t: Tensor) -> Tensor:
        """Noise level at time ``t``."""
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(log_min + t * (log_max - log_min))

    def time(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma`."""
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        return (torch.log(sigma) - log_min) / (log_max - log_min)

    def to_dict(self) -> dict[str, float]:
        return {"sigma_min": float(self.sigma_min), "sigma_max": float(self.sigma_max)}

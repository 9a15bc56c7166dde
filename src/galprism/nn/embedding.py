"""Noise-level embedding shared by the backbones."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["NoiseEmbedding"]


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of ``c_noise`` (EDM's ``log(sigma) / 4``) followed by an MLP."""

    def __init__(self, features: int, frequencies: int = 32) -> None:
        super().__init__()
        self.register_buffer(
            "freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), frequencies)), persistent=False
        )
        self.mlp = nn.Sequential(
            nn.Linear(2 * frequencies, features), nn.SiLU(), nn.Linear(features, features)
        )

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise[:, None] * self.freqs.to(c_noise.dtype)
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))

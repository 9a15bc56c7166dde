"""Backbone networks ``F(x, c_noise)`` wrapped by :class:`galprism.diffusion.DiffusionPrior`."""

from __future__ import annotations

from typing import Any

from torch import nn

from .mlp import MLP
from .unet import UNet

__all__ = ["MLP", "UNet", "BACKBONES", "build_backbone"]

#: Backbones a checkpoint may name; a checkpoint can only instantiate these classes.
BACKBONES: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet}


def build_backbone(kind: str, **kwargs: Any) -> nn.Module:
    """Instantiate a backbone by name from plain keyword arguments."""
    if kind not in BACKBONES:
        raise ValueError(f"unknown backbone {kind!r}; known: {sorted(BACKBONES)}")
    return BACKBONES[kind](**kwargs)

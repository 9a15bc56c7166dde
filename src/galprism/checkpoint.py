"""Self-describing prior checkpoints that load without executing code.

A checkpoint is a ``torch.save``'d dictionary of plain Python values and tensors:

``format``, ``format_version``, ``galprism_version``, ``kind`` (``"diffusion"`` or
``"gaussian"``), ``name`` (the source), ``config`` (everything needed to rebuild the
module), ``state_dict`` (the weights; EMA weights for diffusion priors) and ``metadata``
(free-form provenance). The grid and flux convention the weights were learned on are
the prior folder's (``prior.json``'s ``frame``), recorded there once. It is read with
``torch.load(weights_only=True)``, which refuses anything but tensors and containers of
primitives: loading a prior never runs code, and a checkpoint can only instantiate the
backbones galprism knows.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .atomic import atomic_path
from .diffusion.denoiser import DiffusionPrior
from .errors import CheckpointError
from .gaussian import GaussianPrior

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PriorCheckpoint",
    "save_prior",
    "load_prior",
    "safe_torch_load",
]

FORMAT = "galprism-prior"
FORMAT_VERSION = 2
KINDS: dict[str, type[nn.Module]] = {"diffusion": DiffusionPrior, "gaussian": GaussianPrior}


@dataclass
class PriorCheckpoint:
    """A source prior with the metadata that travels with it."""

    prior: nn.Module
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        for kind, cls in KINDS.items():
            if isinstance(self.prior, cls):
                return kind
        raise CheckpointError(
            f"prior {self.name!r}: unsupported module {type(self.prior).__name__}"
        )


def save_prior(ckpt: PriorCheckpoint, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``ckpt`` to ``path`` atomically."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "galprism_version": __version__,
        "kind": ckpt.kind,
        "name": ckpt.name,
        "config": ckpt.prior.config(),
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.prior.state_dict().items()},
        "metadata": dict(ckpt.metadata),
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        # torch.save writes zip archives; anything else is damaged or not a checkpoint.
        raise CheckpointError(f"{path}: corrupted or truncated checkpoint (not a torch archive)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        detail = next(
            (line.strip() for line in text.splitlines() if "Unsupported" in line),
            "disallowed object",
        )
        raise CheckpointError(
            f"{path}: refused to load: not a plain-data checkpoint ({detail[:160]})"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: corrupted or truncated checkpoint ({type(exc).__name__})"
        ) from exc


def load_prior(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> PriorCheckpoint:
    """Load a prior checkpoint written by :func:`save_prior` (eval mode, frozen weights).

    Raises
    ------
    CheckpointError
        If the file is missing, corrupted, not a galprism prior, written by an
        incompatible format version, or its weights do not fit its configuration.
    """
    payload = safe_torch_load(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a galprism prior checkpoint")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: prior format version {version} (galprism "
            f"{payload.get('galprism_version', '?')}); "
            f"this galprism ({__version__}) reads version {FORMAT_VERSION}"
        )
    kind = payload.get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{path}: unknown prior kind {kind!r}")
    try:
        prior = KINDS[kind].from_config(payload["config"])
        prior.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"{path}: weights do not match the prior's configuration ({msg})"
        ) from exc
    prior.eval().requires_grad_(False)
    return PriorCheckpoint(
        prior=prior,
        name=str(payload["name"]),
        metadata=dict(payload.get("metadata") or {}),
    )

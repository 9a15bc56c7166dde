"""Input checks for ASVD fitting: one-line errors that name the data set and the problem."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, InputError, ShapeError
from .separate import PROJECTIONS, SPLITS


def as_data(data: object, name: str) -> Tensor:
    """Convert to a float tensor ``(N, *shape)`` with ``N >= 1``, finite, at least 2-D."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if not isinstance(data, Tensor):
        raise InputError(
            f"ASVD {name}: expected a tensor or numpy array, got {type(data).__name__}"
        )
    if not (
        torch.is_floating_point(data)
        or data.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)
    ):
        raise InputError(f"ASVD {name}: unsupported dtype {data.dtype}")
    if data.ndim < 2:
        raise ShapeError(
            f"ASVD {name}: expected (N, ...) with one cutout per row, got shape {tuple(data.shape)}"
        )
    if data.shape[0] < 1 or math.prod(data.shape[1:]) < 1:
        raise ShapeError(f"ASVD {name}: empty data of shape {tuple(data.shape)}")
    data = data.detach().to("cpu")
    if not torch.is_floating_point(data):
        data = data.to(torch.float32)
    bad = ~torch.isfinite(data)
    if bad.any():
        first = int(bad.reshape(data.shape[0], -1).any(dim=1).nonzero()[0, 0])
        raise InputError(
            f"ASVD {name}: {int(bad.sum())} non-finite value(s) (NaN or inf), first in cutout "
            f"{first}"
        )
    return data


def check_pair(clean: Tensor, mixed: Tensor) -> tuple[int, ...]:
    """Both data sets must share the event shape; return it."""
    if tuple(clean.shape[1:]) != tuple(mixed.shape[1:]):
        raise ShapeError(
            f"ASVD: clean cutouts have shape {tuple(clean.shape[1:])} but mixtures have "
            f"{tuple(mixed.shape[1:])}; both must be on the same grid"
        )
    return tuple(int(s) for s in clean.shape[1:])


def check_ranks(
    rank_clean: object, rank_unseen: object, n_clean: int, n_mixed: int, dim: int
) -> tuple[int, int]:
    """Ranks must be positive integers that the data can support."""
    for label, value in (("rank_clean", rank_clean), ("rank_unseen", rank_unseen)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"ASVD: {label} must be a positive integer, got {value!r}")
    d0, d1 = int(rank_clean), int(rank_unseen)  # type: ignore[arg-type]
    if d0 > min(n_clean, dim):
        raise ConfigError(
            f"ASVD: rank_clean={d0} is larger than the clean data can support "
            f"(min of {n_clean} cutouts and {dim} pixels)"
        )
    if d1 > n_mixed:
        raise ConfigError(
            f"ASVD: rank_unseen={d1} is larger than the number of mixtures ({n_mixed})"
        )
    if d0 + d1 > dim:
        raise ConfigError(
            f"ASVD: rank_clean + rank_unseen = {d0 + d1} exceeds the {dim} pixels per cutout"
        )
    return d0, d1


def check_tau(tau: object) -> float | str:
    """``tau`` is a number in [0, 1] or the string ``"auto"``."""
    if isinstance(tau, str):
        if tau != "auto":
            raise ConfigError(f"ASVD: tau must be a number in [0, 1] or 'auto', got {tau!r}")
        return tau
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating, np.integer)):
        raise ConfigError(f"ASVD: tau must be a number in [0, 1] or 'auto', got {tau!r}")
    value = float(tau)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ConfigError(f"ASVD: tau must lie in [0, 1], got {tau!r}")
    return value


def check_choice(value: str, choices: tuple[str, ...], label: str) -> str:
    if value not in choices:
        raise ConfigError(f"ASVD: unknown {label} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_projection_split(projection: str, split: str) -> None:
    check_choice(projection, PROJECTIONS, "projection")
    check_choice(split, SPLITS, "split")
    if split == "wiener" and projection == "none":
        raise ConfigError(
            "ASVD: the Wiener split needs a range projection ('unit' or 'nonneg'); with "
            "projection='none' use split='components'"
        )


def check_sources(sources: object) -> tuple[str, str]:
    if (
        not isinstance(sources, (tuple, list))
        or len(sources) != 2
        or not all(isinstance(s, str) and s for s in sources)
        or sources[0] == sources[1]
    ):
        raise ConfigError(
            f"ASVD: sources must be two distinct names (clean, unseen), got {sources!r}"
        )
    return (str(sources[0]), str(sources[1]))

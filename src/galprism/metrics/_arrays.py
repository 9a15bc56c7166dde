"""Input handling shared by the metrics: torch or numpy in, validated numpy out.

Metrics are evaluated on samples that may come from the samplers (torch tensors, maybe on
a GPU, maybe requiring grad) or from files (numpy arrays). Converting once here keeps each
metric short and makes every shape or value problem a one-line :class:`ShapeError` or
:class:`InputError` that names the argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError, ShapeError

ArrayLike = Any  # numpy array, torch tensor, or anything np.asarray accepts


def to_numpy(x: ArrayLike, name: str, *, dtype: type = np.float64) -> np.ndarray:
    """Return ``x`` as a new numpy array of ``dtype`` (the input is never modified).

    Parameters
    ----------
    x
        Torch tensor (any device, grad or not) or array-like.
    name
        How the argument is called in error messages.
    dtype
        Floating dtype of the result.

    Raises
    ------
    InputError
        If ``x`` cannot be read as a real numeric array.
    """
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise InputError(f"{name}: complex tensors are not supported")
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.array(x, dtype=dtype, copy=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: cannot be read as a real numeric array ({exc})") from None
    return arr


def require_finite(arr: np.ndarray, name: str) -> None:
    """Raise :class:`InputError` naming ``name`` if ``arr`` has NaN or inf values."""
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InputError(f"{name}: contains {bad} non-finite value(s) (NaN or inf)")


def require_ndim(arr: np.ndarray, name: str, min_ndim: int, what: str) -> None:
    """Raise :class:`ShapeError` if ``arr`` has fewer than ``min_ndim`` axes."""
    if arr.ndim < min_ndim:
        raise ShapeError(f"{name}: has shape {arr.shape}, expected {what}")


def as_samples(x: ArrayLike, name: str, *, dtype: type = np.float64) -> np.ndarray:
    """Return a sample set as a finite ``(N, D)`` array, flattening trailing axes.

    A 1-D input is read as ``N`` scalar samples. Images ``(N, C, H, W)`` become
    ``(N, C*H*W)`` vectors, as distances between samples are computed on flat vectors.
    """
    arr = to_numpy(x, name, dtype=dtype)
    require_ndim(arr, name, 1, "(n_samples, ...) ")
    arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ShapeError(f"{name}: is empty (shape {arr.shape})")
    require_finite(arr, name)
    return arr

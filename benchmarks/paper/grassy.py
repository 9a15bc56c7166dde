"""Grassy digits: the contrastive image problem of the DDPRISM paper, from local files.

Two sources, ``("grass", "digit")``, and two views:

* ``"grass"``: random grass crops only (the background source alone);
* ``"mixed"``: a new, independent grass crop plus ``amplitude x`` an MNIST digit.

Every observation gets additive Gaussian noise of standard deviation ``noise_sigma``
and can be seen on a coarser grid (``downsample`` = 2 or 4, block *mean*, written as the
exact operator ``Scale(1/f^2) @ Downsample(f)`` so that ``y = A x + n`` holds to float
precision). The data come from ``mnist_5k.csv.gz`` (5,000 digits, 784 pixel values 0-255
then the label per row) and ``grass.png`` (512x512 greyscale) in an image folder
(:func:`default_data_dir`).

Shapes (``S`` = ``size``, ``f`` = ``downsample``, ``N`` observations)
---------------------------------------------------------------------
* ``x``: ``(N, 2, 1, S, S)`` float32 truth per source in ``[0, 1]``: the grass crop and the
  *unscaled* digit (zeros in the grass view). The amplitude lives in the operator
  (source amplitudes fold into A, as in the DDPRISM paper).
* ``y``: ``(N, 1, S/f, S/f)`` float32 observations, ``y = operator.apply(x) + noise``.
* ``operator``: a :class:`~galprism.operators.SourceSum` over the two sources:
  ``[D, D @ Scale(amplitude)]`` in the mixed view and ``[D, Zero]`` in the grass view, with
  ``D`` the identity or the block-mean downsampling.

Splits
------
Digits are split by index with a permutation drawn from ``split_seed`` (70 % train, 10 %
validation, 20 % test), so train and test never share a digit. Grass crops of each split
come from disjoint bands of rows of the texture (train rows 0-319, val 320-415, test
416-511), so test crops share no pixel with training crops. Within a split, each view
draws its crops, digits and noise from its own random stream
(``SeedSequence([seed, split, view])``): the two views never reuse a draw.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from galprism.errors import ConfigError, InputError
from galprism.operators import (
    Composition,
    Downsample,
    Identity,
    LinearOperator,
    Scale,
    SourceSum,
    Zero,
)

__all__ = [
    "SOURCES",
    "SPLITS",
    "VIEWS",
    "GRASS_ROWS",
    "GrassyView",
    "default_data_dir",
    "load_mnist",
    "load_grass",
    "digit_indices",
    "grassy_view",
    "grassy_problem",
]

SOURCES: tuple[str, str] = ("grass", "digit")
VIEWS: tuple[str, str] = ("grass", "mixed")
SPLITS: tuple[str, str, str] = ("train", "val", "test")
#: Rows ``[start, stop)`` of grass.png that each split crops from (disjoint bands).
GRASS_ROWS: dict[str, tuple[int, int]] = {"train": (0, 320), "val": (320, 416), "test": (416, 512)}
DIGIT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
MNIST_FILE = "mnist_5k.csv.gz"
GRASS_FILE = "grass.png"
MNIST_SIDE = 28
ENV_VAR = "GALPRISM_IMAGE_DATA"
#: the data folder of ``galprism simulate``; its ``images/`` holds the two files
DATA_ENV_VAR = "GALPRISM_DATA_DIR"


@dataclass(frozen=True)
class GrassyView:
    """One view of the grassy-digits problem (see the module docstring for shapes).

    Attributes
    ----------
    name
        ``"grass"`` or ``"mixed"``.
    x
        Truth per source, ``(N, 2, 1, S, S)``; the digit slot is unscaled (zeros in the grass view).
    y
        Observations ``(N, 1, S/f, S/f)``.
    noise_var
        Variance of the additive Gaussian noise of ``y``.
    operator
        ``SourceSum`` with ``y = operator.apply(x) + noise``.
    labels
        Digit class per observation, ``-1`` in the grass view.
    digit_index
        Row of the digit in ``mnist_5k.csv.gz``, ``-1`` in the grass view.
    crop_origin
        ``(N, 2)`` top-left (row, column) of each grass crop in ``grass.png``.
    """

    name: str
    x: Tensor
    y: Tensor
    noise_var: float
    operator: SourceSum
    labels: Tensor
    digit_index: Tensor
    crop_origin: Tensor
    split: str
    seed: int
    split_seed: int
    amplitude: float
    downsample: int
    size: int
    sources: tuple[str, str] = SOURCES

    @property
    def sources_in_mixture(self) -> Tensor:
        """Each source as it appears in the observation, on the fine grid: ``(N, 2, 1, S, S)``.

        The digit slot is ``amplitude * digit`` in the mixed view (zeros in the grass
        view), so ``sources_in_mixture.sum(1)`` is the noiseless, full-resolution mixture.
        """
        scale = torch.tensor([1.0, self.amplitude if self.name == "mixed" else 0.0])
        return self.x * scale.view(1, 2, 1, 1, 1).to(self.x.dtype)

    def __len__(self) -> int:
        return int(self.y.shape[0])


def default_data_dir() -> Path:
    """Folder holding ``mnist_5k.csv.gz`` and ``grass.png``.

    ``$GALPRISM_IMAGE_DATA`` when set, else ``$GALPRISM_DATA_DIR/images``.

    Raises
    ------
    ConfigError
        If neither variable is set.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    data = os.environ.get(DATA_ENV_VAR)
    if data:
        return Path(data) / "images"
    raise ConfigError(
        f"grassy-digits data folder unknown: pass data_dir=... or set ${ENV_VAR} (the folder) "
        f"or ${DATA_ENV_VAR} (its parent, holding images/)"
    )


def _resolve(data_dir: str | Path | None, name: str) -> Path:
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    path = folder / name
    if not path.is_file():
        raise InputError(
            f"{path}: grassy-digits data file not found (pass data_dir=... or set ${ENV_VAR})"
        )
    return path


@lru_cache(maxsize=4)
def _load_mnist_cached(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{path}: cannot read the MNIST table ({err})") from err
    side2 = MNIST_SIDE * MNIST_SIDE
    if table.shape[1] != side2 + 1:
        raise InputError(
            f"{path}: expected {side2 + 1} columns (784 pixels then the label), found "
            f"{table.shape[1]}"
        )
    pixels, labels = table[:, :side2], table[:, side2]
    if not np.isfinite(table).all() or pixels.min() < 0 or pixels.max() > 255:
        raise InputError(f"{path}: pixel values must be finite and within 0-255")
    if np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() > 9:
        raise InputError(f"{path}: labels (last column) must be integers 0-9")
    images = (pixels / 255.0).reshape(-1, MNIST_SIDE, MNIST_SIDE)
    images.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def load_mnist(data_dir: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Read the digits: images ``(N, 28, 28)`` float32 in ``[0, 1]`` and labels ``(N,)`` int64."""
    path = _resolve(data_dir, MNIST_FILE)
    images, labels = _load_mnist_cached(str(path), path.stat().st_mtime)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


@lru_cache(maxsize=4)
def _load_grass_cached(path: str, mtime: float) -> np.ndarray:
    # matplotlib reads PNG without extra dependencies and returns floats in [0, 1].
    import matplotlib.image as mpimg

    try:
        image = np.asarray(mpimg.imread(path), dtype=np.float32)
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{path}: cannot read the grass texture ({err})") from err
    if image.ndim == 3:  # RGB(A) -> grey; drop alpha
        image = image[..., :3].mean(axis=-1)
    if image.ndim != 2 or not np.isfinite(image).all():
        raise InputError(f"{path}: expected a finite greyscale image, got shape {image.shape}")
    if image.max() > 1.0 + 1e-6 or image.min() < 0:
        image = (image - image.min()) / max(float(image.max() - image.min()), 1e-12)
    image.setflags(write=False)
    return image


def load_grass(data_dir: str | Path | None = None) -> Tensor:
    """Read the grass texture as a ``(H, W)`` float32 tensor in ``[0, 1]``."""
    path = _resolve(data_dir, GRASS_FILE)
    return torch.from_numpy(_load_grass_cached(str(path), path.stat().st_mtime).copy())


def digit_indices(n_digits: int, split: str, split_seed: int = 0) -> Tensor:
    """Indices of the digits that belong to ``split`` (disjoint across splits).

    A permutation of ``range(n_digits)`` drawn from ``split_seed`` is cut into 70 % train,
    10 % validation and 20 % test, in that order.
    """
    _check_split(split)
    perm = np.random.default_rng(np.random.SeedSequence([split_seed, 0xD161])).permutation(n_digits)
    n_train = int(round(DIGIT_FRACTIONS["train"] * n_digits))
    n_val = int(round(DIGIT_FRACTIONS["val"] * n_digits))
    bounds = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, n_digits),
    }
    start, stop = bounds[split]
    return torch.from_numpy(np.sort(perm[start:stop]).astype(np.int64))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(
            f"grassy digits: unknown split {split!r}; choose one of {', '.join(SPLITS)}"
        )


def _fit_digits(digits: Tensor, size: int) -> Tensor:
    """Bring 28x28 digits to ``size``: centered zero padding, or area resampling when smaller."""
    if size == MNIST_SIDE:
        return digits
    if size > MNIST_SIDE:
        before = (size - MNIST_SIDE) // 2
        after = size - MNIST_SIDE - before
        return torch.nn.functional.pad(digits, (before, after, before, after))
    small = torch.nn.functional.interpolate(digits[:, None], size=(size, size), mode="area")
    return small[:, 0].clamp(0.0, 1.0)


def _stream(seed: int, split: str, view: str) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([seed, SPLITS.index(split), VIEWS.index(view)])
    )


def _observation_operator(size: int, downsample: int) -> LinearOperator:
    shape = (1, size, size)
    if downsample == 1:
        return Identity(shape)
    coarse = Downsample(downsample, shape)
    # Block mean keeps observed values in [0, ~1] so that noise_sigma means the same at
    # every resolution; it is exactly Scale(1/f^2) after the flux-conserving block sum.
    return Composition([Scale(1.0 / downsample**2, coarse.out_shape), coarse])


def grassy_view(
    view: str,
    n: int,
    *,
    split: str = "train",
    size: int = 28,
    amplitude: float = 0.5,
    noise_sigma: float = 0.01,
    downsample: int = 1,
    seed: int = 0,
    split_seed: int = 0,
    data_dir: str | Path | None = None,
) -> GrassyView:
    """Draw ``n`` observations of one view of the grassy-digits problem.

    Parameters
    ----------
    view
        ``"grass"`` (grass only) or ``"mixed"`` (grass + ``amplitude`` x digit).
    n
        Number of observations.
    split
        ``"train"``, ``"val"`` or ``"test"``: which digits and which band of grass rows.
    size
        Side of the square crops; digits are zero-padded (``size > 28``) or area-resampled
        (``size < 28``) to match.
    amplitude
        Factor of the digit in the mixed view (folded into the operator).
    noise_sigma
        Standard deviation of the additive Gaussian noise (``>= 0``).
    downsample
        Observation grid coarsening factor (block mean); must divide ``size``.
    seed
        Seed of the draws (crops, digits, noise); recorded in the result.
    split_seed
        Seed of the digit train/val/test split; keep it fixed across experiments.
    data_dir
        Folder with ``mnist_5k.csv.gz`` and ``grass.png`` (default: :func:`default_data_dir`).

    Returns
    -------
    GrassyView
        Truth ``x``, observations ``y``, ``noise_var``, the ``SourceSum`` operator and the
        bookkeeping of every draw.

    Raises
    ------
    ConfigError
        Unknown view or split, or parameters out of range.
    InputError
        Missing or unreadable data files.
    """
    if view not in VIEWS:
        raise ConfigError(f"grassy digits: unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    _check_split(split)
    if int(n) != n or n < 1:
        raise ConfigError(f"grassy digits: n must be a positive integer, got {n!r}")
    rows = GRASS_ROWS[split]
    if int(size) != size or not 4 <= size <= rows[1] - rows[0]:
        raise ConfigError(
            f"grassy digits: size must be an integer between 4 and {rows[1] - rows[0]} (the "
            f"{split} band of grass rows), got {size!r}"
        )
    if int(downsample) != downsample or downsample < 1 or size % downsample:
        raise ConfigError(
            f"grassy digits: downsample must be a positive integer dividing size={size}, got "
            f"{downsample!r}"
        )
    if not np.isfinite(noise_sigma) or noise_sigma < 0:
        raise ConfigError(
            f"grassy digits: noise_sigma must be finite and >= 0, got {noise_sigma!r}"
        )
    if not np.isfinite(amplitude):
        raise ConfigError(f"grassy digits: amplitude must be finite, got {amplitude!r}")
    n, size, downsample = int(n), int(size), int(downsample)

    grass = load_grass(data_dir)
    rng = _stream(seed, split, view)
    height, width = grass.shape
    top = rng.integers(rows[0], rows[1] - size + 1, size=n)
    left = rng.integers(0, width - size + 1, size=n)
    # Gather all crops at once with advanced indexing instead of a Python loop.
    ar = torch.arange(size)
    r_idx = torch.from_numpy(top)[:, None, None] + ar[None, :, None]
    c_idx = torch.from_numpy(left)[:, None, None] + ar[None, None, :]
    crops = grass[r_idx, c_idx]

    x = torch.zeros((n, 2, 1, size, size), dtype=torch.float32)
    x[:, 0, 0] = crops
    labels = torch.full((n,), -1, dtype=torch.int64)
    index = torch.full((n,), -1, dtype=torch.int64)
    fine = _observation_operator(size, downsample)
    shape = (1, size, size)
    if view == "mixed":
        images, all_labels = load_mnist(data_dir)
        pool = digit_indices(images.shape[0], split, split_seed)
        if pool.numel() == 0:
            raise InputError(f"grassy digits: the {split} split holds no digits")
        # Cycle through shuffled copies of the pool: every digit is used before any repeats.
        reps = -(-n // pool.numel())
        order = np.concatenate([rng.permutation(pool.numel()) for _ in range(reps)])[:n]
        index = pool[torch.from_numpy(order)]
        labels = all_labels[index]
        x[:, 1, 0] = _fit_digits(images[index], size)
        digit_op: LinearOperator = Scale(float(amplitude), shape)
        if downsample > 1:
            digit_op = Composition([fine, digit_op])
        operator = SourceSum([fine, digit_op])
    else:
        operator = SourceSum([fine, Zero(shape, fine.out_shape)])

    clean = operator.apply(x)
    noise = torch.from_numpy(rng.standard_normal(clean.shape).astype(np.float32))
    y = clean + float(noise_sigma) * noise
    return GrassyView(
        name=view,
        x=x,
        y=y,
        noise_var=float(noise_sigma) ** 2,
        operator=operator,
        labels=labels,
        digit_index=index,
        crop_origin=torch.from_numpy(np.stack([top, left], axis=1).astype(np.int64)),
        split=split,
        seed=int(seed),
        split_seed=int(split_seed),
        amplitude=float(amplitude),
        downsample=downsample,
        size=size,
    )


def grassy_problem(
    n_grass: int,
    n_mixed: int,
    *,
    split: str = "train",
    **kwargs: object,
) -> dict[str, GrassyView]:
    """Both views of one split: ``{"grass": GrassyView, "mixed": GrassyView}``.

    The views use independent random streams (crops, digits, noise); ``kwargs`` are passed
    to :func:`grassy_view` (``size``, ``amplitude``, ``noise_sigma``, ``downsample``, ``seed``,
    ``split_seed``, ``data_dir``).
    """
    return {
        "grass": grassy_view("grass", n_grass, split=split, **kwargs),  # type: ignore[arg-type]
        "mixed": grassy_view("mixed", n_mixed, split=split, **kwargs),  # type: ignore[arg-type]
    }

"""The random 1-D manifold problem of the DDPRISM paper (its section on random manifolds).

Sources
-------
Source ``b`` lies on a smooth random curve in ``R^feat_dim`` (``feat_dim = 5``)::

    x_j(z) = sum_{f=1}^{F} a_jf / f^alpha * sin(2 pi (f b_jf z + c_jf)),   z ~ U(0, 1)

with ``F = ceil(epsilon^(-1/alpha))`` (``epsilon = 1e-3``), ``a, b, c ~ U(0, 1)`` drawn once
per source (shape ``(feat_dim, F)``), and ``alpha = 3, 4, 5`` for sources 1..3 (randman /
Rozet et al.; reference ``ddprism/rand_manifolds/random_manifolds.py`` with one manifold
dimension, so its product over manifold dimensions is the identity). Each feature is then
rescaled linearly to ``[-2, 2]`` (``MAX_SPREAD = 4``).

The reference rescales by the minimum and maximum of the very samples it draws, so a fresh
draw would be mapped differently. Here the map is part of the curve: its constants are the
range of each feature over a dense grid of ``z`` in ``[0, 1]`` (``2**16 + 1`` points), which
is the limit of the reference's sample range. The error of a grid extremum is second order
in the spacing ``h``: at most ``max|x''| h^2 / 8``, below 1e-8 after rescaling for these
curves. Every draw, now or later, therefore uses the same map and lies in ``[-2, 2]``
(values are clipped to absorb that 1e-8).

Observations
------------
``y = A sum_b w_b x_b + n`` in ``R^obs_dim`` (``obs_dim = 3``): one matrix ``A`` per
observation with independent standard normal entries and rows scaled to unit norm, shared
by the sources of that observation; ``n ~ N(0, sigma^2 I)`` with ``sigma = 0.01``.

* Contrastive variant (:func:`contrastive_problem`): ``n_sources`` views; view ``k`` holds
  sources ``1..k`` (``w_b = 1`` for ``b <= k``, absent otherwise).
* Mixed variant (:func:`mixed_problem`), from the reference's
  ``rand_manifolds/mixture_matrix/train_mixing_matrix.py`` (``get_dataset``) and its
  ``config_base.py``: one view per source; in view ``v`` the matrix of source ``b`` is
  ``A_i * (f_mix + (1 - f_mix) * delta_vb)``, i.e. the view's own source at full weight
  and every other source scaled by ``f_mix`` (``f_mix = 0`` gives one clean view per
  source, ``f_mix = 1`` identical mixtures). With ``source_mix_varies`` (the reference's
  option of the same name, used for its ``f_mix = 1`` figure) each source gets its own
  random ``A`` instead of sharing one. The reference's mixed configuration has two sources
  with ``alpha = (3, 4)``, noise 0.01 and 65,536 observations per view.

Independence (a defect of the reference avoided here): the reference's contrastive data
reuse the same source draws, matrices and noise in every view (view 2 is view 1 plus one
more source). Here every view has its own source positions ``z``, matrices and noise, from
separate random streams.

Randomness
----------
Everything derives from one integer ``seed`` through :class:`numpy.random.SeedSequence`
streams named by fixed keys (curve of source ``b``; positions, matrices and noise of view
``v``), so source ``b``'s curve is the same whatever the number of sources, and the
problem is reproducible on any platform. :meth:`ManifoldProblem.sample_source` draws fresh
truth samples from a stream keyed by the problem seed and its own ``seed``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from galprism.errors import ConfigError
from galprism.operators import LinearOperator, MatrixOperator, SourceSum, Zero

__all__ = [
    "MAX_SPREAD",
    "PAPER_ALPHAS",
    "ManifoldConfig",
    "ManifoldCurve",
    "ManifoldView",
    "ManifoldProblem",
    "make_manifold_problem",
    "contrastive_problem",
    "mixed_problem",
]

#: Width of the range every feature is rescaled to, ``[-2, 2]``; also PSNR's peak value.
MAX_SPREAD = 4.0
#: Smoothness exponents of sources 1, 2, 3.
PAPER_ALPHAS = (3.0, 4.0, 5.0)
#: Precision parameter fixing the frequency cutoff ``ceil(epsilon^(-1/alpha))``.
EPSILON = 1e-3
#: Grid size used to find each feature's range over ``z`` in ``[0, 1]``.
RANGE_GRID = 2**16 + 1

# Stream keys of the SeedSequence tree (first element of the spawn key).
_KEY_CURVE, _KEY_CONTRASTIVE, _KEY_MIXED, _KEY_FRESH = 0, 1, 2, 3
_KEY_Z, _KEY_A, _KEY_NOISE = 0, 1, 2


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent generator for the stream ``key`` of ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


@dataclass(frozen=True)
class ManifoldCurve:
    """One source's random curve and its fixed rescaling to ``[-2, 2]``.

    Attributes
    ----------
    alpha
        Smoothness exponent.
    a, b, c
        Coefficients of shape ``(feat_dim, F)``.
    lo, hi
        Range of each raw feature over ``z`` in ``[0, 1]``, shape ``(feat_dim,)``.
    """

    alpha: float
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def random(
        cls, rng: np.random.Generator, alpha: float, feat_dim: int = 5, epsilon: float = EPSILON
    ) -> ManifoldCurve:
        """Draw the coefficients of a curve and compute its rescaling constants.

        Parameters
        ----------
        rng
            Generator the coefficients are drawn from.
        alpha
            Smoothness exponent (larger is smoother).
        feat_dim
            Dimension of the space the curve lives in.
        epsilon
            Precision parameter: frequencies run from 1 to ``ceil(epsilon^(-1/alpha))``.
        """
        cutoff = math.ceil(epsilon ** (-1.0 / alpha))
        a, b, c = rng.uniform(size=(3, feat_dim, cutoff))
        curve = cls(alpha, a, b, c, np.zeros(feat_dim), np.ones(feat_dim))
        lo = np.full(feat_dim, np.inf)
        hi = np.full(feat_dim, -np.inf)
        grid = np.linspace(0.0, 1.0, RANGE_GRID)
        for start in range(0, RANGE_GRID, 2**14):  # chunks bound the (n, D, F) temporary
            raw = curve.raw(grid[start : start + 2**14])
            lo = np.minimum(lo, raw.min(axis=0))
            hi = np.maximum(hi, raw.max(axis=0))
        for arr in (a, b, c, lo, hi):
            arr.flags.writeable = False  # curves are cached and shared between problems
        return cls(alpha, a, b, c, lo, hi)

    @property
    def feat_dim(self) -> int:
        return int(self.a.shape[0])

    @property
    def cutoff(self) -> int:
        return int(self.a.shape[1])

    def raw(self, z: np.ndarray) -> np.ndarray:
        """Un-rescaled curve ``(n, feat_dim)`` at positions ``z`` of shape ``(n,)``."""
        freq = np.arange(1, self.cutoff + 1, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)[:, None, None]
        terms = self.a / freq**self.alpha * np.sin(2 * np.pi * (freq * self.b * z + self.c))
        return terms.sum(axis=-1)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Curve points rescaled to ``[-2, 2]``, shape ``(n, feat_dim)``."""
        unit = (self.raw(z) - self.lo) / (self.hi - self.lo)
        return np.clip(MAX_SPREAD * unit - MAX_SPREAD / 2, -MAX_SPREAD / 2, MAX_SPREAD / 2)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points at uniformly random positions, shape ``(n, feat_dim)``."""
        return self(rng.uniform(size=n))

    def distance(
        self, x: np.ndarray | Tensor, grid_points: int = 2**15 + 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distance of points to the curve, and the curve position nearest each.

        A learned prior can match the truth's distribution along the curve while its
        samples scatter off it (a "thick" curve): a sliced or exact W2 at a few thousand
        samples hardly sees a scatter of 0.1 in a spread of 4, yet that scatter caps the
        posterior PSNR of the crowded views (docs/em.md). This separates the two.

        Parameters
        ----------
        x
            Points ``(n, feat_dim)`` in the rescaled space.
        grid_points
            Curve points searched (uniform in ``z``). The paper's curves move at most
            about 19 units per unit ``z`` (measured for seed 0), so with the default
            spacing a point on the curve is within 3e-4 of a grid point.

        Returns
        -------
        distance, z
            Euclidean distance ``(n,)`` to the nearest grid point and that point's ``z``.
        """
        # A k-d tree over the sampled curve (scipy) rather than a dense distance matrix:
        # 32k curve points times millions of samples would not fit in memory.
        from scipy.spatial import cKDTree

        points = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != self.feat_dim:
            raise ConfigError(
                f"manifold curve: points must have shape (n, {self.feat_dim}), got {points.shape}"
            )
        z = np.linspace(0.0, 1.0, grid_points)
        dist, index = cKDTree(self(z)).query(points)
        return dist, z[index]


@dataclass(frozen=True)
class ManifoldConfig:
    """Settings of a manifold problem (recorded with every output that uses it).

    Attributes
    ----------
    n_sources
        Number of sources (1 to ``len(alphas)``).
    n_obs
        Observations per view.
    seed
        Root seed of every random draw.
    variant
        ``"contrastive"`` (view ``k`` holds sources ``1..k``) or ``"mixed"``.
    f_mix
        Weight of the other sources in each view of the mixed variant.
    source_mix_varies
        Mixed variant only: each source gets its own random matrix.
    noise_sigma
        Standard deviation of the Gaussian observation noise.
    alphas
        Smoothness exponent of each source (the first ``n_sources`` are used).
    feat_dim, obs_dim
        Source and observation dimensions.
    epsilon
        Precision parameter of the frequency cutoff.
    """

    n_sources: int = 2
    n_obs: int = 65536
    seed: int = 0
    variant: str = "contrastive"
    f_mix: float = 0.0
    source_mix_varies: bool = False
    noise_sigma: float = 0.01
    alphas: tuple[float, ...] = PAPER_ALPHAS
    feat_dim: int = 5
    obs_dim: int = 3
    epsilon: float = EPSILON

    def __post_init__(self) -> None:
        where = "manifold problem"
        if self.variant not in ("contrastive", "mixed"):
            raise ConfigError(
                f"{where}: variant must be 'contrastive' or 'mixed', got {self.variant!r}"
            )
        if not 1 <= self.n_sources <= len(self.alphas):
            raise ConfigError(
                f"{where}: n_sources must be between 1 and {len(self.alphas)} (one alpha per "
                f"source), got {self.n_sources}"
            )
        if self.n_obs < 1:
            raise ConfigError(f"{where}: n_obs must be at least 1, got {self.n_obs}")
        if not 0.0 <= self.f_mix <= 1.0:
            raise ConfigError(f"{where}: f_mix must lie in [0, 1], got {self.f_mix}")
        if self.variant == "contrastive" and (self.f_mix != 0.0 or self.source_mix_varies):
            raise ConfigError(
                f"{where}: f_mix and source_mix_varies only apply to the mixed variant"
            )
        if not self.noise_sigma > 0:
            raise ConfigError(f"{where}: noise_sigma must be positive, got {self.noise_sigma}")
        if self.feat_dim < 1 or self.obs_dim < 1:
            raise ConfigError(f"{where}: feat_dim and obs_dim must be positive")
        if not 0 < self.epsilon < 1 or any(a <= 0 for a in self.alphas):
            raise ConfigError(f"{where}: need 0 < epsilon < 1 and positive alphas")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ConfigError(f"{where}: seed must be a non-negative integer, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary of the settings."""
        d = asdict(self)
        d["alphas"] = list(self.alphas)
        return d

    def weights(self) -> np.ndarray:
        """``(n_views, n_sources)`` weight of each source in each view (0 = absent)."""
        k = self.n_sources
        if self.variant == "contrastive":
            return np.tril(np.ones((k, k)))
        return self.f_mix * np.ones((k, k)) + (1.0 - self.f_mix) * np.eye(k)


@dataclass
class ManifoldView:
    """One view: observations, their operator and the truth behind them.

    Attributes
    ----------
    name
        ``"view1"``, ``"view2"``, ...
    sources
        Indices (0-based) of the sources present in this view.
    weights
        Weight of every source in this view (0 for an absent source).
    x
        True sources ``(N, K, feat_dim)``; rows of absent sources are NaN so that they
        cannot be mistaken for data.
    y
        Observations ``(N, obs_dim)``.
    noise_var
        Noise variance of every observed value ``(N, obs_dim)``.
    matrices
        Effective per-source matrices ``(N, K, obs_dim, feat_dim)`` (weight included,
        zero for absent sources).
    operator
        :class:`~galprism.operators.SourceSum` of batched
        :class:`~galprism.operators.MatrixOperator` (``Zero`` for absent sources):
        ``y = operator.apply(x) + noise``.
    """

    name: str
    sources: tuple[int, ...]
    weights: tuple[float, ...]
    x: Tensor
    y: Tensor
    noise_var: Tensor
    matrices: Tensor
    operator: SourceSum = field(repr=False)

    @property
    def n_obs(self) -> int:
        return int(self.y.shape[0])


@dataclass
class ManifoldProblem:
    """A generated manifold problem: its settings, source curves and views."""

    config: ManifoldConfig
    curves: list[ManifoldCurve]
    views: list[ManifoldView]

    @property
    def source_names(self) -> list[str]:
        return [f"source{b + 1}" for b in range(self.config.n_sources)]

    def sample_source(
        self, source: int, n: int, seed: int = 0, *, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Fresh truth samples of one source, e.g. for the prior Sinkhorn divergence.

        Parameters
        ----------
        source
            0-based source index.
        n
            Number of samples.
        seed
            Seed of this draw; the stream also depends on the problem seed and never
            overlaps the streams the views were drawn from.
        dtype
            Torch dtype of the result.

        Returns
        -------
        Tensor
            ``(n, feat_dim)`` samples.
        """
        if not 0 <= source < self.config.n_sources:
            raise ConfigError(
                f"manifold problem: source index {source} out of range for "
                f"{self.config.n_sources} source(s)"
            )
        if n < 1 or int(seed) != seed or seed < 0:
            raise ConfigError(
                f"manifold problem: need n >= 1 and a non-negative integer seed (got {n}, {seed})"
            )
        rng = _rng(self.config.seed, _KEY_FRESH, source, int(seed))
        return torch.from_numpy(self.curves[source].sample(n, rng)).to(dtype)


def _unit_row_matrices(rng: np.random.Generator, n: int, rows: int, cols: int) -> np.ndarray:
    a = rng.standard_normal((n, rows, cols))
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _make_view(
    config: ManifoldConfig, curves: Sequence[ManifoldCurve], v: int, dtype: torch.dtype
) -> ManifoldView:
    cfg = config
    key = _KEY_CONTRASTIVE if cfg.variant == "contrastive" else _KEY_MIXED
    weights = cfg.weights()[v]
    present = tuple(int(b) for b in np.flatnonzero(weights))
    n, k = cfg.n_obs, cfg.n_sources

    x = np.full((n, k, cfg.feat_dim), np.nan)
    for b in present:
        x[:, b] = curves[b].sample(n, _rng(cfg.seed, key, v, _KEY_Z, b))

    rng_a = _rng(cfg.seed, key, v, _KEY_A)
    if cfg.source_mix_varies:
        base = np.stack(
            [_unit_row_matrices(rng_a, n, cfg.obs_dim, cfg.feat_dim) for _ in range(k)], 1
        )
    else:
        base = np.repeat(
            _unit_row_matrices(rng_a, n, cfg.obs_dim, cfg.feat_dim)[:, None], k, axis=1
        )
    matrices = base * weights[None, :, None, None]

    clean = np.einsum("nkij,nkj->ni", matrices[:, list(present)], x[:, list(present)])
    noise = cfg.noise_sigma * _rng(cfg.seed, key, v, _KEY_NOISE).standard_normal(clean.shape)
    y = clean + noise

    t_matrices = torch.from_numpy(matrices).to(dtype)
    ops: list[LinearOperator] = [
        MatrixOperator(t_matrices[:, b].contiguous())
        if weights[b] != 0
        else Zero(cfg.feat_dim, cfg.obs_dim)
        for b in range(k)
    ]
    return ManifoldView(
        name=f"view{v + 1}",
        sources=present,
        weights=tuple(float(w) for w in weights),
        x=torch.from_numpy(x).to(dtype),
        y=torch.from_numpy(y).to(dtype),
        noise_var=torch.full(y.shape, cfg.noise_sigma**2, dtype=dtype),
        matrices=t_matrices,
        operator=SourceSum(ops),
    )


@functools.lru_cache(maxsize=32)
def _curve(seed: int, source: int, alpha: float, feat_dim: int, epsilon: float) -> ManifoldCurve:
    """Curve of one source; cached because finding its range is the costly part."""
    return ManifoldCurve.random(_rng(seed, _KEY_CURVE, source), alpha, feat_dim, epsilon)


def make_manifold_problem(
    config: ManifoldConfig, *, dtype: torch.dtype = torch.float32
) -> ManifoldProblem:
    """Generate a manifold problem from its settings (deterministic in ``config.seed``).

    Parameters
    ----------
    config
        Settings; see :class:`ManifoldConfig`.
    dtype
        Torch dtype of the tensors (data are drawn in float64 and cast).

    Returns
    -------
    ManifoldProblem
    """
    curves = [
        _curve(int(config.seed), b, float(alpha), int(config.feat_dim), float(config.epsilon))
        for b, alpha in enumerate(config.alphas[: config.n_sources])
    ]
    views = [_make_view(config, curves, v, dtype) for v in range(config.n_sources)]
    return ManifoldProblem(config=config, curves=curves, views=views)


def contrastive_problem(
    n_sources: int = 2,
    n_obs: int = 65536,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> ManifoldProblem:
    """The contrastive problem: view ``k`` holds sources ``1..k`` (paper Table 1).

    Parameters
    ----------
    n_sources
        2 or 3 in the paper.
    n_obs
        Observations per view (the paper: 65,536).
    seed
        Root seed.
    dtype
        Torch dtype of the tensors.
    **kwargs
        Other :class:`ManifoldConfig` fields (``noise_sigma``, ``alphas`` ...).
    """
    return make_manifold_problem(
        ManifoldConfig(
            n_sources=n_sources, n_obs=n_obs, seed=seed, variant="contrastive", **kwargs
        ),
        dtype=dtype,
    )


def mixed_problem(
    f_mix: float = 0.1,
    n_sources: int = 2,
    n_obs: int = 65536,
    seed: int = 0,
    *,
    source_mix_varies: bool = False,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> ManifoldProblem:
    """The mixed problem: view ``v`` holds source ``v`` plus ``f_mix`` times the others.

    Parameters
    ----------
    f_mix
        Weight of the other sources (the paper's Table 1 row: 0.1).
    n_sources
        Number of sources and views (the paper: 2).
    n_obs
        Observations per view.
    seed
        Root seed.
    source_mix_varies
        Give each source its own random matrix.
    dtype
        Torch dtype of the tensors.
    **kwargs
        Other :class:`ManifoldConfig` fields.
    """
    return make_manifold_problem(
        ManifoldConfig(
            n_sources=n_sources,
            n_obs=n_obs,
            seed=seed,
            variant="mixed",
            f_mix=f_mix,
            source_mix_varies=source_mix_varies,
            **kwargs,
        ),
        dtype=dtype,
    )

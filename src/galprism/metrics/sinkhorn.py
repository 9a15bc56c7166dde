"""Debiased Sinkhorn divergence between two sample sets, as the DDPRISM paper defines it.

Definition (reference ``ddprism/metrics/metrics.py``; docs/method.md section 6)::

    S(u, v) = OT(u, v) - OT(u[:n//2], u[-n//2:]) / 2 - OT(v[:m//2], v[-m//2:]) / 2

where ``OT(p, q) = <P, M>`` is the transport cost (without the entropy term) of the
entropic plan ``P`` that POT's log-domain Sinkhorn (``ot.sinkhorn2``,
``method='sinkhorn_log'``) returns for uniform weights and the squared Euclidean cost
``M = ot.dist(p, q)``, with ``reg = 1e-3``, ``numItermax = 1024``, ``stopThr = 1e-2``.
The two self terms ("half-split" debiasing) compare the first and the last half of each
set, so ``S`` is about zero for two sample sets of one distribution and can be slightly
negative.

Caveat of that definition (measured, see ``docs/metrics.md``): POT stops when the L2 norm
of the column-marginal error is below ``stopThr``. With uniform weights the marginal has
norm ``1/sqrt(n)``, so the test is relative to ``n``: at ``n = 16384`` it usually passes
after the first iteration and the plan is far from converged. The value therefore depends
on ``n`` beyond sampling noise, and figures are comparable with the paper's only at the
paper's ``n_samples = 16384``. :class:`SinkhornResult` records the iterations used.

POT does the Sinkhorn iterations (no hand-written solver). The torch backend in float32
is the fastest on CPU and needs half the memory; float64 numpy gives the same value to
about 1e-3 relative or better (see ``docs/metrics.md`` for timings).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import ot
import torch

from ..errors import ConfigError, ShapeError
from ._arrays import ArrayLike, as_samples

__all__ = ["SinkhornResult", "sinkhorn_divergence", "sinkhorn_divergence_details", "transport_cost"]

#: The paper's settings.
PAPER_REG = 1e-3
PAPER_MAX_ITER = 1024
PAPER_STOP_THR = 1e-2
PAPER_N_SAMPLES = 16384

_BACKENDS = ("torch", "numpy")
_DTYPES = {"float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64)}


@dataclass(frozen=True)
class SinkhornResult:
    """The divergence and the three transport costs it is made of.

    Attributes
    ----------
    divergence
        ``ot_uv - ot_uu / 2 - ot_vv / 2``.
    ot_uv, ot_uu, ot_vv
        Transport costs between ``u`` and ``v`` and between the halves of each set.
    n_u, n_v
        Number of samples of each set actually used (``min(len, n_samples)``).
    iterations
        Sinkhorn iterations run for (uv, uu, vv).
    converged
        Whether POT's stopping test passed for (uv, uu, vv) before ``max_iter``.
    settings
        ``reg``, ``max_iter``, ``stop_thr``, ``backend``, ``dtype``, ``device``.
    """

    divergence: float
    ot_uv: float
    ot_uu: float
    ot_vv: float
    n_u: int
    n_v: int
    iterations: tuple[int, int, int]
    converged: tuple[bool, bool, bool]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary of all fields."""
        d = asdict(self)
        d["iterations"] = list(self.iterations)
        d["converged"] = list(self.converged)
        return d


def transport_cost(
    p: np.ndarray | torch.Tensor,
    q: np.ndarray | torch.Tensor,
    *,
    reg: float = PAPER_REG,
    max_iter: int = PAPER_MAX_ITER,
    stop_thr: float = PAPER_STOP_THR,
) -> tuple[float, int, bool]:
    """Entropic transport cost ``<P, M>`` between two equally weighted point clouds.

    ``p`` and ``q`` must be of the same kind (both numpy or both torch, same dtype and
    device): POT picks its backend from them.

    Returns
    -------
    cost, iterations, converged
        The cost, the number of Sinkhorn iterations run, and whether POT's stopping test
        passed.
    """
    m = ot.dist(p, q)  # squared Euclidean
    empty = m[:0, 0]  # empty weights of the right backend: POT then uses uniform ones
    # Non-convergence is reported through the return value instead of a warning. With
    # log=True POT also exponentiates the log-potentials for its log dict, which overflows
    # for reg = 1e-3 in numpy; those values are unused.
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("ignore", UserWarning)
        cost, log = ot.sinkhorn2(
            empty,
            empty,
            m,
            reg,
            method="sinkhorn_log",
            numItermax=max_iter,
            stopThr=stop_thr,
            log=True,
            warn=False,
        )
    del m
    iterations = int(log["niter"]) + 1
    last_err = float(log["err"][-1]) if len(log["err"]) else float("inf")
    return float(cost), iterations, bool(last_err < stop_thr)


def _prepare(
    x: ArrayLike, name: str, n_samples: int, backend: str, dtype: str, device: str | None
) -> np.ndarray | torch.Tensor:
    arr = as_samples(x, name)[:n_samples]
    if arr.shape[0] < 2:
        raise ShapeError(
            f"{name}: needs at least 2 samples for the half-split debiasing, got {arr.shape[0]}"
        )
    np_dtype, torch_dtype = _DTYPES[dtype]
    if backend == "numpy":
        return arr.astype(np_dtype)
    return torch.from_numpy(arr).to(device=device or "cpu", dtype=torch_dtype)


def sinkhorn_divergence_details(
    u: ArrayLike,
    v: ArrayLike,
    *,
    n_samples: int = PAPER_N_SAMPLES,
    reg: float = PAPER_REG,
    max_iter: int = PAPER_MAX_ITER,
    stop_thr: float = PAPER_STOP_THR,
    backend: str = "torch",
    dtype: str = "float32",
    device: str | None = None,
    names: tuple[str, str] = ("u", "v"),
) -> SinkhornResult:
    """Debiased Sinkhorn divergence of the paper, with its parts and convergence record.

    Parameters
    ----------
    u, v
        Sample sets ``(N, ...)`` and ``(M, ...)`` (torch or numpy); trailing axes are
        flattened and must have the same size. Rows should be in random order: the
        first ``n_samples`` are used and the half split takes the first and last halves.
    n_samples
        Largest number of samples used from each set (the paper: 16384). The cost grows as
        ``n_samples**2`` in time and memory (16384 needs about 1 GiB per float32 matrix).
    reg, max_iter, stop_thr
        Entropic regularisation (on the raw squared distances), iteration cap and POT's
        stopping threshold; the defaults are the paper's.
    backend
        ``"torch"`` or ``"numpy"``: the array library POT runs on.
    dtype
        ``"float32"`` or ``"float64"``.
    device
        Torch device (e.g. ``"cuda"``) for the torch backend; CPU when omitted.
    names
        How ``u`` and ``v`` are called in error messages.

    Returns
    -------
    SinkhornResult

    Raises
    ------
    ShapeError
        If the sets have different feature sizes or fewer than 2 samples.
    InputError
        If a set contains non-finite values.
    ConfigError
        For an unknown backend or dtype or a non-positive setting.
    """
    if backend not in _BACKENDS:
        raise ConfigError(
            f"sinkhorn_divergence: backend must be one of {_BACKENDS}, got {backend!r}"
        )
    if dtype not in _DTYPES:
        raise ConfigError(
            f"sinkhorn_divergence: dtype must be one of {tuple(_DTYPES)}, got {dtype!r}"
        )
    if device is not None and backend != "torch":
        raise ConfigError("sinkhorn_divergence: a device can only be given with backend='torch'")
    if n_samples < 2 or reg <= 0 or max_iter < 1 or stop_thr <= 0:
        raise ConfigError(
            f"sinkhorn_divergence: need n_samples >= 2, reg > 0, max_iter >= 1, stop_thr > 0 "
            f"(got {n_samples}, {reg}, {max_iter}, {stop_thr})"
        )
    pu = _prepare(u, names[0], n_samples, backend, dtype, device)
    pv = _prepare(v, names[1], n_samples, backend, dtype, device)
    if pu.shape[1] != pv.shape[1]:
        raise ShapeError(
            f"sinkhorn_divergence: {names[0]} has {pu.shape[1]} features per sample but "
            f"{names[1]} has {pv.shape[1]}"
        )
    opts = {"reg": reg, "max_iter": max_iter, "stop_thr": stop_thr}
    hu, hv = len(pu) // 2, len(pv) // 2
    uv = transport_cost(pu, pv, **opts)
    uu = transport_cost(pu[:hu], pu[-hu:], **opts)
    vv = transport_cost(pv[:hv], pv[-hv:], **opts)
    return SinkhornResult(
        divergence=uv[0] - uu[0] / 2 - vv[0] / 2,
        ot_uv=uv[0],
        ot_uu=uu[0],
        ot_vv=vv[0],
        n_u=len(pu),
        n_v=len(pv),
        iterations=(uv[1], uu[1], vv[1]),
        converged=(uv[2], uu[2], vv[2]),
        settings={**opts, "backend": backend, "dtype": dtype, "device": str(device or "cpu")},
    )


def sinkhorn_divergence(u: ArrayLike, v: ArrayLike, **kwargs: Any) -> float:
    """Debiased Sinkhorn divergence of the paper (see :func:`sinkhorn_divergence_details`).

    Parameters
    ----------
    u, v
        Sample sets ``(N, ...)`` and ``(M, ...)``, torch or numpy.
    **kwargs
        Options of :func:`sinkhorn_divergence_details` (``n_samples``, ``backend`` ...).

    Returns
    -------
    float
        ``OT(u, v) - OT(u_1, u_2)/2 - OT(v_1, v_2)/2``.
    """
    return sinkhorn_divergence_details(u, v, **kwargs).divergence

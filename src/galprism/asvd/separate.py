"""Separation with fixed linear bases: least squares, then the Wiener-style split.

For a mixture ``v`` (or an observation ``y = A v + n`` through a linear operator ``A``) the
coefficients solve the weighted least-squares problem::

    min over h_1..h_K of || Sigma^{-1/2} (y - sum_i A_i W_i h_i) ||^2

with ``Sigma`` the per-pixel noise variance (pixels with infinite variance, or masked, get
weight 0). The components ``W_i h_i`` are then turned into sources by the split of
docs/method.md section 8::

    u_i = v * P(W_i h_i) / sum_j P(W_j h_j)

with ``P`` the projection onto the valid range. Without an operator ``v`` is the data
itself (model values fill masked pixels); through an operator there is no source-space
data to split, so ``v`` is the model mixture ``sum_j W_j h_j``.

The normal matrix is inverted through its eigendecomposition with a relative cut-off
(``rcond``), which gives the minimum-norm solution when the bases overlap or the
operator loses information (e.g. a rank-192 model seen on a 7x7 grid), instead of a
failing Cholesky.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, InputError, ShapeError
from ..operators import LinearOperator, SourceSum

__all__ = [
    "PROJECTIONS",
    "SPLITS",
    "project",
    "wiener_split",
    "separate_with_bases",
    "pseudo_inverse",
]

#: Valid-range projections: ``[0, 1]`` (images), ``>= 0`` (fluxes), or none.
PROJECTIONS = ("unit", "nonneg", "none")
#: How components become sources: the Wiener-style split, or the projected components.
SPLITS = ("wiener", "components")
_CHUNK = 4096
#: Largest number of floats materialised at once for per-observation operator images.
_MAX_FLOATS = 2**23


def project(x: Tensor, projection: str) -> Tensor:
    """Project onto the valid range: ``"unit"`` clamps to [0, 1], ``"nonneg"`` to >= 0."""
    if projection == "unit":
        return x.clamp(0.0, 1.0)
    if projection == "nonneg":
        return x.clamp_min(0.0)
    if projection == "none":
        return x
    raise ConfigError(
        f"ASVD: unknown projection {projection!r}; choose one of {', '.join(PROJECTIONS)}"
    )


def wiener_split(mixture: Tensor, components: Tensor, projection: str) -> Tensor:
    """``u_i = v * P(c_i) / sum_j P(c_j)`` for ``mixture`` ``(B, P)`` and ``components`` ``(B, K,
    P)``.

    Where every projected component is zero the mixture is shared equally (the ratio is
    undefined there and no source is preferred).
    """
    if projection == "none":
        raise ConfigError(
            "ASVD: the Wiener split needs a range projection ('unit' or 'nonneg'); with "
            "projection='none' use split='components'"
        )
    p = project(components, projection)
    total = p.sum(dim=1, keepdim=True)
    k = components.shape[1]
    tiny = torch.finfo(p.dtype).tiny ** 0.5
    ratio = torch.where(total > tiny, p / total.clamp_min(tiny), 1.0 / k)
    return mixture[:, None] * ratio


def _pinv_psd(g: Tensor, rcond: float) -> Tensor:
    """Pseudo-inverse of (a batch of) symmetric positive semi-definite matrices."""
    values, vectors = torch.linalg.eigh((g + g.transpose(-1, -2)) / 2)
    cut = rcond * values.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    inv = torch.where(values > cut, 1.0 / values.clamp_min(1e-300), torch.zeros_like(values))
    return (vectors * inv[..., None, :]) @ vectors.transpose(-1, -2)


def pseudo_inverse(bases: Sequence[Tensor], rcond: float = 1e-10) -> Tensor:
    """``(d, P)`` matrix mapping a flattened mixture to the stacked coefficients ``h``."""
    b = torch.cat([w.to(torch.float64) for w in bases], dim=1)
    return _pinv_psd(b.T @ b, rcond) @ b.T


def _weights(
    noise_var: float | Tensor | None, mask: Tensor | None, obs_shape: tuple[int, ...], n: int
) -> Tensor | None:
    """Per-pixel least-squares weights ``(B or 1, P_obs)``, or ``None`` for uniform weights."""
    w = None
    if noise_var is not None and not (
        isinstance(noise_var, (int, float)) or torch.as_tensor(noise_var).ndim == 0
    ):
        var = torch.as_tensor(noise_var, dtype=torch.float64)
        if tuple(var.shape) not in (obs_shape, (n, *obs_shape)):
            raise ShapeError(
                f"ASVD: noise_var has shape {tuple(var.shape)}, expected a scalar, {obs_shape} or "
                f"({n}, {', '.join(map(str, obs_shape))})"
            )
        if torch.isnan(var).any() or (var <= 0).any():
            raise InputError(
                "ASVD: noise_var must be positive (use inf for pixels to ignore); found NaN or "
                "values <= 0"
            )
        w = (1.0 / var).reshape(-1 if var.ndim > len(obs_shape) else 1, *obs_shape)
    elif noise_var is not None:
        value = float(noise_var)
        if not value >= 0 or value == float("inf"):
            raise InputError(f"ASVD: noise_var must be finite and >= 0, got {noise_var!r}")
    if mask is not None:
        m = torch.as_tensor(mask)
        if tuple(m.shape) not in (obs_shape, (n, *obs_shape)):
            raise ShapeError(
                f"ASVD: mask has shape {tuple(m.shape)}, expected {obs_shape} or ({n}, "
                f"{', '.join(map(str, obs_shape))})"
            )
        m = (
            m.to(torch.bool)
            .reshape(-1 if m.ndim > len(obs_shape) else 1, *obs_shape)
            .to(torch.float64)
        )
        w = m if w is None else w * m
    return None if w is None else w.reshape(w.shape[0], -1)


def _basis_images(
    op: LinearOperator, basis: Tensor, shape: tuple[int, ...], index: Tensor | None
) -> Tensor:
    """``A W`` as ``(P_obs, d)`` (shared operator) or ``(b, P_obs, d)`` (per observation)."""
    d = basis.shape[1]
    columns = basis.T.reshape(d, *shape)
    if index is None:
        return op.apply(columns).reshape(d, -1).T
    b = index.numel()
    tiled = columns.repeat(b, *([1] * len(shape)))
    images = op.take(index.repeat_interleave(d)).apply(tiled)
    return images.reshape(b, d, -1).transpose(1, 2)


def separate_with_bases(
    y: Tensor,
    bases: Sequence[Tensor],
    shape: tuple[int, ...],
    *,
    operator: LinearOperator | None = None,
    noise_var: float | Tensor | None = None,
    mask: Tensor | None = None,
    projection: str = "unit",
    split: str = "wiener",
    pinv: Tensor | None = None,
    rcond: float = 1e-10,
) -> Tensor:
    """Separate observations into ``K = len(bases)`` sources.

    Parameters
    ----------
    y
        Observations ``(B, *obs_shape)``: ``obs_shape`` is ``shape`` without an operator,
        else ``operator.out_shape``.
    bases
        ``K`` orthonormal bases ``(P, d_i)`` with ``P = prod(shape)``.
    shape
        Event shape of one source, e.g. ``(C, H, W)``.
    operator
        Optional observation operator: one :class:`LinearOperator` applied to every source,
        or a :class:`SourceSum` with one operator per source. Shared or batched (one set
        of parameters per observation).
    noise_var
        Scalar, or per-pixel ``obs_shape`` / ``(B, *obs_shape)`` variances (``inf`` = ignore).
    mask
        Boolean valid-pixel mask, ``obs_shape`` or ``(B, *obs_shape)``; masked pixels may
        hold any value, including NaN.
    projection, split
        See :data:`PROJECTIONS` and :data:`SPLITS`.
    pinv
        Precomputed :func:`pseudo_inverse` of the bases (fast path without operator/weights).
    rcond
        Relative eigenvalue cut-off of the normal-matrix pseudo-inverse.

    Returns
    -------
    Tensor
        ``(B, K, *shape)`` separated sources, in the dtype of ``y``.
    """
    if projection not in PROJECTIONS:
        raise ConfigError(
            f"ASVD: unknown projection {projection!r}; choose one of {', '.join(PROJECTIONS)}"
        )
    if split not in SPLITS:
        raise ConfigError(f"ASVD: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "wiener" and projection == "none":
        wiener_split(torch.zeros(1, 1), torch.zeros(1, 1, 1), projection)  # raises the ConfigError
    y = torch.as_tensor(y)
    if not torch.is_floating_point(y):
        y = y.to(torch.float32)
    k = len(bases)
    ops: list[LinearOperator] | None = None
    if operator is not None:
        if isinstance(operator, SourceSum):
            if operator.n_sources != k:
                raise ShapeError(
                    f"ASVD: {operator!r} has {operator.n_sources} sources, the model has {k}"
                )
            ops = list(operator.ops)
        else:
            ops = [operator] * k
        for op in ops:
            if op.in_shape != tuple(shape):
                raise ShapeError(
                    f"ASVD: {op!r} expects sources of shape {op.in_shape}, the model's are "
                    f"{tuple(shape)}"
                )
        obs_shape = tuple(ops[0].out_shape)
    else:
        obs_shape = tuple(shape)
    if y.ndim != len(obs_shape) + 1 or tuple(y.shape[1:]) != obs_shape:
        raise ShapeError(
            f"ASVD: observations have shape {tuple(y.shape)}, expected (batch, "
            f"{', '.join(map(str, obs_shape))})"
        )
    n = y.shape[0]
    batch_sizes = {op.batch_size for op in ops or []} - {None}
    if batch_sizes and batch_sizes != {n}:
        raise ShapeError(
            f"ASVD: the operator holds {sorted(batch_sizes)} observations but {n} were given"
        )
    weights = _weights(noise_var, mask, obs_shape, n)
    flat = y.reshape(n, -1)
    finite = torch.isfinite(flat)
    b64 = [w.to(torch.float64) for w in bases]
    dims = [w.shape[1] for w in b64]
    per_obs_op = bool(batch_sizes)
    shared_design: Tensor | None = None  # (P_obs, d) when every observation has the same one
    if ops is None:
        shared_design = torch.cat(b64, dim=1)
    elif not per_obs_op:
        shared_design = torch.cat(
            [_basis_images(op, w, tuple(shape), None) for op, w in zip(ops, b64, strict=True)],
            dim=1,
        )
    total_d = sum(dims)

    # Fast path (no operator, uniform weights): one precomputed pseudo-inverse, in the
    # data's precision because it is memory-bound (float32 halves the traffic).
    fast = ops is None and weights is None
    work = flat.dtype if fast else torch.float64
    p_shared: Tensor | None = None
    if fast:
        p_shared = pinv.to(torch.float64) if pinv is not None else pseudo_inverse(b64, rcond)
    elif shared_design is not None and (weights is None or weights.shape[0] == 1):
        weighted = shared_design if weights is None else shared_design * weights[0][:, None]
        p_shared = _pinv_psd(shared_design.T @ weighted, rcond) @ weighted.T
    p_work = None if p_shared is None else p_shared.to(work)
    b_work = [w.to(work) for w in b64]

    # Chunks of ~1M pixel values keep the element-wise split in cache.
    chunk = max(1, min(_CHUNK, 2**20 // max(flat.shape[1], 1)))
    if per_obs_op:
        chunk = max(1, min(chunk, _MAX_FLOATS // max(total_d * flat.shape[1], 1)))
    out = torch.empty((n, k, *shape), dtype=y.dtype)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        yb = flat[start:stop].to(work)
        if per_obs_op:
            index = torch.arange(start, stop)
            design = torch.cat(
                [
                    _basis_images(op, w, tuple(shape), index)
                    for op, w in zip(ops or [], b64, strict=True)
                ],
                dim=2,
            )
        else:
            design = shared_design
        wb = (
            None
            if weights is None
            else weights[start:stop]
            if weights.shape[0] > 1
            else weights[:1]
        )
        # Pixels that carry no information may hold anything (NaN included): zero weight
        # (noise_var = inf, mask) or not reached by the operator (a Mask inside it).
        ignore = None if wb is None else wb == 0
        if ops is not None:
            unreached = (design == 0).all(dim=-1)
            ignore = unreached if ignore is None else ignore | unreached
        bad = ~finite[start:stop] if ignore is None else ~finite[start:stop] & ~ignore
        if bad.any():
            first = start + int(bad.any(dim=1).nonzero()[0, 0])
            raise InputError(
                f"ASVD: observation {first} has non-finite values at pixels that are observed (not "
                "masked)"
            )
        if ignore is not None:
            yb = torch.where(ignore, torch.zeros((), dtype=work), yb)
        if p_work is not None:
            h = yb @ p_work.T
        else:
            assert design is not None
            images = design if design.ndim == 3 else design.expand(stop - start, *design.shape)
            w_rows = torch.ones_like(yb) if wb is None else wb.expand_as(yb)
            weighted = images * w_rows[..., None]
            g = images.transpose(1, 2) @ weighted
            rhs = (weighted.transpose(1, 2) @ yb[..., None])[..., 0]
            h = (_pinv_psd(g, rcond) @ rhs[..., None])[..., 0]
        comps = torch.stack(
            [hp @ w.T for hp, w in zip(torch.split(h.to(work), dims, dim=1), b_work, strict=True)],
            dim=1,
        )
        if split == "components":
            sources = project(comps, projection)
        else:
            # Source-space data to split: the mixture itself (model values where a pixel
            # carries no information) or, through an operator, the model mixture.
            model = comps.sum(dim=1)
            if ops is not None:
                v = model
            elif ignore is not None:
                v = torch.where(ignore, model, yb)
            else:
                v = yb
            sources = wiener_split(v, comps, projection)
        out[start:stop] = sources.reshape(stop - start, k, *shape).to(y.dtype)
    return out

"""Batched conjugate gradient for the MMPS covariance solve.

Each observation in a batch has its own symmetric positive-definite system
``C_i v_i = r_i``; CG runs on all of them at once, with inner products taken over every
axis but the first. Written here rather than taken from scipy because the matrix is only
available as a differentiable torch matvec (one VJP per source) over a whole batch.

:func:`conjugate_gradient_with_products` is the variant MMPS uses: its matvec is split into
an expensive product ``q = G p`` (the source covariances times ``A^T``) and a cheap finish
``A p = f(p, q)``, and it also returns ``G x = sum_i alpha_i G p_i``, accumulated from the
products the iterations computed anyway. By linearity that equals ``G`` applied to the
solution, without applying ``G`` once more.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["conjugate_gradient", "conjugate_gradient_with_products"]


def _bdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-batch inner product, shaped to broadcast against ``a``."""
    dims = tuple(range(1, a.ndim))
    return (a * b).sum(dim=dims, keepdim=True)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    iterations: int = 1,
    x0: Tensor | None = None,
    rtol: float = 0.0,
    curvature_floor: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Solve ``A x = b`` for a batch of symmetric positive-definite ``A``.

    Parameters
    ----------
    matvec
        ``v -> A v`` on tensors shaped like ``b``.
    b
        Right-hand sides ``(B, *shape)``.
    iterations
        Number of CG iterations (matvecs). MMPS works with very few; exact arithmetic
        converges after ``prod(shape)`` iterations.
    x0
        Initial guess (zero by default, which saves one matvec).
    rtol
        Stop early once every system's residual norm is below ``rtol * |b|``.
    curvature_floor
        ``p -> lower bound of p^T A p`` per system (shaped like :func:`_bdot`'s output).
        A system whose search direction has less curvature than this is frozen at its
        current iterate. MMPS passes ``p^T Sigma_y p``: the covariance it solves with is
        ``Sigma_y`` plus a Tweedie term that is positive semi-definite in theory but not
        for a learned network, whose Jacobian can have negative directions; CG would then
        take huge steps along them.

    Returns
    -------
    Tensor
        Approximate solution, shaped like ``b``.
    """
    if iterations < 0:
        raise ValueError(f"conjugate_gradient: iterations must be >= 0, got {iterations}")
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - matvec(x)
    p = r.clone()
    rs = _bdot(r, r)
    b_norm2 = _bdot(b, b)
    tiny = torch.finfo(b.dtype).tiny
    active = torch.ones_like(rs, dtype=torch.bool)
    for _ in range(iterations):
        if rtol > 0 and bool((rs <= (rtol**2) * b_norm2).all()):
            break
        ap = matvec(p)
        pap = _bdot(p, ap)
        if curvature_floor is not None:
            active = active & (pap >= curvature_floor(p))
        # Converged systems have p = 0 and pAp = 0: take no step instead of dividing by 0.
        alpha = torch.where(active & (pap > tiny), rs / pap.clamp_min(tiny), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _bdot(r, r)
        beta = torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return x


def conjugate_gradient_with_products(
    product: Callable[[Tensor], Tensor],
    finish: Callable[[Tensor, Tensor], Tensor],
    b: Tensor,
    *,
    iterations: int = 1,
    curvature_floor: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """CG from zero for ``A x = b`` with ``A p = finish(p, product(p))``; also ``product(x)``.

    Parameters
    ----------
    product
        ``p -> G p``, a linear map: the expensive part of the matrix-vector product. Its
        output may have other axes than ``p`` but must keep the batch axis first.
    finish
        ``(p, G p) -> A p``.
    b
        Right-hand sides ``(B, *shape)``.
    iterations
        Number of CG iterations (calls of ``product``), as in :func:`conjugate_gradient`.
    curvature_floor
        As in :func:`conjugate_gradient`.

    Returns
    -------
    x
        The iterate :func:`conjugate_gradient` returns from ``x0 = 0`` with ``rtol = 0``.
    product_x
        ``G x`` as ``sum_i alpha_i G p_i`` (equal to ``product(x)`` up to float round-off),
        or None after zero iterations, where ``x = 0`` and ``product`` was never called.
    """
    if iterations < 0:
        raise ValueError(
            f"conjugate_gradient_with_products: iterations must be >= 0, got {iterations}"
        )
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = _bdot(r, r)
    tiny = torch.finfo(b.dtype).tiny
    active = torch.ones_like(rs, dtype=torch.bool)
    product_x = None
    for _ in range(iterations):
        gp = product(p)
        ap = finish(p, gp)
        pap = _bdot(p, ap)
        if curvature_floor is not None:
            active = active & (pap >= curvature_floor(p))
        alpha = torch.where(active & (pap > tiny), rs / pap.clamp_min(tiny), torch.zeros_like(pap))
        x = x + alpha * p
        # alpha is (B, 1, ..., 1) over b's axes; G p may have a different number of axes.
        step = alpha.reshape(-1, *([1] * (gp.ndim - 1))) * gp
        product_x = step if product_x is None else product_x + step
        r = r - alpha * ap
        rs_new = _bdot(r, r)
        beta = torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return x, product_x

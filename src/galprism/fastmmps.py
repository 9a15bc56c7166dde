"""MMPS posterior denoiser that reuses the CG's covariance products: one VJP fewer per call.

:class:`galprism.posterior.JointPosterior` solves ``C v = r`` by conjugate gradient from
``v = 0`` and then applies the source covariances once more for the correction
``Cov A^T v``: ``cg_iterations + 1`` VJPs per source. But CG builds ``v = sum_i alpha_i
p_i`` from its search directions, and each iteration already computes ``Cov A^T p_i``
inside its matrix-vector product. By linearity

    Cov A^T v = sum_i alpha_i (Cov A^T p_i),

so accumulating those products with the same ``alpha_i`` gives the correction without
the last VJP: ``cg_iterations`` VJPs per source (half the VJPs at the default of one
iteration). The result equals the reference to float round-off (the same terms, summed
in another order); systems frozen by the curvature floor take ``alpha = 0`` in both.

With ``cg_iterations = 0`` both give ``v = 0``, a zero correction: the likelihood is then
ignored and the sampler draws from the prior. The reference still spends one VJP on that
zero correction; this class spends none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .diffusion.denoiser import DiffusionPrior
from .linalg import _bdot
from .posterior import JointPosterior

__all__ = ["CachedJointPosterior", "conjugate_gradient_with_products"]


def conjugate_gradient_with_products(
    covariance: Callable[[Tensor], Tensor],
    finish: Callable[[Tensor, Tensor], Tensor],
    b: Tensor,
    *,
    iterations: int,
    curvature_floor: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """CG from zero for ``A v = b`` with ``A p = finish(p, covariance(p))``.

    Parameters
    ----------
    covariance
        ``p -> Cov A^T p``: the expensive part of the matrix-vector product.
    finish
        ``(p, cov) -> A p`` from ``p`` and ``covariance(p)``.
    b
        Right-hand sides ``(N, *obs_shape)``.
    iterations, curvature_floor
        As for :func:`galprism.linalg.conjugate_gradient` (no early stop, no ``x0``).

    Returns
    -------
    v
        The same iterate as :func:`galprism.linalg.conjugate_gradient`.
    cov_v
        ``sum_i alpha_i covariance(p_i)`` = ``Cov A^T v``, or None after zero iterations.
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
    cov_x = None
    for _ in range(iterations):
        cov_p = covariance(p)
        ap = finish(p, cov_p)
        pap = _bdot(p, ap)
        if curvature_floor is not None:
            active = active & (pap >= curvature_floor(p))
        alpha = torch.where(active & (pap > tiny), rs / pap.clamp_min(tiny), torch.zeros_like(pap))
        x = x + alpha * p
        # alpha is (N, 1, ..., 1) over the observation's axes; the products carry one
        # more axis (sources): broadcast over it.
        step = alpha.reshape(alpha.shape[0], 1, *alpha.shape[1:]) * cov_p
        cov_x = step if cov_x is None else cov_x + step
        r = r - alpha * ap
        rs_new = _bdot(r, r)
        beta = torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return x, cov_x


class CachedJointPosterior(JointPosterior):
    """:class:`~galprism.posterior.JointPosterior` at ``cg_iterations`` VJPs per source and call."""

    def twisted(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`JointPosterior.twisted`, the correction taken from the CG's products."""
        sig = self._sigmas(t, x_t)
        var = sig**2
        a = self.operator
        means, vjps = [], []
        for k, prior in enumerate(self.priors):
            d, vjp = torch.func.vjp(lambda x, p=prior, s=sig[k]: p.denoise(x, s), x_t[:, k])
            means.append(d)
            vjps.append(vjp)

        def covariance(v: Tensor) -> Tensor:
            u = a.adjoint(v)
            with torch.no_grad():
                return torch.stack(
                    [var[k] * vjps[k](u[:, k])[0] for k in range(self.n_sources)], dim=1
                )

        d = torch.stack(means, dim=1).detach()
        residual = self.y - a.apply(d)
        v, correction = conjugate_gradient_with_products(
            covariance,
            lambda p, cov_p: self.noise_var * p + a.apply(cov_p),
            residual,
            iterations=self.cg_iterations,
            curvature_floor=lambda p: (self.noise_var * p * p).sum(
                dim=tuple(range(1, p.ndim)), keepdim=True
            ),
        )
        if correction is None:
            correction = torch.zeros_like(d)
        if self.trust > 0 and any(isinstance(p, DiffusionPrior) for p in self.priors):
            correction = correction * self._trust_scale(correction, sig)
        log_likelihood = -0.5 * (residual * v).flatten(1).sum(1)
        return d, (d + correction).detach(), log_likelihood.detach()

"""Fine structure the galaxy prior does not draw, as a Gaussian layer of each galaxy.

A diffusion prior learned from survey cutouts knows galaxies at the signal-to-noise it
was trained on. A galaxy hundreds of times brighter is shown to it scaled down
(:func:`~galprism.scene.model.flux_scales` or :mod:`galprism.amplitude`), so its data
constrain details far below the noise level the prior ever saw: its draws then miss the
data by tens of sigma per pixel in the core (rings, an offset core), and the blend's
reduced chi-square goes to 10-40 while the light still sums right.

Each galaxy is therefore modelled as its prior draw plus a multiplicative Gaussian
correction of its own light,

    x_k + delta_k,   delta_k ~ N(0, alpha^2 diag(m_k^2)),

``m_k = sqrt((mean_k^2 + x_k^2) / 2)`` pixel by pixel, ``mean_k`` the galaxy's
posterior-mean draw and ``x_k`` the draw being corrected (so the correction lives where
the galaxy has light, in the consensus of the draws or in this draw, and nowhere else:
no light goes to a component that belongs to no source) and ``alpha`` the blend's
relative misfit, set by the method of moments from the draws' whitened residual ``r`` at
the pixels the corrections reach: draws of the right posterior are distributed as the
truth given the data, so ``r`` is white noise, and the corrections add ``alpha^2 rho_j``
to pixel ``j``'s expected ``r_j^2``, ``rho = diag(B B^T)`` (``B`` the corrections'
operator at ``alpha = 1``, its diagonal estimated with random probes); ``alpha^2`` is
the ``rho``-weighted least-squares fit of the excess ``r_j^2 - 1``. A blend whose draws
fit to the noise (a residual energy below the 1e-4 tail of its distribution under the
draws' model) gets ``alpha = 0`` and no correction; faint galaxies of a blend with a
bright one get corrections in proportion to their own (faint) light.

Given the draws, ``delta`` is linear-Gaussian: each sample's correction is drawn from its
exact conditional by perturb-and-solve (a conjugate-gradient solve of
``(B^T B + I) z = B^T (r - e) + z0`` with ``e``, ``z0`` standard normal; ``delta = alpha
m z``), so the posterior keeps the uncertainty of the correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import chi2
from torch import Tensor

from ..linalg import conjugate_gradient
from ..operators import LinearOperator

__all__ = ["FineStructure", "refine_galaxies"]


@dataclass(frozen=True)
class FineStructure:
    """Settings of :func:`refine_galaxies`.

    Attributes
    ----------
    iterations
        Most conjugate-gradient iterations of the solve.
    rtol
        Stop once every sample's normal-equation residual is below ``rtol`` times its
        right-hand side.
    probes
        Random probes of the trace estimate.
    spread
        Standard deviation (stamp pixels) of the Gaussian with which the draws' light is
        blurred and added to it, to let corrections reach a galaxy's wings (0: none).
    false_alarm
        Probability that draws which fit to the noise get a correction (the test's
        size).
    """

    iterations: int = 100
    rtol: float = 1e-4
    probes: int = 16
    false_alarm: float = 1e-4
    spread: float = 2.0


def _blur(m: Tensor, sigma: float) -> Tensor:
    """``m`` ``(..., h, w)`` convolved with a unit-sum Gaussian of ``sigma`` pixels, zero
    beyond its edges."""
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=m.dtype)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    shape = m.shape
    flat = m.reshape(-1, 1, *shape[-2:])
    flat = torch.nn.functional.conv2d(flat, g.reshape(1, 1, -1, 1), padding=(r, 0))
    flat = torch.nn.functional.conv2d(flat, g.reshape(1, 1, 1, -1), padding=(0, r))
    return flat.reshape(shape)


def refine_galaxies(
    operator: LinearOperator,
    y_white: Tensor,
    valid: Tensor,
    x: Tensor,
    generator: torch.Generator,
    settings: FineStructure = FineStructure(),
    *,
    support: Tensor | None = None,
) -> tuple[Tensor, float]:
    """Each draw's galaxies plus a draw of their fine structure given the data.

    Parameters
    ----------
    operator
        The galaxies' operator onto the whitened (marginal) likelihood, whose noise is
        white with unit variance, input ``(B, K, C, h, w)``; one observation (its
        ``batch_size`` None or 1).
    y_white
        ``(1, *obs_shape)`` the whitened data.
    valid
        ``obs_shape`` or broadcastable: True at pixels the likelihood sees.
    x
        ``(S, K, C, h, w)`` float64 posterior draws of the galaxies.
    generator
        Source of the random probes and perturbations (CPU).
    settings
        Solver settings.
    support
        Broadcastable to ``(K, C, h, w)``: True where each galaxy's corrections may put
        light (its own pixels, not a neighbour's); default everywhere.

    Returns
    -------
    x, alpha
        The corrected draws and the blend's relative misfit ``alpha`` (0: unchanged).
    """
    n_s = x.shape[0]
    dt = torch.float64
    op = operator
    if getattr(operator, "batch_size", None) is not None:
        op = operator.take(torch.zeros(n_s, dtype=torch.long))
    seen = valid.to(dt).expand(y_white.shape[1:])
    resid = (y_white.to(dt) - op.apply(x)) * seen
    m = ((x.mean(0) ** 2 + x**2) / 2).sqrt()
    if settings.spread > 0:
        # The draws of a galaxy shown to the prior scaled down have a faint galaxy's
        # extent: its corrections must reach its own wings beyond them.
        m = m + _blur(m, settings.spread)
    if support is not None:
        # Overlapping corrections of two galaxies would trade light freely between them.
        m = m * support.to(dt)

    def forward(z: Tensor) -> Tensor:
        return op.apply(m * z) * seen

    def backward(r: Tensor) -> Tensor:
        return m * op.adjoint(r * seen)

    # The variance each pixel gets from the corrections at alpha = 1, diag(B B^T), by
    # random probes.
    probes = torch.randn(
        (n_s * ((settings.probes + n_s - 1) // n_s), *x.shape[1:]), generator=generator, dtype=dt
    )
    reach = torch.cat([forward(p) ** 2 for p in probes.split(n_s)]).mean(0)
    # Per pixel E r^2 = 1 + alpha^2 reach; pixels the corrections do not reach (an
    # undetected source, light beyond a galaxy's stamp) carry no weight in the estimate.
    t1 = float(reach.sum())
    t2 = float((reach**2).sum())
    if not t2 > 0:
        return x, 0.0
    energy = float((reach * resid**2).sum(tuple(range(1, resid.ndim))).mean())
    # With alpha = 0, sum reach r^2 is a weighted sum of chi-squares dominated by a bright
    # galaxy's core; its tail is that of (t2 / t1) chi2(t1^2 / t2) (Satterthwaite).
    if not energy > t2 / t1 * float(chi2.isf(settings.false_alarm, t1**2 / t2)):
        return x, 0.0
    alpha = ((energy - t1) / t2) ** 0.5
    e = torch.randn(resid.shape, generator=generator, dtype=dt) * seen
    z0 = torch.randn(x.shape, generator=generator, dtype=dt)
    rhs = alpha * backward(resid - e) + z0

    def normal(v: Tensor) -> Tensor:
        return alpha**2 * backward(forward(v)) + v

    z = conjugate_gradient(normal, rhs, iterations=settings.iterations, x0=z0, rtol=settings.rtol)
    return x + alpha * m * z, alpha

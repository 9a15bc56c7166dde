"""Joint prior and joint MMPS posterior denoisers over a stacked state of K sources.

The posterior denoiser of docs/method.md section 4: with each source's Tweedie moments
``D_b = E[x_b | x_t]`` and ``Cov_b = sigma_b^2 J_b``,

    D_b^post = D_b + sigma_b^2 J_b^T A_b^T C^{-1} (y - sum_b A_b D_b),
    C = Sigma_y + sum_b sigma_b^2 A_b J_b A_b^T,

where ``C^{-1} r`` is solved by conjugate gradient. ``J_b`` is only ever applied through
one ``torch.func.vjp`` closure per source per call: a call costs one forward and
``cg_iterations`` VJPs per source, since the correction ``sigma_b^2 J_b^T A_b^T v`` is
summed from the products the CG iterations already computed
(:func:`galprism.linalg.conjugate_gradient_with_products`). Sources are coupled only
through that solve.

Trust radius. A learned network's ``sigma^2 J`` is neither symmetric nor positive
semi-definite. Where the true covariance is nearly singular in an observed direction (a
source on a thin manifold, observation noise far below ``sigma``) an error of that
covariance makes ``C`` nearly singular or indefinite, and the correction
``sigma_b^2 J_b^T A_b^T C^{-1} r`` jumps far outside the data; the sampler never comes
back (docs/em.md: up to 10 % of the 1-D manifold posteriors ended at ``|x|`` in the
hundreds). For a diffusion prior the correction of each source is therefore scaled down to
at most ``trust * sqrt(D) * c_out(sigma)``, with ``c_out = sigma sigma_data /
sqrt(sigma^2 + sigma_data^2)`` the per-dimension spread of ``p(x | x_t)`` that the EDM
preconditioning assumes (exact for a Gaussian of variance ``sigma_data^2``): a shift of
the posterior mean by several times the whole spread of ``p(x | x_t)`` is a solver
failure, not information. Gaussian priors have an exact covariance and are never clipped,
so the closed-form exactness check is unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .diffusion.denoiser import DiffusionPrior
from .errors import InputError, ShapeError
from .linalg import conjugate_gradient_with_products
from .operators import SourceSum

__all__ = ["JointPrior", "JointPosterior", "DEFAULT_TRUST", "JACOBIANS"]

#: How :class:`JointPosterior` applies a diffusion prior's Jacobian.
JACOBIANS = ("vjp", "difference")

#: Default trust radius of diffusion-prior corrections (see the module docstring).
DEFAULT_TRUST = 4.0


class JointPrior:
    """Independent sources, no observation: ``D(x_t)`` stacks each prior's denoiser."""

    def __init__(self, priors: Sequence[nn.Module]) -> None:
        priors = list(priors)
        if not priors:
            raise ShapeError("JointPrior: needs at least one source prior")
        shapes = {tuple(p.shape) for p in priors}
        if len(shapes) > 1:
            raise ShapeError(f"JointPrior: source priors have different shapes {sorted(shapes)}")
        self.priors = priors
        self.shape = priors[0].shape
        # Noise levels already on the sampler's device, keyed by (t, device, dtype): filled by
        # :meth:`prepare_times` so that the sampler loop copies nothing from the host.
        self._sigma_cache: dict[tuple[float, str, torch.dtype], Tensor] = {}

    @property
    def n_sources(self) -> int:
        return len(self.priors)

    def sigma(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.stack([p.schedule.sigma(t) for p in self.priors])

    def prepare_times(self, ts: Tensor, like: Tensor) -> Tensor:
        """Every source's noise level at the times ``ts``, moved to ``like``'s device once.

        Returns the ``(len(ts), K)`` table; later calls at these times reuse its rows.
        """
        ts = torch.as_tensor(ts, dtype=torch.float64).flatten()
        table = torch.stack([self.sigma(t) for t in ts]).to(device=like.device, dtype=like.dtype)
        for t, row in zip(ts.tolist(), table, strict=True):
            self._sigma_cache[(t, str(like.device), like.dtype)] = row
        return table

    def _sigmas(self, t: Tensor, like: Tensor) -> Tensor:
        key = (float(t), str(like.device), like.dtype)
        cached = self._sigma_cache.get(key)
        if cached is not None:
            return cached
        return self.sigma(t).to(device=like.device, dtype=like.dtype)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        sig = self._sigmas(t, x_t)
        return torch.stack([p.denoise(x_t[:, k], sig[k]) for k, p in enumerate(self.priors)], dim=1)


class JointPosterior(JointPrior):
    """MMPS posterior denoiser for observations ``y = A x + n``, ``n ~ N(0, diag(noise_var))``.

    Parameters
    ----------
    priors
        One prior per source (:class:`~galprism.diffusion.DiffusionPrior` or
        :class:`~galprism.gaussian.GaussianPrior`), all of the same event shape.
    operator
        :class:`~galprism.operators.SourceSum` over the K sources; its batch (if any) must
        match the rows of the state.
    y
        Observations ``(N, *obs_shape)``.
    noise_var
        Per-pixel noise variance, same shape as ``y`` (or broadcastable); must be > 0.
    cg_iterations
        CG iterations of the covariance solve.
    trust
        Largest correction of a diffusion prior's source, in units of
        ``sqrt(D) * c_out(sigma)`` (see the module docstring); 0 disables the limit.
    jacobian
        How a diffusion prior's ``J u`` is computed: ``"vjp"`` (exact, autograd) or
        ``"difference"`` (a forward difference of the network, two forwards without a
        graph: :meth:`~galprism.diffusion.DiffusionPrior.linearize`). Gaussian priors are
        always exact.
    """

    def __init__(
        self,
        priors: Sequence[nn.Module],
        operator: SourceSum,
        y: Tensor,
        noise_var: Tensor | float,
        cg_iterations: int = 1,
        trust: float = DEFAULT_TRUST,
        jacobian: str = "vjp",
    ) -> None:
        super().__init__(priors)
        if not isinstance(operator, SourceSum):
            raise ShapeError(
                f"JointPosterior: operator must be a SourceSum, got {type(operator).__name__}"
            )
        if operator.n_sources != self.n_sources:
            raise ShapeError(
                f"JointPosterior: operator mixes {operator.n_sources} sources but {self.n_sources} "
                "priors were given"
            )
        if operator.source_shape != tuple(self.shape):
            raise ShapeError(
                f"JointPosterior: operator expects sources of shape {operator.source_shape}, "
                f"priors have {tuple(self.shape)}"
            )
        if tuple(y.shape[1:]) != operator.out_shape:
            raise ShapeError(
                f"JointPosterior: observations have shape {tuple(y.shape)}, operator produces "
                f"(batch, {', '.join(map(str, operator.out_shape))})"
            )
        if operator.batch_size is not None and operator.batch_size != y.shape[0]:
            raise ShapeError(
                f"JointPosterior: {y.shape[0]} observations but the operator holds "
                f"{operator.batch_size}"
            )
        noise_var = torch.as_tensor(noise_var, dtype=y.dtype, device=y.device)
        if not torch.isfinite(y).all():
            raise InputError(
                "JointPosterior: observations contain non-finite values (mask them and set them to "
                "0)"
            )
        if not torch.isfinite(noise_var).all() or (noise_var <= 0).any():
            raise InputError(
                "JointPosterior: noise variance must be finite and > 0 everywhere (use the mask "
                "for bad pixels)"
            )
        self.operator = operator
        self.y = y
        self.noise_var = noise_var.expand_as(y)
        self.cg_iterations = int(cg_iterations)
        if not trust >= 0:
            raise InputError(f"JointPosterior: trust must be >= 0, got {trust}")
        self.trust = float(trust)
        if jacobian not in JACOBIANS:
            raise InputError(
                f"JointPosterior: jacobian must be one of {', '.join(JACOBIANS)}, got {jacobian!r}"
            )
        self.jacobian = jacobian

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.twisted(x_t, t)[1]

    def twisted(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Prior and posterior denoisers at ``x_t`` and the log of MMPS's likelihood.

        Returns
        -------
        prior_mean
            ``D_b(x_t)`` of every source, ``(N, K, *shape)``.
        posterior_mean
            What :meth:`__call__` returns.
        log_likelihood
            ``-r^T C^{-1} r / 2`` per row ``(N,)``, with ``r = y - sum_b A_b D_b`` and ``C``
            as in the module docstring (as far as the CG solve resolves it; ``log det C``
            left out): the Gaussian approximation of ``log p(y | x_t)`` up to a term that
            tends to a constant as ``sigma -> 0``. Sequential Monte Carlo uses it as its
            twisting function (:mod:`galprism.smc`).
        """
        sig = self._sigmas(t, x_t)
        var = sig**2
        a = self.operator
        means, vjps = [], []
        # torch.func.vjp differentiates even under the sampler's no_grad; calling the
        # closures with grad disabled keeps them from recording a second-order graph.
        difference = self.jacobian == "difference"
        for k, prior in enumerate(self.priors):
            if difference and isinstance(prior, DiffusionPrior):
                d, jvp = prior.linearize(x_t[:, k], sig[k])
            else:
                d, vjp = torch.func.vjp(lambda x, p=prior, s=sig[k]: p.denoise(x, s), x_t[:, k])
                jvp = lambda u, f=vjp: f(u)[0]  # noqa: E731
            means.append(d)
            vjps.append(jvp)

        def cov_x(u: Tensor) -> Tensor:
            """``sigma_b^2 J_b u_b`` for every source (J symmetric, so J^T = J)."""
            with torch.no_grad():
                return torch.stack(
                    [var[k] * vjps[k](u[:, k]) for k in range(self.n_sources)], dim=1
                )

        d = torch.stack(means, dim=1).detach()
        residual = self.y - a.apply(d)
        # The correction Cov A^T v is accumulated from the products each CG iteration
        # computes: cg_iterations VJPs per source instead of one more for the final v.
        v, correction = conjugate_gradient_with_products(
            lambda p: cov_x(a.adjoint(p)),
            lambda p, cov_p: self.noise_var * p + a.apply(cov_p),
            residual,
            iterations=self.cg_iterations,
            curvature_floor=lambda p: (self.noise_var * p * p).sum(
                dim=tuple(range(1, p.ndim)), keepdim=True
            ),
        )
        if correction is None:
            # No iteration: v = 0, the data are ignored and the posterior is the prior.
            correction = torch.zeros_like(d)
        if self.trust > 0 and any(isinstance(p, DiffusionPrior) for p in self.priors):
            correction = correction * self._trust_scale(correction, sig)
        log_likelihood = -0.5 * (residual * v).flatten(1).sum(1)
        return d, (d + correction).detach(), log_likelihood.detach()

    def _trust_scale(self, correction: Tensor, sig: Tensor) -> Tensor:
        """Per row and source factor in (0, 1] that brings each correction inside its radius."""
        dims = tuple(range(2, correction.ndim))
        norm = torch.linalg.vector_norm(correction, dim=dims, keepdim=True)
        d = correction[0, 0].numel()
        radius = []
        for k, prior in enumerate(self.priors):
            sd = getattr(prior, "sigma_data", None) if isinstance(prior, DiffusionPrior) else None
            if sd is None:
                radius.append(torch.full_like(sig[k], float("inf")))
            else:
                c_out = sig[k] * sd / torch.sqrt(sig[k] ** 2 + sd**2)
                radius.append(self.trust * d**0.5 * c_out)
        r = torch.stack(radius).reshape(1, -1, *([1] * len(dims)))
        return (r / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp(max=1.0)

"""The unseen source's basis ``W1``, fitted on the mixtures with the clean basis ``W0`` fixed.

Problem (docs/method.md section 8)::

    min over H0, H1 and orthonormal W1 of (1/N_V) ||V - W0 H0 - W1 H1||_F^2

solved by alternating minimisation:

1. ``(H0, H1)``: joint least squares on ``B = [W0, W1]`` (``H = G^+ B^T V``, ``G = B^T B``);
2. ``W1``: orthogonal Procrustes, ``W1 = polar((V - W0 H0) H1^T)``, the exact minimiser over
   orthonormal ``W1`` for fixed coefficients.

Both steps only need products with the mixtures' second moment ``C_V = V V^T / N_V``
(``V`` holds one mixture per column here), so one iteration costs one ``P x P`` by
``P x d1`` product whatever the number of mixtures. The recorded objective is the value
after step 1, i.e. ``tr C_V - tr(G^+ B^T C_V B)``, which never increases.

The objective depends on ``W1`` only through ``span[W0, W1]``, so its global minimum is
known in closed form: ``W1`` = top-``d1`` eigenvectors of ``(I - W0 W0^T) C_V (I - W0 W0^T)``
(``init="deflated"`` starts there, and :attr:`UnseenFit.optimum` reports that value so the
alternating iterations can be checked against it). Which of the many minimisers the
iterations reach still matters for separation, because it decides how a mixture's
energy inside ``span W0`` is shared between the two sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .eigen import DENSE_EIGH_LIMIT, SecondMoment, top_eigenvectors

__all__ = ["UnseenFit", "fit_unseen_basis", "deflated_basis", "unseen_objective"]


@dataclass(frozen=True)
class UnseenFit:
    """Result of :func:`fit_unseen_basis`.

    Attributes
    ----------
    basis
        ``(P, d1)`` orthonormal basis of the unseen source.
    objective
        Mean squared residual per mixture after each iteration's least-squares step
        (entry 0 is the initial basis).
    converged
        Whether the relative decrease fell below ``tol`` before ``max_iter``.
    optimum
        Closed-form global minimum of the objective, or ``None`` when not computed.
    """

    basis: Tensor
    objective: list[float] = field(default_factory=list)
    converged: bool = False
    optimum: float | None = None

    @property
    def iterations(self) -> int:
        return max(len(self.objective) - 1, 0)


def _pinv_psd(g: Tensor, rcond: float = 1e-10) -> Tensor:
    values, vectors = torch.linalg.eigh((g + g.T) / 2)
    cut = rcond * max(float(values.abs().max()), 1e-300)
    inv = torch.where(values > cut, 1.0 / values.clamp_min(cut), torch.zeros_like(values))
    return (vectors * inv) @ vectors.T


def unseen_objective(w0: Tensor, w1: Tensor, mixed: SecondMoment) -> float:
    """``min_H (1/N_V)||V - [W0 W1] H||^2`` for given bases."""
    b = torch.cat([w0, w1], dim=1).to(torch.float64)
    g_pinv = _pinv_psd(b.T @ b)
    return mixed.trace() - float(torch.sum(g_pinv * (b.T @ mixed.matmul(b))))


def deflated_basis(
    w0: Tensor, mixed: SecondMoment, rank: int, *, seed: int = 0, solver: str = "auto"
) -> Tensor:
    """Top-``rank`` eigenvectors of ``P C_V P`` with ``P = I - W0 W0^T`` (orthogonal to ``W0``)."""
    w0 = w0.to(torch.float64)

    def project(b: Tensor) -> Tensor:
        return b - w0 @ (w0.T @ b)

    dense = None
    if mixed.matrix is not None and mixed.dim <= DENSE_EIGH_LIMIT:
        # Small enough for a dense eigh: form P C P. Above that, the Krylov solver only
        # needs products, and projecting before and after each one is cheaper than
        # forming (and keeping) a second P x P matrix.
        pc = mixed.matrix - w0 @ (w0.T @ mixed.matrix)
        dense = pc - (pc @ w0) @ w0.T

    def matmul(b: Tensor) -> Tensor:
        return project(mixed.matmul(project(b)))

    return top_eigenvectors(matmul, mixed.dim, rank, dense=dense, solver=solver, seed=seed).vectors


def _polar(t: Tensor) -> Tensor:
    u, _, vh = torch.linalg.svd(t, full_matrices=False)
    return u @ vh


def fit_unseen_basis(
    w0: Tensor,
    mixed: SecondMoment,
    rank: int,
    *,
    init: str = "random",
    tol: float = 1e-6,
    max_iter: int = 300,
    seed: int = 0,
    compute_optimum: bool = False,
    solver: str = "auto",
) -> UnseenFit:
    """Fit the unseen source's orthonormal basis by alternating minimisation.

    Parameters
    ----------
    w0
        ``(P, d0)`` orthonormal basis of the clean source (kept fixed).
    mixed
        Second moment of the mixtures.
    rank
        Number of columns ``d1`` of the unseen basis.
    init
        ``"random"`` (orthonormalised Gaussian block from ``seed``) or ``"deflated"``
        (the closed-form minimiser, see the module docstring).
    tol
        Stop when the objective's relative decrease over one iteration is below ``tol``.
    max_iter
        Iteration cap.
    seed
        Seed of the random start.
    compute_optimum
        Also compute the closed-form minimum (one extra eigenproblem) for reference.
    solver
        Eigensolver for the deflated problem (see :func:`~galprism.asvd.eigen.top_eigenvectors`).

    Returns
    -------
    UnseenFit
    """
    w0 = w0.to(torch.float64)
    d0 = w0.shape[1]
    optimum_basis = None
    if init == "deflated" or compute_optimum:
        optimum_basis = deflated_basis(w0, mixed, rank, seed=seed, solver=solver)
    if init == "deflated":
        assert optimum_basis is not None
        w1 = optimum_basis
    elif init == "random":
        gen = torch.Generator().manual_seed(int(seed) + 7919)
        w1 = torch.linalg.qr(torch.randn(mixed.dim, rank, generator=gen, dtype=torch.float64)).Q
    else:
        raise ValueError(f"unknown init {init!r}; use 'random' or 'deflated'")
    optimum = unseen_objective(w0, optimum_basis, mixed) if optimum_basis is not None else None

    c_w0 = mixed.matmul(w0)  # W0 is fixed: its product with C_V is computed once
    trace = mixed.trace()
    history: list[float] = []
    converged = False
    for _ in range(max_iter + 1):
        b = torch.cat([w0, w1], dim=1)
        c_b = torch.cat([c_w0, mixed.matmul(w1)], dim=1)
        g_pinv = _pinv_psd(b.T @ b)
        value = trace - float(torch.sum(g_pinv * (b.T @ c_b)))
        history.append(value)
        if len(history) > 1 and history[-2] - value <= tol * max(abs(history[-2]), 1e-300):
            converged = True
            break
        if len(history) > max_iter:
            break
        # Procrustes step: K = B G^+ gives the least-squares coefficients H = K^T V.
        c_k = c_b @ g_pinv
        k0 = b @ g_pinv[:, :d0]
        target = c_k[:, d0:] - w0 @ (k0.T @ c_k[:, d0:])
        w1 = _polar(target)
    return UnseenFit(basis=w1, objective=history, converged=converged, optimum=optimum)

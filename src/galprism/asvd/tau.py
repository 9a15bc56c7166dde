"""Choosing the adversarial weight ``tau`` from held-out data (``tau="auto"``).

Part of the clean cutouts and of the mixtures (``holdout``, default 20 %) is set aside;
for every ``tau`` of a grid, both bases are fitted on the rest and the held-out mixtures
are separated. The score is a held-out *second-moment reconstruction error*: how far the
second moment of the clean-source estimates taken from the held-out mixtures is from
that of the held-out clean cutouts,

    score(tau) = || E[u0_hat u0_hat^T] - E[u u^T] ||_F / || E[u u^T] ||_F .

A correct separation pulls out estimates distributed like the clean source, so the score
is small; too small a ``tau`` lets the clean basis swallow the unseen source (estimates
too energetic), too large a ``tau`` stops it representing the clean source (estimates too
weak).

The plain held-out reconstruction error of clean cutouts (separate a clean cutout and
count both the error of its clean part and the energy wrongly put in the unseen part) is
recorded in the curve as well, but not used: it only grows with ``tau`` (the SVD basis is
by construction the best one for clean data), so it always picks ``tau = 0``. On grassy
digits (``docs/asvd.md``) the moment score's minimum fell 0.025-0.075 below the ``tau`` with
the best test PSNR, costing 0.02-0.14 dB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .eigen import SecondMoment, adversarial_basis
from .separate import separate_with_bases
from .unseen import fit_unseen_basis

__all__ = ["COARSE_GRID", "select_tau", "moment_mismatch"]

#: Default first pass; the best value is then refined by +-0.025 and +-0.05.
COARSE_GRID: tuple[float, ...] = tuple(round(0.1 * i, 2) for i in range(11))
#: Most held-out cutouts of each kind used for the score (cost control).
MAX_SCORED = 2000


def moment_mismatch(estimates: Tensor, reference: Tensor) -> float:
    """``||A^T A / n - B^T B / m||_F / ||B^T B / m||_F`` for rows ``A`` (estimates), ``B``.

    Uses the ``P x P`` moments or, when there are fewer rows than pixels, the identity
    ``||A^T A||_F = ||A A^T||_F`` (and the cross term ``||A B^T||_F``) so that nothing
    larger than ``max(n, m)^2`` is formed.
    """
    a = estimates.to(torch.float64)
    b = reference.to(torch.float64)
    n, m, p = a.shape[0], b.shape[0], a.shape[1]
    if max(n, m) >= p:
        ma, mb = a.T @ a / n, b.T @ b / m
        return float(torch.linalg.matrix_norm(ma - mb) / torch.linalg.matrix_norm(mb))
    aa = float(torch.linalg.matrix_norm(a @ a.T) ** 2) / n**2
    bb = float(torch.linalg.matrix_norm(b @ b.T) ** 2) / m**2
    ab = float(torch.linalg.matrix_norm(a @ b.T) ** 2) / (n * m)
    return max(aa + bb - 2 * ab, 0.0) ** 0.5 / bb**0.5


def _split(n: int, fraction: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=gen)
    n_held = max(1, int(round(fraction * n)))
    return perm[n_held:], perm[:n_held]


def select_tau(
    clean: Tensor,
    mixed: Tensor,
    rank_clean: int,
    rank_unseen: int,
    *,
    shape: tuple[int, ...],
    grid: Sequence[float] | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    projection: str = "unit",
    split: str = "wiener",
    solver: str = "auto",
    unseen_init: str = "deflated",
    tol: float = 1e-6,
    max_iter: int = 300,
    progress: Callable[[float, float], None] | None = None,
) -> tuple[float, list[dict[str, float]]]:
    """Pick ``tau`` by the held-out moment score (see the module docstring).

    Parameters
    ----------
    clean, mixed
        Flattened data ``(N_U, P)`` and ``(N_V, P)``.
    rank_clean, rank_unseen
        Basis sizes.
    shape
        Event shape of one cutout.
    grid
        Values to try; default: :data:`COARSE_GRID`, then a refinement around its best.
    holdout
        Fraction of each data set held out for scoring.
    seed
        Seed of the hold-out split and of the solvers.
    projection, split, solver, unseen_init, tol, max_iter
        As in :func:`galprism.asvd.fit_asvd`.
    progress
        Called with ``(tau, score)`` after each evaluation.

    Returns
    -------
    best_tau, curve
        The chosen value and one ``{"tau", "score", "clean_holdout_error"}`` dict per
        value tried, sorted by ``tau``.
    """
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    fit_u, held_u = _split(clean.shape[0], holdout, gen)
    fit_v, held_v = _split(mixed.shape[0], holdout, gen)
    moment_u = SecondMoment(clean[fit_u])
    moment_v = SecondMoment(mixed[fit_v])
    held_clean = clean[held_u[:MAX_SCORED]]
    held_mixed = mixed[held_v[:MAX_SCORED]]
    scores: dict[float, dict[str, float]] = {}

    def evaluate(tau: float) -> None:
        tau = round(min(max(tau, 0.0), 1.0), 6)
        if tau in scores:
            return
        w0 = adversarial_basis(
            moment_u, moment_v, rank_clean, tau, solver=solver, seed=seed
        ).vectors
        w1 = fit_unseen_basis(
            w0,
            moment_v,
            rank_unseen,
            init=unseen_init,
            tol=tol,
            max_iter=max_iter,
            seed=seed,
            solver=solver,
        ).basis
        sep_mixed = separate_with_bases(
            held_mixed.reshape(-1, *shape), [w0, w1], shape, projection=projection, split=split
        )
        score = moment_mismatch(sep_mixed[:, 0].reshape(held_mixed.shape[0], -1), held_clean)
        sep_clean = (
            separate_with_bases(
                held_clean.reshape(-1, *shape), [w0, w1], shape, projection=projection, split=split
            )
            .reshape(held_clean.shape[0], 2, -1)
            .to(torch.float64)
        )
        clean_err = float(
            ((sep_clean[:, 0] - held_clean.to(torch.float64)) ** 2 + sep_clean[:, 1] ** 2).mean()
        )
        scores[tau] = {"tau": tau, "score": score, "clean_holdout_error": clean_err}
        if progress is not None:
            progress(tau, score)

    if grid is not None:
        for tau in grid:
            evaluate(float(tau))
    else:
        for tau in COARSE_GRID:
            evaluate(tau)
        best = min(scores.values(), key=lambda r: (r["score"], r["tau"]))["tau"]
        for delta in (-0.05, -0.025, 0.025, 0.05):
            evaluate(best + delta)
    curve = sorted(scores.values(), key=lambda r: r["tau"])
    best_tau = min(curve, key=lambda r: (r["score"], r["tau"]))["tau"]
    return float(best_tau), curve

"""Probabilistic contrastive PCA (Li, Jones & Engelhardt 2020, arXiv:2012.07977).

The baseline the DDPRISM paper compares with on Grassy MNIST. Target observations ``x``
(background + target-specific source, e.g. grass + digit) and background observations
``y`` (grass only) are both modelled as ``N(mu, W W^T + sigma^2 I)`` and the parameters
maximise the contrastive log-likelihood ``log p(X) - gamma log p(Y)``. Its maximiser is
closed-form::

    C       = X_c^T X_c - gamma Y_c^T Y_c                  (each set centered on its mean)
    lambda_1 >= ... >= lambda_D, U = eigenpairs of C
    sigma^2 = sum_{j > k} lambda_j / ((n - gamma m) (D - k))
    W       = U_k (Lambda_k / (n - gamma m) - sigma^2 I)^{1/2}

so the columns of ``W`` span the directions with more variance in the target set than
``gamma`` times the background's. ``gamma = 0`` is probabilistic PCA of the target set
(Tipping & Bishop 1999). It needs ``n - gamma m > 0`` and ``sigma^2 > 0``.

The target-specific source is ``s = mu_s + W z`` with ``mu_s = mean(X) - mean(Y)`` (the
mean the target source adds) and ``z ~ N(0, I)``; everything else (background, noise) is
the isotropic ``sigma^2`` term. For a target observation ``x`` the posterior is Gaussian::

    E[s | x]   = mu_s + W M^{-1} W^T (x - mean(X)),      M = W^T W + sigma^2 I_k
    Cov[s | x] = sigma^2 W M^{-1} W^T

which is what the reference computes (``ddprism/pcpca/pcpca_utils.py``,
``calculate_posterior`` with an identity operator), up to its 1e-6 diagonal regulariser.

Written here (about 60 lines of linear algebra) because no maintained Python package
ships PCPCA; ``scipy.linalg.eigh`` does the decomposition. The model works on flat
vectors: flatten images before fitting. It needs no operator, so it applies to
full-resolution Grassy MNIST only (the reference fits the downsampled case by gradient
descent through the operator, which is not implemented here).

Notes on the reference's Grassy MNIST script (``corrupted_mnist/baselines/pcpca``): it
standardises the two sets with different per-pixel scales, draws its posterior samples
around zero instead of the posterior mean, and averages per-pixel PSNRs; its 18.99 dB is
therefore not the per-image PSNR of this posterior mean (as read in the reference
repository's ``pcpca_train.py`` and ``metrics/metrics.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

from galprism.errors import ConfigError, InputError, ShapeError

__all__ = ["PCPCA"]


def _flat(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.array(x, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: cannot be read as a real numeric array ({exc})") from None
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise ShapeError(f"{name}: has shape {arr.shape}, expected (n_samples, n_features, ...)")
    arr = arr.reshape(arr.shape[0], -1)
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: contains non-finite values (NaN or inf)")
    return arr


def _like(result: np.ndarray, ref: Any) -> np.ndarray | torch.Tensor:
    """Return ``result`` as a tensor of ``ref``'s dtype and device when ``ref`` is one."""
    if isinstance(ref, torch.Tensor):
        dtype = ref.dtype if ref.is_floating_point() else torch.float64
        return torch.from_numpy(result).to(device=ref.device, dtype=dtype)
    return result


@dataclass
class PCPCA:
    """Probabilistic contrastive PCA with the closed-form maximum-likelihood fit.

    Parameters
    ----------
    n_components
        Latent dimension ``k`` (the reference uses 8 for Grassy MNIST).
    gamma
        Weight of the background likelihood, ``0 <= gamma < n / m``. Larger values remove
        more of the background's variance from the target directions; too large a value
        makes ``sigma^2`` non-positive and the fit fails with a :class:`ConfigError`.

    Attributes
    ----------
    mean_target, mean_background
        Means of the target and background sets ``(D,)``.
    weights
        ``W``, shape ``(D, k)``.
    sigma2
        Isotropic variance ``sigma^2``.
    eigenvalues
        Top ``k`` eigenvalues of ``C / (n - gamma m)``.
    """

    n_components: int
    gamma: float
    mean_target: np.ndarray | None = None
    mean_background: np.ndarray | None = None
    weights: np.ndarray | None = None
    sigma2: float | None = None
    eigenvalues: np.ndarray | None = None

    def fit(self, target: Any, background: Any) -> PCPCA:
        """Fit on target ``(n, ...)`` and background ``(m, ...)`` observations.

        Parameters
        ----------
        target
            Observations holding the background and the target-specific source.
        background
            Observations of the background only.

        Returns
        -------
        PCPCA
            ``self``, fitted.

        Raises
        ------
        ShapeError
            If the sets have different feature sizes or too few features.
        ConfigError
            If ``gamma`` or ``n_components`` is out of range, or the fit is degenerate.
        """
        x = _flat(target, "PCPCA target")
        y = _flat(background, "PCPCA background")
        n, d = x.shape
        m = y.shape[0]
        if y.shape[1] != d:
            raise ShapeError(
                f"PCPCA: target has {d} features per sample but background has {y.shape[1]}"
            )
        k = int(self.n_components)
        if not 1 <= k < d:
            raise ConfigError(
                f"PCPCA: n_components must lie between 1 and {d - 1}, got {self.n_components}"
            )
        scale = n - self.gamma * m
        if self.gamma < 0 or scale <= 0:
            raise ConfigError(
                f"PCPCA: gamma must satisfy 0 <= gamma < n/m = {n / m:.4g}, got {self.gamma}"
            )
        mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - mean_x, y - mean_y
        c = xc.T @ xc - self.gamma * (yc.T @ yc)
        top_vals, top_vecs = scipy.linalg.eigh(c, subset_by_index=[d - k, d - 1])
        top_vals, top_vecs = top_vals[::-1], top_vecs[:, ::-1]
        sigma2 = (np.trace(c) - top_vals.sum()) / (scale * (d - k))
        if not sigma2 > 0:
            raise ConfigError(
                f"PCPCA: sigma^2 = {sigma2:.3g} is not positive (the background outweighs the "
                "target "
                f"outside the top {k} directions); lower gamma (now {self.gamma})"
            )
        lam = top_vals / scale
        # Directions whose contrastive variance does not exceed sigma^2 carry no signal in
        # the maximum-likelihood solution: their column of W is zero.
        amp = np.sqrt(np.clip(lam - sigma2, 0.0, None))
        self.mean_target, self.mean_background = mean_x, mean_y
        self.weights = top_vecs * amp
        self.sigma2 = float(sigma2)
        self.eigenvalues = lam
        return self

    def _check_fitted(self) -> None:
        if self.weights is None:
            raise ConfigError("PCPCA: call fit(target, background) before asking for a posterior")

    def _gain(self) -> np.ndarray:
        """``M^{-1} W^T`` with ``M = W^T W + sigma^2 I``, shape ``(k, D)``."""
        w = self.weights
        m = w.T @ w + self.sigma2 * np.eye(w.shape[1])
        return np.linalg.solve(m, w.T)

    def _obs(self, x: Any) -> np.ndarray:
        self._check_fitted()
        arr = _flat(x, "PCPCA observations")
        if arr.shape[1] != self.weights.shape[0]:
            raise ShapeError(
                f"PCPCA: observations have {arr.shape[1]} features but the model was fitted on "
                f"{self.weights.shape[0]}"
            )
        return arr

    def posterior_mean(self, x: Any) -> np.ndarray | torch.Tensor:
        """Posterior mean of the target-specific source for target observations ``x``.

        Parameters
        ----------
        x
            Target observations ``(N, ...)`` (same feature size as the fit).

        Returns
        -------
        numpy.ndarray or torch.Tensor
            ``(N, ...)`` estimates, of ``x``'s shape and kind.
        """
        arr = self._obs(x)
        mean = (self.mean_target - self.mean_background) + (arr - self.mean_target) @ (
            self.weights @ self._gain()
        ).T
        return _like(mean.reshape(np.shape(x)), x)

    def posterior_covariance(self) -> np.ndarray:
        """Posterior covariance ``sigma^2 W M^{-1} W^T`` (the same for every observation)."""
        self._check_fitted()
        return self.sigma2 * self.weights @ self._gain()

    def sample_posterior(self, x: Any, n_samples: int, seed: int) -> np.ndarray | torch.Tensor:
        """Posterior samples ``(N, n_samples, ...)`` of the target-specific source.

        Parameters
        ----------
        x
            Target observations ``(N, ...)``.
        n_samples
            Samples per observation.
        seed
            Seed of the draw (record it with the output).
        """
        arr = self._obs(x)
        mean = self.posterior_mean(arr)  # (N, D), numpy since arr is
        w = self.weights
        m = w.T @ w + self.sigma2 * np.eye(w.shape[1])
        # Cov[z | x] = sigma^2 M^{-1}: draw z from its Cholesky factor, then s = W z.
        chol = np.linalg.cholesky(self.sigma2 * np.linalg.inv(m))
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((arr.shape[0], n_samples, w.shape[1])) @ chol.T
        out = mean[:, None, :] + z @ w.T
        return _like(out.reshape(arr.shape[0], n_samples, *np.shape(x)[1:]), x)

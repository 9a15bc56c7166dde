"""One adapter per deblending method: a batch of cutouts in, central-galaxy estimates out.

Every adapter returns, per cutout, an :class:`Estimate` in the cutout's flux units:

* ``galaxy_conv``: the central galaxy as it appears in the data, i.e. convolved with the
  cutout's PSF, on the cutout's grid. This is what all methods are compared on, because
  photutils and the adversarial SVD only ever see (and return) PSF-convolved light;
* ``galaxy``: the intrinsic (PSF-free) galaxy for methods that model it (galprism's
  priors), else None;
* ``samples``: intrinsic posterior samples ``(S, H, W)`` for probabilistic methods.

Adapters: :class:`GalprismMethod` (any prior folder: the diffusion prior or its Gaussian
PPCA counterpart), :class:`ASVDMethod` and :class:`PhotutilsMethod`. scarlet2 runs in its
own environment (:mod:`galprism.evaluate.scarlet`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError, ShapeError
from ..frame import Frame
from ..io.inputs import cutout_seed
from ..observation import Observation, stack_observations
from ..priorset import PriorSet
from ..separate import (
    SeparateConfig,
    effective_support,
    fit_to_prior,
    resolve_device,
    separate_observations,
)
from .testset import EvalCutout

__all__ = [
    "Estimate",
    "Method",
    "GalprismMethod",
    "ASVDMethod",
    "PhotutilsMethod",
    "forward_model",
]

Progress = Callable[[int], None]


@dataclass(eq=False)
class Estimate:
    """A method's central-galaxy estimate for one cutout (see module docstring)."""

    galaxy_conv: np.ndarray
    galaxy: np.ndarray | None = None
    samples: np.ndarray | None = None
    seconds: float = 0.0
    note: str = ""


class Method(Protocol):
    """What the evaluation needs from a method."""

    name: str
    label: str
    probabilistic: bool
    intrinsic: bool

    def settings(self) -> dict[str, object]: ...

    def estimate(
        self, cutouts: Sequence[EvalCutout], progress: Progress | None = None
    ) -> list[Estimate]: ...


def forward_model(
    obs: Observation, image: np.ndarray, prior_shape: Sequence[int], grid_factor: int = 1
) -> np.ndarray:
    """``Downsample o Convolve(PSF)`` of an intrinsic ``(C, H, W)`` image, masked pixels included.

    This is galprism's own forward model (zero-padded FFT convolution with the cutout's
    PSF), so the convolved estimate is exactly what the method predicts for the data.
    """
    batch = stack_observations([obs], Frame(tuple(prior_shape)))
    if grid_factor != 1:
        raise ShapeError(
            f"{obs.name}: forward_model handles cutouts on the prior's grid only "
            f"(factor {grid_factor})"
        )
    x = torch.from_numpy(np.asarray(image, dtype=np.float64))[None]
    return batch.forward.apply(x)[0].numpy()


class GalprismMethod:
    """Joint posterior sampling with a prior folder (diffusion or Gaussian PPCA).

    Parameters
    ----------
    prior
        The loaded prior set; must have a source named ``galaxy_source``.
    name, label
        Short key (results) and display name (report).
    sampler
        Posterior sampler settings (at least 2 samples, for calibration).
    batch_size
        Cutouts per sampler call.
    seed
        Run seed; cutout seeds derive from it and the file name as in ``galprism separate``.
    device
        Torch device.
    galaxy_source
        Name of the central-galaxy source in the prior.
    """

    probabilistic = True
    intrinsic = True

    def __init__(
        self,
        prior: PriorSet,
        name: str,
        label: str,
        *,
        sampler: SamplerConfig,
        batch_size: int = 8,
        seed: int = 0,
        device: str = "cpu",
        galaxy_source: str = "galaxy",
        support: dict[str, float | str] | None = None,
    ) -> None:
        if galaxy_source not in prior.sources:
            raise ConfigError(
                f"prior {prior.name!r} has no source {galaxy_source!r} (sources: "
                f"{', '.join(prior.sources)})"
            )
        if sampler.n_samples < 2:
            raise ConfigError(
                f"{name}: needs at least 2 posterior samples per cutout for calibration, "
                f"got {sampler.n_samples}"
            )
        self.prior = prior
        self.name = name
        self.label = label
        self.galaxy_index = prior.sources.index(galaxy_source)
        self.device = resolve_device(device)
        self.config = SeparateConfig(
            sampler=sampler,
            batch_size=batch_size,
            seed=seed,
            device=device,
            support=support,
        )
        effective_support(
            prior, self.config
        )  # a support naming an unknown source fails here, before any sampling

    def settings(self) -> dict[str, object]:
        c = self.config
        return {
            "prior": self.prior.name,
            "prior_path": str(self.prior.path) if self.prior.path else None,
            "prior_method": self.prior.method,
            "prior_sha256": self.prior.sha256,
            "n_samples": c.sampler.n_samples,
            "steps": c.sampler.steps,
            "cg_iterations": c.sampler.cg_iterations,
            "sampler": c.sampler.method,
            "particles": c.sampler.particles,
            "trust": c.sampler.trust,
            "support": {k: str(v) for k, v in effective_support(self.prior, c).items()},
            "batch_size": c.batch_size,
            "seed": c.seed,
            "device": self.device,
        }

    def estimate(
        self, cutouts: Sequence[EvalCutout], progress: Progress | None = None
    ) -> list[Estimate]:
        out: list[Estimate] = []
        bs = self.config.batch_size
        for start in range(0, len(cutouts), bs):
            group = cutouts[start : start + bs]
            t0 = time.perf_counter()
            fitted = [fit_to_prior(c.observation, self.prior, self.config) for c in group]
            factors = {f for _, f in fitted}
            if factors != {1}:
                raise ShapeError(
                    f"{group[0].name}: the evaluation compares on the prior's grid; cutout pixel "
                    f"scale differs (factor {factors})"
                )
            observations = [o for o, _ in fitted]
            for o, c in zip(observations, group, strict=True):
                if o.shape != c.observation.shape:
                    raise ShapeError(
                        f"{c.name}: cutout {c.observation.shape[1:]} differs from prior "
                        f"{tuple(self.prior.frame.shape[1:])}; "
                        "simulate the test set at the prior's size"
                    )
            seeds = [cutout_seed(self.config.seed, c.name) for c in group]
            results = separate_observations(
                observations, self.prior, self.config, seeds, device=self.device
            )
            share = (time.perf_counter() - t0) / len(group)
            for obs, res in zip(observations, results, strict=True):
                samples = res.samples[:, self.galaxy_index, 0].astype(np.float64)  # (S, H, W)
                mean = samples.mean(axis=0)
                conv = forward_model(obs, mean[None], self.prior.frame.shape)[0]
                out.append(Estimate(galaxy_conv=conv, galaxy=mean, samples=samples, seconds=share))
            if progress is not None:
                progress(len(group))
        return out


class ASVDMethod:
    """Adversarial SVD (galprism.asvd) fitted on sky-only and galaxy cutouts.

    The model lives in the space of the observed cutouts (its bases are learned from
    PSF-convolved, noisy cutouts), so its galaxy estimate is PSF-convolved. Cutouts are
    divided by ``scale`` (the training noise sigma) before separation and multiplied back.
    """

    probabilistic = False
    intrinsic = False

    def __init__(
        self, model, scale: float, *, name: str = "asvd", label: str = "adversarial SVD"
    ) -> None:
        self.model = model
        self.scale = float(scale)
        self.name = name
        self.label = label

    def settings(self) -> dict[str, object]:
        info = dict(self.model.info)
        return {
            "ranks": list(self.model.ranks),
            "tau": self.model.tau,
            "projection": self.model.projection,
            "split": self.model.split,
            "scale": self.scale,
            "fit_seconds": info.get("fit_seconds"),
            "simulate_seconds": info.get("simulate_seconds"),
            "train_seeds": info.get("train_seeds"),
            "n_clean": info.get("n_clean"),
            "n_mixed": info.get("n_mixed"),
        }

    def estimate(
        self, cutouts: Sequence[EvalCutout], progress: Progress | None = None
    ) -> list[Estimate]:
        if not cutouts:
            return []
        t0 = time.perf_counter()
        # Cutouts on another zero point (real data) are brought to the training one first.
        fac = np.array([c.observation.flux_factor_to(self.model.zeropoint) for c in cutouts])[
            :, None, None, None
        ]
        y = np.stack([c.observation.image for c in cutouts]) * fac / self.scale
        var = np.stack([c.observation.variance for c in cutouts]) * fac**2 / self.scale**2
        valid = np.stack([c.observation.valid for c in cutouts])
        sources = self.model.separate(
            torch.from_numpy(y).float(),
            noise_var=torch.from_numpy(var).float(),
            mask=torch.from_numpy(valid),
        )
        galaxy = sources[:, 1, 0].double().numpy() * self.scale / fac[:, 0]
        share = (time.perf_counter() - t0) / len(cutouts)
        if progress is not None:
            progress(len(cutouts))
        return [Estimate(galaxy_conv=g, seconds=share) for g in galaxy]


class PhotutilsMethod:
    """photutils segmentation: ``detect_sources`` + ``deblend_sources``, central segment.

    The background (a constant: the sigma-clipped median of the valid pixels) is
    subtracted; the image is smoothed with a Gaussian kernel of ``kernel_fwhm`` pixels
    (about the PSF) for detection at ``nsigma`` times the noise per pixel; the segment
    under the cutout center (else the nearest segment within ``max_distance`` pixels)
    is the central galaxy, and its background-subtracted pixels are the estimate
    (0 elsewhere and at masked pixels). No detection gives an all-zero estimate.
    """

    probabilistic = False
    intrinsic = False

    def __init__(
        self,
        *,
        nsigma: float = 1.5,
        npixels: int = 5,
        kernel_fwhm: float = 3.0,
        nlevels: int = 32,
        contrast: float = 0.001,
        max_distance: float = 3.0,
        name: str = "photutils",
        label: str = "photutils deblend",
    ) -> None:
        self.nsigma = float(nsigma)
        self.npixels = int(npixels)
        self.kernel_fwhm = float(kernel_fwhm)
        self.nlevels = int(nlevels)
        self.contrast = float(contrast)
        self.max_distance = float(max_distance)
        self.name = name
        self.label = label

    def settings(self) -> dict[str, object]:
        import photutils

        return {
            "photutils": photutils.__version__,
            "nsigma": self.nsigma,
            "npixels": self.npixels,
            "kernel_fwhm": self.kernel_fwhm,
            "nlevels": self.nlevels,
            "contrast": self.contrast,
            "max_distance": self.max_distance,
        }

    def segment(
        self, image: np.ndarray, variance: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Background-subtracted image and the deblended segmentation map (0 = none)."""
        import importlib.util

        from astropy.convolution import convolve
        from astropy.stats import sigma_clipped_stats
        from photutils.segmentation import deblend_sources, detect_sources, make_2dgaussian_kernel

        if importlib.util.find_spec("skimage") is None:
            raise ConfigError(
                "photutils: deblend_sources needs scikit-image; pip install 'galprism[evaluate]'"
            )

        _, median, _ = sigma_clipped_stats(image[valid], sigma=3.0)
        data = np.where(valid, image - median, 0.0)
        size = 2 * int(np.ceil(1.5 * self.kernel_fwhm)) + 1
        kernel = make_2dgaussian_kernel(self.kernel_fwhm, size=size)
        smooth = convolve(data, kernel, mask=~valid, normalize_kernel=True)
        threshold = self.nsigma * np.sqrt(np.where(valid, variance, np.median(variance[valid])))
        segm = detect_sources(smooth, threshold, self.npixels, mask=~valid)
        if segm is None:
            return data, np.zeros(image.shape, dtype=np.int64)
        try:
            segm = deblend_sources(
                smooth,
                segm,
                self.npixels,
                n_levels=self.nlevels,
                contrast=self.contrast,
                progress_bar=False,
            )
        except ValueError:  # photutils refuses to deblend some tiny segments: keep them whole
            pass
        return data, np.asarray(segm.data, dtype=np.int64)

    def central_label(self, labels: np.ndarray) -> int:
        """Label of the segment under the center pixel, else the nearest within ``max_distance``."""
        h, w = labels.shape
        cy, cx = h // 2, w // 2
        if labels[cy, cx] > 0:
            return int(labels[cy, cx])
        yy, xx = np.nonzero(labels)
        if yy.size == 0:
            return 0
        d = np.hypot(yy - cy, xx - cx)
        k = int(np.argmin(d))
        return int(labels[yy[k], xx[k]]) if d[k] <= self.max_distance else 0

    def estimate(
        self, cutouts: Sequence[EvalCutout], progress: Progress | None = None
    ) -> list[Estimate]:
        out = []
        for c in cutouts:
            t0 = time.perf_counter()
            obs = c.observation
            data, labels = self.segment(obs.image[0], obs.variance[0], obs.valid[0])
            label = self.central_label(labels)
            est = np.where(labels == label, data, 0.0) if label else np.zeros_like(data)
            note = "" if label else "central galaxy not detected"
            out.append(Estimate(galaxy_conv=est, seconds=time.perf_counter() - t0, note=note))
            if progress is not None:
                progress(1)
        return out

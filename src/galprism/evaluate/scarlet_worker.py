"""scarlet2 deblending of single-band cutouts; runs *inside a scarlet2 environment*.

This file imports only numpy, jax and scarlet2 (never galprism or torch), so that it can
be executed by another Python: ``PYTHON scarlet_worker.py IN.npz OUT.npz``.

Input arrays: ``images``, ``variances``, ``valid`` ``(N, H, W)``, ``psfs`` ``(N, k, k)``,
``centers`` ``(M, 3)`` rows ``(cutout, y, x)`` of detected sources (from photutils in the
calling environment), ``central`` ``(N,)`` the row index in ``centers`` of each cutout's
central source (-1: none), ``max_iter`` scalar.

Output: ``galaxy_conv`` ``(N, H, W)``: the central source's model rendered in the
observation frame (convolved with the cutout's PSF), ``seconds`` ``(N,)``, ``status``
``(N,)`` strings (``ok`` or the error), ``version``.

Model per cutout (scarlet2's documented quick-start recipe, single band): the default
model frame (Gaussian model PSF of 0.7 px), one source per detection with a morphology
initialised from Gaussian moments (compact point-source morphology if that fails),
positive spectrum and unit-interval morphology constraints, Adam fit of ``max_iter`` steps.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def fit_scene(image, variance, valid, psf, centers, max_iter, channels=None):
    """The fitted scarlet2 scene of one image and its observation (the model above).

    ``image``, ``variance``, ``valid`` are ``(H, W)`` with ``psf`` ``(k, k)``, or
    ``(C, H, W)`` with ``psf`` ``(C, k, k)`` and ``channels`` the band names: then every
    source has one spectrum (a flux per band) and one morphology, scarlet2's multi-band model.
    """
    import scarlet2 as s2
    from numpyro.distributions import constraints

    if np.ndim(image) == 2:
        image, variance, valid, psf = image[None], variance[None], valid[None], psf[None]
    weights = np.where(valid, 1.0 / variance, 0.0)
    obs = s2.Observation(
        np.where(valid, image, 0.0), weights, psf=s2.ArrayPSF(psf), channels=channels
    )
    frame = s2.Frame.from_observations(obs)
    with s2.Scene(frame) as scene:
        for y, x in centers:
            center = np.array([y, x], dtype=float)
            try:
                spectrum, morph = s2.init.from_gaussian_moments(obs, center, min_corr=0.99)
            except Exception:  # noqa: BLE001 - scarlet2's moments fail on faint sources: use a point source
                spectrum = s2.init.pixel_spectrum(obs, center, correct_psf=True)
                morph = s2.init.compact_morphology()
            s2.Source(center, spectrum, morph)
    with s2.Parameters(scene):
        for j, src in enumerate(scene.sources):
            s2.Parameter(
                src.spectrum,
                name=f"spectrum:{j}",
                constraint=constraints.positive,
                stepsize=s2.relative_step,
            )
            s2.Parameter(
                src.morphology,
                name=f"morph:{j}",
                constraint=constraints.unit_interval,
                stepsize=0.1,
            )
    return obs, scene.fit(obs, max_iter=int(max_iter), progress_bar=False)


def deblend(image, variance, valid, psf, centers, central, max_iter):
    """The central source's model rendered in the observation frame."""
    obs, fitted = fit_scene(image, variance, valid, psf, centers, max_iter)
    model = fitted.evaluate_source(fitted.sources[central])
    return np.asarray(obs.render(model))[0]


def main(argv: list[str]) -> int:
    import scarlet2

    inp, out = argv
    d = np.load(inp)
    images, variances, valid, psfs = d["images"], d["variances"], d["valid"], d["psfs"]
    centers, central, max_iter = d["centers"], d["central"], int(d["max_iter"])
    n = images.shape[0]
    result = np.zeros_like(images)
    seconds = np.zeros(n)
    status = []
    for i in range(n):
        t0 = time.perf_counter()
        rows = np.nonzero(centers[:, 0] == i)[0]
        if central[i] < 0 or rows.size == 0:
            status.append("central galaxy not detected")
            seconds[i] = time.perf_counter() - t0
            continue
        try:
            k = int(np.nonzero(rows == central[i])[0][0])
            result[i] = deblend(
                images[i], variances[i], valid[i], psfs[i], centers[rows, 1:], k, max_iter
            )
            status.append("ok")
        except Exception as exc:  # noqa: BLE001 - report per cutout, keep going
            status.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        seconds[i] = time.perf_counter() - t0
        print(f"scarlet2 {i + 1}/{n} {status[-1]} {seconds[i]:.1f}s", file=sys.stderr, flush=True)
    np.savez(
        out,
        galaxy_conv=result,
        seconds=seconds,
        status=np.array(status),
        version=np.array(scarlet2.__version__),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

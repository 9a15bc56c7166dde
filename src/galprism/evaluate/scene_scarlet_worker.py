"""scarlet2 deblending of whole scenes; runs *inside a scarlet2 environment*.

This file imports only numpy, jax and scarlet2 (never galprism or torch), so that it can
be executed by another Python: ``PYTHON scene_scarlet_worker.py IN.npz OUT.npz``.

Input arrays: ``image``, ``variance``, ``valid`` ``(H, W)``, ``psf`` ``(k, k)``,
``centers`` ``(M, 2)`` rows ``(y, x)`` of the detected sources (from photutils in the
calling environment), ``max_iter`` scalar. For a scene of several bands: ``image``,
``variance``, ``valid`` ``(C, H, W)``, ``psf`` ``(C, k, k)`` and ``bands`` ``(C,)`` names.

Output: ``models`` ``(M, H, W)`` (``(M, C, H, W)`` for several bands): each source's model
rendered in the observation frame (convolved with the scene's PSF of each band),
``seconds`` (the fit's), ``status`` (``ok`` or the error), ``version``.

The model is that of :mod:`galprism.evaluate.scarlet_worker` (scarlet2's quick-start
recipe, single band): the default model frame, one source per detection with a
morphology initialised from Gaussian moments (a compact one if that fails), positive
spectrum and unit-interval morphology, Adam fit of ``max_iter`` steps; here every
source's rendering comes back, not only a central one. With several bands each source
has one spectrum (its flux in every band) and one morphology: scarlet2's multi-band model.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def deblend_all(image, variance, valid, psf, centers, max_iter, bands=None):
    """Every source's model rendered in the observation frame, ``(M, H, W)``, or
    ``(M, C, H, W)`` for an image of several bands ``(C, H, W)``."""
    # The fit is the cutout worker's, beside this file (on sys.path as the script's folder).
    from scarlet_worker import fit_scene

    obs, fitted = fit_scene(image, variance, valid, psf, centers, max_iter, bands)
    models = [np.asarray(obs.render(fitted.evaluate_source(src))) for src in fitted.sources]
    return np.stack(models if np.ndim(image) == 3 else [m[0] for m in models])


def main(argv: list[str]) -> int:
    import scarlet2

    inp, out = argv
    d = np.load(inp)
    image, centers = d["image"], d["centers"].reshape(-1, 2)
    models = np.zeros((len(centers), *image.shape))
    t0 = time.perf_counter()
    try:
        if len(centers):
            bands = [str(b) for b in d["bands"]] if "bands" in d.files else None
            models = deblend_all(
                image, d["variance"], d["valid"], d["psf"], centers, int(d["max_iter"]), bands
            )
        status = "ok"
    except Exception as exc:  # noqa: BLE001 - reported to the caller, which goes on
        status = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    np.savez(
        out,
        models=models,
        seconds=np.array(time.perf_counter() - t0),
        status=np.array(status),
        version=np.array(scarlet2.__version__),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

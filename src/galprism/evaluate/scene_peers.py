"""Scene-mode adapters: one whole scene in, a list of detected sources out.

Every adapter returns a :class:`SceneDetections` in the scene's flux units: each detected
source's position, flux and (where the method gives one) its light as it appears in the
data, i.e. PSF-convolved, on the scene's pixel grid. Adapters:

* :class:`GalprismScene`: :func:`galprism.scene.separate_scene` (what ``galprism separate
  --scene`` runs), with the scene's seed derived from the run seed and the file name as
  ``galprism separate`` derives it; per-source images are the posterior mean stamps, and
  each source's kind and flux quantiles come from its catalogue;
* :class:`PhotutilsScene`: ``detect_sources`` + ``deblend_sources`` with the settings of
  :class:`galprism.evaluate.methods.PhotutilsMethod`, then ``SourceCatalog`` centroids and
  segment fluxes; a source's image is its segment's background-subtracted pixels;
* :class:`SepScene`: SEP's ``extract`` (SExtractor's algorithm) with the same threshold,
  smoothing kernel, area and deblending settings as photutils where SEP has them;
* :class:`Scarlet2Scene`: scarlet2 in its own environment, one source per photutils
  detection, each source's model rendered through the PSF.

photutils, SEP and scarlet2 do not classify sources or give flux intervals: those entries
are None.

On scenes of several bands, detection and the single-band methods (photutils, SEP,
galprism with ``one_band``) use the reference band; galprism and scarlet2 fit all bands
and give each source's flux per band (``band_flux``), and galprism its quantiles per band.
Positions, ``flux``, ``quantiles`` and ``images`` are then the reference band's.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError, InputError
from ..io.inputs import cutout_seed
from .methods import PhotutilsMethod

if TYPE_CHECKING:
    from .scenes import SceneCase

__all__ = [
    "SceneDetections",
    "SceneMethod",
    "GalprismScene",
    "PhotutilsScene",
    "SepScene",
    "Scarlet2Scene",
    "sep_available",
    "QUANTILE_LEVELS",
]

#: catalogue flux-quantile columns of galprism's scene mode and their levels
QUANTILE_LEVELS: dict[str, float] = {"q025": 0.025, "q16": 0.16, "q84": 0.84, "q975": 0.975}


@dataclass(eq=False)
class SceneDetections:
    """A method's sources in one scene.

    Attributes
    ----------
    x, y
        ``(M,)`` positions, 0-based pixels (the first pixel's center is (0, 0)).
    flux
        ``(M,)`` total fluxes in the scene's units.
    images
        ``(M, H, W)`` each source's PSF-convolved light on the scene's grid, or None.
    kind
        ``(M,)`` ``galaxy`` or ``star``, or None for methods that do not classify.
    quantiles
        ``{"q025", "q16", "q84", "q975"}`` flux quantiles ``(M,)``, or None.
    seconds
        Time the method took on the scene.
    seed
        The scene's seed, for methods that draw random numbers.
    note
        Why the scene has no detections, when it has none ("" otherwise).
    band_flux
        ``{band: (M,)}`` fluxes per band of a method that measures several bands, or None.
    band_quantiles
        ``{band: {"q025", ...}}`` flux quantiles per band, or None.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    images: np.ndarray | None = None
    kind: np.ndarray | None = None
    quantiles: dict[str, np.ndarray] | None = None
    seconds: float = 0.0
    seed: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    band_flux: dict[str, np.ndarray] | None = None
    band_quantiles: dict[str, dict[str, np.ndarray]] | None = None

    @classmethod
    def empty(cls, note: str, seconds: float = 0.0, seed: int | None = None) -> SceneDetections:
        """No detection in the scene, and why."""
        z = np.zeros(0)
        return cls(z, z.copy(), z.copy(), seconds=seconds, seed=seed, note=note)

    def __len__(self) -> int:
        return int(self.x.size)


class SceneMethod(Protocol):
    """What the scene evaluation needs from a method.

    A method that measures every band of a scene of several bands also has ``all_bands``
    True (without it, a method counts as measuring the reference band only).
    """

    name: str
    label: str

    def settings(self) -> dict[str, object]: ...

    def detect(self, case: SceneCase) -> SceneDetections: ...


def _place_stamps(stamps: np.ndarray, x0: np.ndarray, y0: np.ndarray, shape: tuple[int, int]):
    """``(M, sh, sw)`` stamps whose first pixels are ``(x0, y0)`` placed on an ``(H, W)`` grid.

    Stamp pixels beyond the grid are outside the scene and have no counterpart in its truth.
    """
    h, w = shape
    m, sh, sw = stamps.shape
    out = np.zeros((m, h, w))
    for k in range(m):
        ox, oy = int(x0[k]), int(y0[k])
        ys, xs = slice(max(oy, 0), min(oy + sh, h)), slice(max(ox, 0), min(ox + sw, w))
        if ys.start < ys.stop and xs.start < xs.stop:
            out[k, ys, xs] = stamps[k, ys.start - oy : ys.stop - oy, xs.start - ox : xs.stop - ox]
    return out


class GalprismScene:
    """galprism's scene mode (:func:`galprism.scene.separate_scene`) on the whole scene.

    Parameters
    ----------
    prior
        A prior set with a ``galaxy`` source.
    sampler
        Sampler settings (those of ``galprism separate``).
    seed
        Run seed; scene ``P`` uses ``cutout_seed(seed, P)`` as ``galprism separate`` does.
    device
        Torch device.
    one_band
        On scenes of several bands, observe the reference band alone (with the same
        prior); otherwise every band.
    """

    def __init__(
        self,
        prior: Any,
        sampler: SamplerConfig,
        *,
        seed: int = 0,
        device: str = "cpu",
        one_band: bool = False,
        name: str = "galprism",
        label: str | None = None,
    ) -> None:
        from ..scene.run import galaxy_prior

        galaxy_prior(prior)  # a prior without a galaxy source fails here, before any scene
        self.prior = prior
        self.sampler = sampler
        self.seed = int(seed)
        self.device = device
        self.one_band = bool(one_band)
        #: whether the method measures every band of a scene of several bands
        self.all_bands = not self.one_band
        self.name = name
        self.label = label or f"galprism scene ({prior.name})"

    def settings(self) -> dict[str, object]:
        out: dict[str, object] = {"prior": str(self.prior.name), "seed": self.seed}
        if self.one_band:
            out["bands"] = "reference band only"
        return {**out, **self.sampler.to_dict()}

    def detect(self, case: SceneCase) -> SceneDetections:
        from ..scene.run import separate_scene
        from ..separate.config import SeparateConfig

        seed = cutout_seed(self.seed, case.path)
        t0 = time.perf_counter()
        config = SeparateConfig(sampler=self.sampler, device=self.device, seed=self.seed)
        obs = case.detection_observation if self.one_band else case.observation
        try:
            res = separate_scene(obs, self.prior, config, seed, device=self.device)
        except InputError as exc:  # e.g. no source detected: the scene counts, with nothing found
            return SceneDetections.empty(str(exc), time.perf_counter() - t0, seed)
        cat = res.catalog
        # A scene of several bands: the reference band's plane and columns are the ones
        # matched and compared image by image; every band's fluxes are kept.
        bands = [case.ref_band] if self.one_band or not case.bands else list(case.bands)
        ref = bands.index(case.ref_band) if case.bands else 0
        images = _place_stamps(
            res.stamps[:, 0, ref],
            np.asarray(cat["stamp_x0"]),
            np.asarray(cat["stamp_y0"]),
            case.shape,
        )
        band_flux = band_q = None
        if case.bands:
            band_flux = {b: _column(cat, "flux", b) for b in bands}
            band_q = {b: {k: _column(cat, f"flux_{k}", b) for k in QUANTILE_LEVELS} for b in bands}
        ref_band = case.ref_band if case.bands else None
        return SceneDetections(
            x=np.asarray(cat["x"], dtype=np.float64),
            y=np.asarray(cat["y"], dtype=np.float64),
            flux=_column(cat, "flux", ref_band),
            images=images,
            kind=np.asarray(cat["kind"]).astype(str),
            quantiles={k: _column(cat, f"flux_{k}", ref_band) for k in QUANTILE_LEVELS},
            seconds=time.perf_counter() - t0,
            seed=int(seed),
            extra={"n_blends": len(res.blends), "chi2": np.asarray(cat["chi2"], float)},
            band_flux=band_flux,
            band_quantiles=band_q,
        )


def _column(cat: Any, name: str, band: str | None) -> np.ndarray:
    """Catalogue column ``name`` of ``band``: ``<name>_<band>`` where the prior has several
    bands, else ``<name>`` (a one-band prior writes one column per statistic)."""
    key = f"{name}_{band}" if band is not None and f"{name}_{band}" in cat.colnames else name
    return np.asarray(cat[key], dtype=np.float64)


class PhotutilsScene:
    """photutils segmentation of the whole scene (settings of :class:`PhotutilsMethod`)."""

    def __init__(self, name: str = "photutils", label: str = "photutils deblend") -> None:
        self.segmenter = PhotutilsMethod()
        self.name = name
        self.label = label

    def settings(self) -> dict[str, object]:
        return {**self.segmenter.settings(), "centroid": "SourceCatalog centroid"}

    def detect(self, case: SceneCase) -> SceneDetections:
        from photutils.segmentation import SegmentationImage, SourceCatalog

        t0 = time.perf_counter()
        obs = case.detection_observation
        data, labels = self.segmenter.segment(obs.image[0], obs.variance[0], obs.valid[0])
        present = np.unique(labels[labels > 0])
        if present.size == 0:
            return SceneDetections.empty("nothing detected", time.perf_counter() - t0)
        cat = SourceCatalog(data, SegmentationImage(labels), mask=~obs.valid[0])
        by_label = {int(lab): i for i, lab in enumerate(cat.labels)}
        rows = [by_label[int(lab)] for lab in present]
        # photutils 3 renamed xcentroid/ycentroid to x_centroid/y_centroid
        xname, yname = (
            ("x_centroid", "y_centroid")
            if hasattr(cat, "x_centroid")
            else (
                "xcentroid",
                "ycentroid",
            )
        )
        x = np.asarray(getattr(cat, xname), dtype=np.float64)[rows]
        y = np.asarray(getattr(cat, yname), dtype=np.float64)[rows]
        flux = np.asarray(cat.segment_flux, dtype=np.float64)[rows]
        images = np.stack([np.where(labels == lab, data, 0.0) for lab in present])
        return SceneDetections(x, y, flux, images=images, seconds=time.perf_counter() - t0)


def sep_available() -> bool:
    """Whether the ``sep`` package can be imported."""
    return importlib.util.find_spec("sep") is not None


class SepScene:
    """SEP (``sep.extract``) on the whole scene.

    The background is the sigma-clipped median of the valid pixels (as for photutils: the
    scenes' sky residual is a constant and a gentle gradient, smaller than SEP's mesh on a
    small scene); detection is on the image convolved (``filter_type='conv'``) with the
    same Gaussian kernel as photutils, at ``thresh`` times the per-pixel noise, with
    ``minarea`` pixels, ``deblend_nthresh`` levels and ``deblend_cont`` contrast. A
    source's flux is the sum of its segment's background-subtracted pixels (as for
    photutils) and its position SEP's barycenter.
    """

    def __init__(
        self,
        *,
        thresh: float = 1.5,
        minarea: int = 5,
        deblend_nthresh: int = 32,
        deblend_cont: float = 0.001,
        kernel_fwhm: float = 3.0,
        name: str = "sep",
        label: str = "SEP (SExtractor)",
    ) -> None:
        if not sep_available():
            raise ConfigError("sep: not installed; pip install 'galprism[evaluate]'")
        self.thresh = float(thresh)
        self.minarea = int(minarea)
        self.deblend_nthresh = int(deblend_nthresh)
        self.deblend_cont = float(deblend_cont)
        self.kernel_fwhm = float(kernel_fwhm)
        self.name = name
        self.label = label

    def settings(self) -> dict[str, object]:
        import sep

        return {
            "sep": sep.__version__,
            "thresh": self.thresh,
            "minarea": self.minarea,
            "deblend_nthresh": self.deblend_nthresh,
            "deblend_cont": self.deblend_cont,
            "kernel_fwhm": self.kernel_fwhm,
            "filter_type": "conv",
        }

    def _kernel(self) -> np.ndarray:
        from photutils.segmentation import make_2dgaussian_kernel

        size = 2 * int(np.ceil(1.5 * self.kernel_fwhm)) + 1
        return np.asarray(make_2dgaussian_kernel(self.kernel_fwhm, size=size).array, np.float64)

    def detect(self, case: SceneCase) -> SceneDetections:
        import sep
        from astropy.stats import sigma_clipped_stats

        t0 = time.perf_counter()
        obs = case.detection_observation
        image, variance, valid = obs.image[0], obs.variance[0], obs.valid[0]
        _, median, _ = sigma_clipped_stats(image[valid], sigma=3.0)
        # SEP wants native-endian C-contiguous float64 (FITS data is big-endian).
        data = np.ascontiguousarray(np.where(valid, image - median, 0.0), dtype=np.float64)
        fill = float(np.median(variance[valid]))
        err = np.ascontiguousarray(np.sqrt(np.where(valid, variance, fill)), dtype=np.float64)
        try:
            objects, segmap = sep.extract(
                data,
                self.thresh,
                err=err,
                mask=np.ascontiguousarray(~valid),
                minarea=self.minarea,
                filter_kernel=self._kernel(),
                filter_type="conv",
                deblend_nthresh=self.deblend_nthresh,
                deblend_cont=self.deblend_cont,
                segmentation_map=True,
            )
        except Exception as exc:  # noqa: BLE001 - SEP raises plain Exception (e.g. pixel stack)
            return SceneDetections.empty(f"sep: {exc}", time.perf_counter() - t0)
        if len(objects) == 0:
            return SceneDetections.empty("nothing detected", time.perf_counter() - t0)
        # segmentation map value k + 1 is object k
        images = np.stack([np.where(segmap == k + 1, data, 0.0) for k in range(len(objects))])
        return SceneDetections(
            x=np.asarray(objects["x"], dtype=np.float64),
            y=np.asarray(objects["y"], dtype=np.float64),
            flux=images.sum(axis=(1, 2)),
            images=images,
            seconds=time.perf_counter() - t0,
        )


class Scarlet2Scene:
    """scarlet2 on the whole scene, in its own environment (as :mod:`galprism.evaluate.scarlet`).

    One source per photutils detection (:class:`PhotutilsScene`'s segmentation), at the
    segment's brightest pixel; :mod:`galprism.evaluate.scene_scarlet_worker` fits them
    together and returns each source's model rendered in the observation frame. A source's
    flux is the sum of its rendering and its position the rendering's centroid (the source
    centers are not fitted). The worker is one process per scene, so a scene's time
    includes starting Python and importing JAX.

    On a scene of several bands the sources are detected in the reference band and fitted
    to every band at once with scarlet2's multi-band model (one spectrum, i.e. one flux
    per band, and one morphology per source, each band convolved with its own PSF); a
    source's flux in a band is the sum of its rendering in that band, its position the
    centroid of its reference-band rendering.

    Parameters
    ----------
    python
        The scarlet2 environment's Python executable.
    max_iter
        Adam iterations per scene.
    limit
        Run only the first ``limit`` scenes.
    timeout
        Seconds allowed per scene.
    """

    def __init__(
        self,
        python: str,
        *,
        max_iter: int = 200,
        limit: int | None = None,
        timeout: float = 600.0,
        name: str = "scarlet2",
        label: str = "scarlet2",
    ) -> None:
        from pathlib import Path

        self.python = str(python)
        if not Path(self.python).is_file():
            raise ConfigError(f"scarlet2 Python {self.python}: not found")
        self.max_iter = int(max_iter)
        self.limit = limit
        self.timeout = float(timeout)
        self.detector = PhotutilsMethod()
        self.version = "unknown"
        self.all_bands = True
        self.name = name
        self.label = label

    def settings(self) -> dict[str, object]:
        return {
            "python": self.python,
            "max_iter": self.max_iter,
            "limit": self.limit,
            "scarlet2": self.version,
            "detection": self.detector.settings(),
        }

    def detect(self, case: SceneCase) -> SceneDetections:
        from pathlib import Path

        from ..errors import GalprismError
        from .scarlet import _peaks, run_worker

        t0 = time.perf_counter()
        det_obs = case.detection_observation
        image, variance, valid = det_obs.image[0], det_obs.variance[0], det_obs.valid[0]
        data, labels = self.detector.segment(image, variance, valid)
        centers = np.array([(y, x) for _, y, x in _peaks(data, labels)], dtype=np.float64)
        if centers.size == 0:
            return SceneDetections.empty("nothing detected", time.perf_counter() - t0)
        inputs = {
            "image": image,
            "variance": variance,
            "valid": valid,
            "psf": det_obs.psf[0],
            "centers": centers,
            "max_iter": np.array(self.max_iter),
        }
        if case.bands:
            obs = case.observation
            inputs.update(
                image=obs.image,
                variance=obs.variance,
                valid=obs.valid,
                psf=obs.psf,
                bands=np.array(case.bands),
            )
        res = run_worker(
            self.python,
            Path(__file__).with_name("scene_scarlet_worker.py"),
            inputs,
            self.timeout,
            case.name,
        )
        models = np.asarray(res["models"], dtype=np.float64)
        status = str(res["status"])
        self.version = str(res["version"])
        if status != "ok":
            raise GalprismError(f"scarlet2: {case.name}: fit failed: {status}")
        band_flux = None
        if case.bands:
            if models.shape[1:] != (len(case.bands), *case.shape):
                raise GalprismError(
                    f"scarlet2: {case.name}: worker returned models of shape {models.shape}"
                )
            band_flux = {b: models[:, k].sum(axis=(1, 2)) for k, b in enumerate(case.bands)}
            models = models[:, case.bands.index(str(case.ref_band))]
        flux = models.sum(axis=(1, 2))
        h, w = case.shape
        yy, xx = np.mgrid[:h, :w]
        pos = np.clip(models, 0.0, None)
        norm = np.maximum(pos.sum(axis=(1, 2)), 1e-300)
        x = (pos * xx).sum(axis=(1, 2)) / norm
        y = (pos * yy).sum(axis=(1, 2)) / norm
        # A source whose rendering has no positive light keeps its detection peak.
        empty = pos.sum(axis=(1, 2)) <= 0
        x[empty], y[empty] = centers[empty, 1], centers[empty, 0]
        return SceneDetections(
            x, y, flux, images=models, seconds=time.perf_counter() - t0, band_flux=band_flux
        )

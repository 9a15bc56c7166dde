"""Per-source evaluation of scene deblenders against the scenes view's truth.

``galprism evaluate --scenes`` runs each method (:mod:`galprism.evaluate.scene_peers`) on
every scene of a folder written by ``galprism simulate --view scenes --split test``, matches
its detections to the true sources and measures each true source's recovery:

* **Matching** (:func:`match_sources`): every (truth, detection) pair closer than
  ``radius`` pixels is a candidate; candidates are taken in order of increasing distance
  and a pair is kept when neither member is already matched. Each true source gets at most
  one detection and each detection at most one true source, and a pair of mutual nearest
  neighbours within the radius is always kept.
* **Per true source** (one row of ``results.csv`` per source and method): for a matched
  source, ``flux_err = (F_est - F_true) / F_true`` and its absolute value (``F_true`` is the
  truth table's ``flux``, the source's PSF-convolved light on the image), the centroid
  error (pixels between the detection's and the true position), and where the method gives
  per-source images, ``rmse``: ``sqrt(mean((e - t)^2)) / sigma`` over a ``WINDOW``-pixel
  square around the true position (clipped at the image edge) of the estimated and the
  true PSF-convolved images, and ``g_err``: ``|g_e - g_t|`` of their adaptive-moments
  reduced shears in that window. For methods that classify, whether the kind is right; for
  methods with flux quantiles, whether the true flux lies in the 68% (16th-84th) and 95%
  (2.5th-97.5th) intervals and ``flux_z``, ``F_est - F_true`` over the 68% interval's
  half width (its spread is the factor by which the intervals are too narrow or wide).
  An unmatched true source has no errors (NaN): it counts
  against completeness only.
* **Per method**: completeness (matched / true sources), purity (matched / detections),
  star/galaxy accuracy and interval coverage over matched sources, and per scene the
  relative error of the sum of all detected fluxes against the sum of the true fluxes.
  Medians are given over all true sources, the most blended third (truth ``blendedness``
  at or above its 2/3 quantile over the test set) and the brightest fifth (truth ``flux``
  at or above its 80th percentile).

**Several bands** (scenes of ``galprism simulate --view scenes --bands ...``): matching,
positions, ``flux_err``, ``rmse``, ``g_err`` and the subsets above are those of the
reference band (the truth's ``REFBAND``, i; its ``flux`` and ``blendedness`` columns).
Besides, per band ``b`` and matched source: ``flux_err_<b>`` against the truth's
``flux_<b>``, its absolute value and 68% / 95% interval flags; per colour ``a-b`` of
:data:`COLOURS` whose bands were simulated: the true and measured colours
``-2.5 log10(F_a / F_b)`` and ``colour_err_<a>_<b>`` = measured - true (undefined, NaN,
when a flux is not positive; the summary counts the defined ones); per scene and band the
relative error of the summed fluxes. A method that measures one band (photutils, SEP,
galprism on the reference band alone) has that band's columns only.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .. import __version__
from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError, GalprismError, InputError, OutputExistsError
from ..io.read import ReadOptions, output_stem, read_cutout
from ..observation import Observation
from .measures import Moments, adaptive_moments
from .report import _clean, _fmt, _json_default, results_csv, stat, write_text
from .scene_peers import SceneDetections, SceneMethod
from .testset import find_testset_files

__all__ = [
    "SCENE_METHODS",
    "SINGLE_BAND_METHODS",
    "COLOURS",
    "MATCH_RADIUS",
    "WINDOW",
    "SceneCase",
    "SceneEvalConfig",
    "SceneEvalResult",
    "load_scene",
    "load_scene_set",
    "match_sources",
    "measure_scene",
    "colour",
    "band_figure",
    "evaluate_scenes",
    "scene_summary",
    "run_scene_evaluation",
]

#: methods ``galprism evaluate --scenes`` knows, in report order; ``galprism_1band`` is
#: galprism's scene mode on the reference band alone, with the same prior
SCENE_METHODS: tuple[str, ...] = ("galprism", "galprism_1band", "photutils", "sep", "scarlet2")
#: the default methods of a single-band batch (``galprism_1band`` would repeat ``galprism``)
SINGLE_BAND_METHODS: tuple[str, ...] = ("galprism", "photutils", "sep", "scarlet2")
#: colours (band pairs) measured on batches of several bands, where both were simulated
COLOURS: tuple[tuple[str, str], ...] = (("g", "r"), ("r", "i"), ("i", "z"))
#: default matching radius in pixels (0.5" on HSC's 0.168" pixels, below the PSF's FWHM)
MATCH_RADIUS = 3.0
#: side in pixels of the square around a true source where its image is compared
WINDOW = 33
#: per-source measures summarised as medians (key, title, format)
SOURCE_MEASURES: tuple[tuple[str, str, str], ...] = (
    ("abs_flux_err", "abs flux err", "{:.3f}"),
    ("flux_err", "flux err", "{:+.3f}"),
    ("rmse", "RMSE [σ]", "{:.3f}"),
    ("centroid_err", "centroid [px]", "{:.2f}"),
    ("g_err", "abs Δg", "{:.3f}"),
)

Log = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class SceneCase:
    """One test scene and its truth.

    Attributes
    ----------
    name, path
        File name (the scene's identity in reports and seeds) and path.
    observation
        The scene as ``galprism separate`` reads it.
    truth
        The ``TRUTH`` table (one row per source).
    images
        ``(N, H, W)`` each truth row's noiseless PSF-convolved image (row order), in the
        reference band.
    sigma
        Noise standard deviation of the reference band (square root of the median valid
        variance).
    bands
        The scene's bands in plane order; empty for a single-band scene.
    ref_band
        The reference band (the truth's ``REFBAND``) of a scene of several bands, else None.
    ref_observation
        The reference band alone (what single-band methods see), or None for a
        single-band scene (the observation itself).
    """

    name: str
    path: Path
    observation: Observation
    truth: Table
    images: np.ndarray
    sigma: float
    bands: tuple[str, ...] = ()
    ref_band: str | None = None
    ref_observation: Observation | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the scene."""
        return tuple(self.observation.shape[1:])  # type: ignore[return-value]

    @property
    def detection_observation(self) -> Observation:
        """The single-band image that detection and single-band methods use."""
        return self.observation if self.ref_observation is None else self.ref_observation

    def colours(self) -> tuple[tuple[str, str], ...]:
        """The pairs of :data:`COLOURS` whose two bands the scene has."""
        return tuple((a, b) for a, b in COLOURS if a in self.bands and b in self.bands)


def load_scene(path: str | os.PathLike[str]) -> SceneCase:
    """Read one scene and its truth file (``truth/<stem>.truth.fits`` beside it).

    Raises
    ------
    InputError
        If the file is not a test-split scenes-view file, its truth file is missing or
        lacks ``TRUTH`` / ``TRUTH_IMAGES``, or shapes disagree; the message names the file.
    """
    path = Path(path)
    with fits.open(path) as hdul:
        split = str(hdul[0].header.get("SPLIT", "")).strip()
        view = str(hdul[0].header.get("VIEW", "")).strip()
    if split != "test":
        raise InputError(
            f"{path}: SPLIT = {split or 'missing'!r}; evaluations use test-split scenes only"
        )
    if view != "scenes":
        raise InputError(f"{path}: VIEW = {view or 'missing'!r}; --scenes needs scenes-view files")
    obs = read_cutout(path)
    tpath = path.parent / "truth" / f"{output_stem(path)}.truth.fits"
    if not tpath.is_file():
        raise InputError(f"{path}: truth file {tpath} not found")
    with fits.open(tpath) as hdul:
        names = [h.name for h in hdul]
        for hdu in ("TRUTH", "TRUTH_IMAGES"):
            if hdu not in names:
                raise InputError(f"{tpath}: no {hdu} HDU")
        truth = Table.read(hdul["TRUTH"])
        cube = np.asarray(hdul["TRUTH_IMAGES"].data, dtype=np.float64)
    bands: tuple[str, ...] = ()
    ref_band: str | None = None
    ref_obs: Observation | None = None
    if obs.n_bands > 1:
        bands, ref_band, ref_obs, cube = _bands_of(path, tpath, obs, truth, cube)
    required = ("id", "kind", "x", "y", "flux", "blendedness")
    required += tuple(f"flux_{b}" for b in bands)
    missing = [c for c in required if c not in truth.colnames]
    if missing:
        raise InputError(f"{tpath}[TRUTH]: missing column(s) {', '.join(missing)}")
    if cube.ndim == 2:
        cube = cube[None]
    if cube.ndim != 3 or cube.shape[1:] != obs.shape[1:]:
        raise InputError(
            f"{tpath}[TRUTH_IMAGES]: shape {cube.shape} does not match the image {obs.shape[1:]}"
        )
    planes = np.asarray(truth["plane"], int) if "plane" in truth.colnames else np.arange(len(truth))
    if len(truth) and (planes.min() < 0 or planes.max() >= cube.shape[0]):
        raise InputError(f"{tpath}: TRUTH plane column points beyond TRUTH_IMAGES")
    truth["kind"] = np.char.strip(np.asarray(truth["kind"]).astype(str))
    ref = obs if ref_obs is None else ref_obs
    sigma = float(np.sqrt(np.median(ref.variance[ref.valid])))
    return SceneCase(path.name, path, obs, truth, cube[planes], sigma, bands, ref_band, ref_obs)


def _bands_of(
    path: Path, tpath: Path, obs: Observation, truth: Table, cube: np.ndarray
) -> tuple[tuple[str, ...], str, Observation, np.ndarray]:
    """A scene of several bands: its bands, reference band, that band's observation and
    the reference-band planes ``(N, H, W)`` of the truth images ``(N, C, H, W)``."""
    if obs.bands is None:
        raise InputError(f"{path}: {obs.n_bands} planes without band names (BANDS)")
    bands = tuple(str(b) for b in obs.bands)
    truth_bands = str(truth.meta.get("BANDS", "")).replace(" ", "")
    if truth_bands != ",".join(bands):
        raise InputError(
            f"{tpath}[TRUTH]: BANDS = {truth_bands or 'missing'!r}, the scene has {','.join(bands)}"
        )
    ref_band = str(truth.meta.get("REFBAND", "i" if "i" in bands else bands[0])).strip()
    if ref_band not in bands:
        raise InputError(f"{tpath}[TRUTH]: REFBAND {ref_band!r} is not one of {','.join(bands)}")
    if cube.ndim != 4 or cube.shape[1] != len(bands):
        raise InputError(
            f"{tpath}[TRUTH_IMAGES]: shape {cube.shape} is not (sources, {len(bands)} bands, H, W)"
        )
    ref_obs = read_cutout(path, ReadOptions(band=ref_band))
    return bands, ref_band, ref_obs, cube[:, bands.index(ref_band)]


def load_scene_set(folder: str | os.PathLike[str], limit: int | None = None) -> list[SceneCase]:
    """The scenes of a folder, sorted by name (the first ``limit`` only when given)."""
    files = find_testset_files(folder)
    if limit is not None:
        files = files[:limit]
    cases = [load_scene(p) for p in files]
    _batch_bands(cases)  # one set of bands per batch
    return cases


def match_sources(truth_xy: np.ndarray, det_xy: np.ndarray, radius: float) -> np.ndarray:
    """One-to-one matching of detections to true sources by increasing distance.

    Parameters
    ----------
    truth_xy, det_xy
        ``(N, 2)`` and ``(M, 2)`` positions ``(x, y)`` in pixels.
    radius
        Largest matched distance in pixels.

    Returns
    -------
    np.ndarray
        ``(N,)`` index of each true source's detection, -1 when unmatched.
    """
    t = np.asarray(truth_xy, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(det_xy, dtype=np.float64).reshape(-1, 2)
    out = np.full(len(t), -1, dtype=np.int64)
    if len(t) == 0 or len(d) == 0:
        return out
    dist = np.hypot(t[:, None, 0] - d[None, :, 0], t[:, None, 1] - d[None, :, 1])
    ti, di = np.nonzero(dist <= radius)
    # Stable sort: equal distances are resolved by truth row, then detection index.
    order = np.argsort(dist[ti, di], kind="stable")
    used = np.zeros(len(d), dtype=bool)
    for k in order:
        i, j = ti[k], di[k]
        if out[i] < 0 and not used[j]:
            out[i] = j
            used[j] = True
    return out


def _window(shape: tuple[int, int], x: float, y: float) -> tuple[slice, slice]:
    h, w = shape
    cx, cy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    half = WINDOW // 2
    return (
        slice(max(cy - half, 0), min(cy + half + 1, h)),
        slice(max(cx - half, 0), min(cx + half + 1, w)),
    )


def _moments(image: np.ndarray, x: float, y: float, sl: tuple[slice, slice]) -> Moments:
    return adaptive_moments(image[sl], 2.0, guess_center=(x - sl[1].start, y - sl[0].start))


def measure_scene(
    case: SceneCase,
    det: SceneDetections,
    method: str,
    *,
    radius: float = MATCH_RADIUS,
    truth_moments: Sequence[Moments] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Match one method's detections in one scene to the truth and measure each true source.

    Returns
    -------
    rows, scene
        One record per true source (see the module docstring), and the scene's record
        (counts, total fluxes and their relative error, seconds, seed, note).
    """
    truth = case.truth
    tx = np.asarray(truth["x"], dtype=np.float64)
    ty = np.asarray(truth["y"], dtype=np.float64)
    tflux = np.asarray(truth["flux"], dtype=np.float64)
    match = match_sources(np.stack([tx, ty], 1), np.stack([det.x, det.y], 1), radius)
    rows: list[dict[str, Any]] = []
    nan = math.nan
    for i in range(len(truth)):
        j = int(match[i])
        row: dict[str, Any] = {
            "scene": case.name,
            "method": method,
            "id": int(truth["id"][i]),
            "kind": str(truth["kind"][i]),
            "x": float(tx[i]),
            "y": float(ty[i]),
            "flux_true": float(tflux[i]),
            "mag": float(truth["mag"][i]) if "mag" in truth.colnames else nan,
            "hlr": float(truth["hlr"][i]) if "hlr" in truth.colnames else nan,
            "blendedness": float(truth["blendedness"][i]),
            "matched": j >= 0,
            "det_index": j,
        }
        keys = ("det_x", "det_y", "flux_est", "flux_err", "abs_flux_err", "centroid_err")
        row.update(dict.fromkeys(keys + ("rmse", "g_err"), nan))
        if j >= 0:
            ferr = (det.flux[j] - tflux[i]) / tflux[i] if tflux[i] > 0 else nan
            row.update(
                det_x=float(det.x[j]),
                det_y=float(det.y[j]),
                flux_est=float(det.flux[j]),
                flux_err=float(ferr),
                abs_flux_err=abs(float(ferr)),
                centroid_err=float(math.hypot(det.x[j] - tx[i], det.y[j] - ty[i])),
            )
            if det.images is not None:
                sl = _window(case.shape, tx[i], ty[i])
                t_img, e_img = case.images[i][sl], det.images[j][sl]
                row["rmse"] = float(np.sqrt(np.mean((e_img - t_img) ** 2)) / case.sigma)
                tm = (
                    truth_moments[i]
                    if truth_moments is not None
                    else _moments(case.images[i], tx[i], ty[i], sl)
                )
                em = _moments(det.images[j], tx[i], ty[i], sl)
                if tm.ok and em.ok:
                    row["g_err"] = float(math.hypot(em.g1 - tm.g1, em.g2 - tm.g2))
        if det.kind is not None:
            row["kind_est"] = str(det.kind[j]) if j >= 0 else ""
            row["kind_ok"] = (str(det.kind[j]) == row["kind"]) if j >= 0 else None
        if det.quantiles is not None:
            q = det.quantiles
            f = tflux[i]
            row["flux_in68"] = bool(q["q16"][j] <= f <= q["q84"][j]) if j >= 0 else None
            row["flux_in95"] = bool(q["q025"][j] <= f <= q["q975"][j]) if j >= 0 else None
            half = (q["q84"][j] - q["q16"][j]) / 2.0 if j >= 0 else nan
            row["flux_z"] = float((det.flux[j] - f) / half) if half > 0 else nan
        if case.bands:
            row.update(_band_measures(case, det, i, j))
        rows.append(row)
    total_true = float(tflux.sum())
    total_est = float(np.sum(det.flux)) if len(det) else 0.0
    scene = {
        "scene": case.name,
        "method": method,
        "n_truth": len(truth),
        "n_detected": len(det),
        "n_matched": int((match >= 0).sum()),
        "flux_true_total": total_true,
        "flux_est_total": total_est,
        "total_flux_err": (total_est - total_true) / total_true if total_true > 0 else nan,
        "seconds": float(det.seconds),
        "seed": det.seed,
        "note": det.note,
    }
    if case.bands:
        band_flux, _ = _det_bands(case, det)
        for b in case.bands:
            t = float(np.sum(case.truth[f"flux_{b}"]))
            e = float(np.sum(band_flux[b])) if b in band_flux else nan
            if b in band_flux and not len(det):
                e = 0.0
            scene[f"flux_true_total_{b}"] = t
            scene[f"flux_est_total_{b}"] = e
            scene[f"total_flux_err_{b}"] = (e - t) / t if t > 0 else nan
    return rows, scene


def colour(flux_a: float, flux_b: float) -> float:
    """``-2.5 log10(flux_a / flux_b)`` (magnitude a minus magnitude b); NaN unless both
    fluxes are positive and finite."""
    if not (flux_a > 0 and flux_b > 0 and math.isfinite(flux_a) and math.isfinite(flux_b)):
        return math.nan
    return -2.5 * math.log10(flux_a / flux_b)


def _det_bands(
    case: SceneCase, det: SceneDetections
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """A method's per-band fluxes and quantiles; one that measures only the reference band
    (``band_flux`` None) has that band's, its ``flux`` and ``quantiles``."""
    if det.band_flux is not None:
        return det.band_flux, det.band_quantiles or {}
    ref = str(case.ref_band)
    return {ref: det.flux}, ({ref: det.quantiles} if det.quantiles is not None else {})


def _band_measures(case: SceneCase, det: SceneDetections, i: int, j: int) -> dict[str, Any]:
    """Per-band flux errors, interval flags and colours of true source ``i`` (detection
    ``j``, -1 when unmatched)."""
    band_flux, band_q = _det_bands(case, det)
    nan = math.nan
    out: dict[str, Any] = {}
    true = {b: float(case.truth[f"flux_{b}"][i]) for b in case.bands}
    est: dict[str, float] = {}
    for b in case.bands:
        f = true[b]
        e = float(band_flux[b][j]) if j >= 0 and b in band_flux else nan
        est[b] = e
        err = (e - f) / f if f > 0 else nan
        out[f"flux_true_{b}"] = f
        out[f"flux_est_{b}"] = e
        out[f"flux_err_{b}"] = err
        out[f"abs_flux_err_{b}"] = abs(err)
        q = band_q.get(b)
        measured = q is not None and j >= 0
        out[f"flux_in68_{b}"] = bool(q["q16"][j] <= f <= q["q84"][j]) if measured else None
        out[f"flux_in95_{b}"] = bool(q["q025"][j] <= f <= q["q975"][j]) if measured else None
    for a, b in case.colours():
        ct, ce = colour(true[a], true[b]), colour(est[a], est[b])
        out[f"colour_true_{a}_{b}"] = ct
        out[f"colour_est_{a}_{b}"] = ce
        out[f"colour_err_{a}_{b}"] = ce - ct
        out[f"abs_colour_err_{a}_{b}"] = abs(ce - ct)
    return out


@dataclass
class SceneEvalResult:
    """Everything a scene evaluation produced.

    Attributes
    ----------
    cases
        The scenes, in order.
    rows
        One record per (true source, method).
    scenes
        One record per (scene, method).
    methods
        ``{name: {"label", "settings", "seconds", "failed_scenes", "error"}}`` in run order.
    skipped
        ``{name: reason}`` for requested methods that could not run.
    """

    cases: list[SceneCase]
    rows: list[dict[str, Any]]
    scenes: list[dict[str, Any]]
    methods: dict[str, dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)


def evaluate_scenes(
    cases: Sequence[SceneCase],
    methods: Sequence[SceneMethod],
    *,
    radius: float = MATCH_RADIUS,
    log: Log | None = None,
    warn: Log | None = None,
) -> SceneEvalResult:
    """Run every method on every scene and measure its detections.

    A method that fails on a scene (a galprism error, or a numerical error of its library)
    is recorded as a scene with no detection and a note, and the evaluation goes on.
    """
    log = log or (lambda msg: None)
    warn = warn or log
    cases = list(cases)
    truth_m: list[list[Moments]] = []
    for c in cases:
        ms = []
        for i in range(len(c.truth)):
            x, y = float(c.truth["x"][i]), float(c.truth["y"][i])
            ms.append(_moments(c.images[i], x, y, _window(c.shape, x, y)))
        truth_m.append(ms)
    rows: list[dict[str, Any]] = []
    scenes: list[dict[str, Any]] = []
    info: dict[str, dict[str, Any]] = {}
    for method in methods:
        entry = {"label": method.label, "settings": method.settings(), "seconds": 0.0}
        entry["failed_scenes"] = 0
        all_bands = bool(getattr(method, "all_bands", False))
        entry["all_bands"] = all_bands
        info[method.name] = entry
        # A method may run on the first scenes only (scarlet2 given a limit).
        limit = getattr(method, "limit", None) or len(cases)
        for c, tm in zip(cases[:limit], truth_m[:limit], strict=True):
            t0 = time.perf_counter()
            try:
                det = method.detect(c)
            except (GalprismError, ValueError, RuntimeError) as exc:
                text = " ".join(str(exc).split()) or type(exc).__name__
                warn(f"{method.name}: {c.name}: failed: {text}")
                det = SceneDetections.empty(f"failed: {text}", time.perf_counter() - t0)
                entry["failed_scenes"] += 1
            entry["seconds"] += time.perf_counter() - t0
            if all_bands and c.bands and det.band_flux is None and not len(det):
                # A method of every band that found nothing (or failed) found nothing in
                # every band: each band's scene total counts as missed, not unmeasured.
                det.band_flux = {b: np.zeros(0) for b in c.bands}
            r, s = measure_scene(c, det, method.name, radius=radius, truth_moments=tm)
            rows += r
            scenes.append(s)
            log(
                f"{method.name}: {c.name}: {s['n_matched']}/{s['n_truth']} matched, "
                f"{s['n_detected']} detected, {det.seconds:.1f} s"
            )
    return SceneEvalResult(cases, rows, scenes, info)


def _frac(values: Sequence[Any]) -> float:
    v = [bool(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else math.nan


def _median(values: Sequence[float]) -> float:
    return stat([float(v) for v in values])[0]


def scene_edges(result: SceneEvalResult) -> dict[str, float]:
    """Thresholds of the subsets: truth blendedness 2/3 quantile, truth flux 80th percentile."""
    b = np.array([float(v) for c in result.cases for v in c.truth["blendedness"]])
    f = np.array([float(v) for c in result.cases for v in c.truth["flux"]])
    b, f = b[np.isfinite(b)], f[np.isfinite(f)]
    return {
        "blended_min": float(np.quantile(b, 2 / 3)) if b.size else math.nan,
        "bright_min": float(np.quantile(f, 0.8)) if f.size else math.nan,
    }


def _scope(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n_truth": len(rows),
        "n_matched": sum(bool(r["matched"]) for r in rows),
        "completeness": _frac([r["matched"] for r in rows]),
    }
    for key, _, _ in SOURCE_MEASURES:
        out[key] = _median([r[key] for r in rows])
    return out


def _batch_bands(
    cases: Sequence[SceneCase],
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The batch's bands and colours (empty for single-band scenes).

    Raises
    ------
    InputError
        If the scenes do not all have the same bands and reference band.
    """
    kinds = {(c.bands, c.ref_band) for c in cases}
    if len(kinds) > 1:
        raise InputError(
            f"{cases[0].path.parent}: the scenes have different bands or reference bands "
            f"({'; '.join(sorted(','.join(b) or 'one band' for b, _ in kinds))})"
        )
    if not cases or not cases[0].bands:
        return (), ()
    return cases[0].bands, cases[0].colours()


def _in_scope(rows: list[dict[str, Any]], edges: dict[str, float]) -> dict[str, list]:
    return {
        "all": rows,
        "blended": [r for r in rows if r["blendedness"] >= edges["blended_min"]],
        "bright": [r for r in rows if r["flux_true"] >= edges["bright_min"]],
    }


def _band_summary(
    rows: list[dict[str, Any]],
    scenes: list[dict[str, Any]],
    bands: Sequence[str],
    edges: dict[str, float],
) -> dict[str, Any]:
    """Per band: medians of the flux errors per subset, interval coverage, scene totals."""
    out: dict[str, Any] = {}
    for b in bands:
        entry: dict[str, Any] = {
            "coverage68": _frac([r.get(f"flux_in68_{b}") for r in rows]),
            "coverage95": _frac([r.get(f"flux_in95_{b}") for r in rows]),
            "n_intervals": sum(r.get(f"flux_in68_{b}") is not None for r in rows),
            "total_flux_err": _median([s[f"total_flux_err_{b}"] for s in scenes]),
            "total_abs_flux_err": _median([abs(s[f"total_flux_err_{b}"]) for s in scenes]),
        }
        for scope, sub in _in_scope(rows, edges).items():
            errs = [r[f"flux_err_{b}"] for r in sub if r["matched"]]
            entry[scope] = {
                "n_truth": len(sub),
                "n_measured": int(np.isfinite(np.asarray(errs, dtype=np.float64)).sum()),
                "abs_flux_err": _median([abs(e) for e in errs]),
                "flux_err": _median(errs),
            }
        out[b] = entry
    return out


def _colour_summary(
    rows: list[dict[str, Any]], colours: Sequence[tuple[str, str]], edges: dict[str, float]
) -> dict[str, Any]:
    """Per colour and subset: matched sources with a defined colour, median signed and
    median absolute colour error."""
    out: dict[str, Any] = {}
    for a, b in colours:
        key = f"colour_err_{a}_{b}"
        entry: dict[str, Any] = {}
        for scope, sub in _in_scope(rows, edges).items():
            errs = np.asarray([r[key] for r in sub if r["matched"]], dtype=np.float64)
            errs = errs[np.isfinite(errs)]
            entry[scope] = {
                "n_truth": len(sub),
                "n_measured": int(errs.size),
                "colour_err": _median(errs.tolist()),
                "abs_colour_err": _median(np.abs(errs).tolist()),
            }
        out[f"{a}-{b}"] = entry
    return out


def scene_summary(result: SceneEvalResult, meta: dict[str, Any]) -> dict[str, Any]:
    """Machine-readable summary (``summary.json`` and ``--json``)."""
    edges = scene_edges(result)
    bands, colours = _batch_bands(result.cases)
    methods: dict[str, Any] = {}
    for name, info in result.methods.items():
        rows = [r for r in result.rows if r["method"] == name]
        scenes = [s for s in result.scenes if s["method"] == name]
        n_det = sum(s["n_detected"] for s in scenes)
        n_match = sum(s["n_matched"] for s in scenes)
        entry: dict[str, Any] = {
            "label": info["label"],
            "settings": info["settings"],
            "n_scenes": len(scenes),
            "failed_scenes": info["failed_scenes"],
            "seconds": info["seconds"],
            "seconds_per_scene": info["seconds"] / len(scenes) if scenes else math.nan,
            "n_truth": len(rows),
            "n_detected": n_det,
            "n_matched": n_match,
            "purity": n_match / n_det if n_det else math.nan,
            "total_flux_err": _median([s["total_flux_err"] for s in scenes]),
            "total_abs_flux_err": _median([abs(s["total_flux_err"]) for s in scenes]),
            "star_galaxy_accuracy": _frac([r.get("kind_ok") for r in rows]),
            "coverage68": _frac([r.get("flux_in68") for r in rows]),
            "coverage95": _frac([r.get("flux_in95") for r in rows]),
            "n_intervals": sum(r.get("flux_in68") is not None for r in rows),
            "all": _scope(rows),
            "blended": _scope([r for r in rows if r["blendedness"] >= edges["blended_min"]]),
            "bright": _scope([r for r in rows if r["flux_true"] >= edges["bright_min"]]),
        }
        if bands:
            ref = result.cases[0].ref_band
            entry["measured_bands"] = list(bands) if info.get("all_bands") else [ref]
            entry["bands"] = _band_summary(rows, scenes, bands, edges)
            entry["colours"] = _colour_summary(rows, colours, edges)
        methods[name] = entry
    extra: dict[str, Any] = {}
    if bands:
        extra = {
            "bands": list(bands),
            "ref_band": result.cases[0].ref_band,
            "colours": [f"{a}-{b}" for a, b in colours],
        }
    return _clean(
        {
            "view": "scenes",
            **extra,
            "n_scenes": len(result.cases),
            "n_sources": sum(len(c.truth) for c in result.cases),
            "match_radius": meta.get("match_radius", MATCH_RADIUS),
            "window": WINDOW,
            "subsets": edges,
            "methods": methods,
            "skipped": result.skipped,
            "meta": meta,
        }
    )


def scene_markdown(summary: dict[str, Any], figures: Sequence[Path] = ()) -> str:
    """``summary.md``: the tables of :func:`scene_summary` with how they were measured."""

    def f(v: Any, spec: str) -> str:
        return _fmt(math.nan if v is None else float(v), spec)

    meta = summary["meta"]
    sub = summary["subsets"]
    lines = [
        "# galprism evaluate --scenes",
        "",
        f"`{meta['command']}`",
        "",
        f"{summary['n_scenes']} scenes, {summary['n_sources']} true sources, from "
        f"`{meta['test_dir']}`. galprism {meta['galprism_version']}, {meta['platform']}.",
        "",
        f"Detections are matched to true sources one to one, nearest pairs first, within "
        f"{summary['match_radius']:g} px. Errors are over matched true sources; flux errors are "
        "relative to the true PSF-convolved flux on the image; RMSE (noise units) and abs Δg "
        f"compare each source's PSF-convolved image with its truth in a {summary['window']} px "
        "square around the true position. Most blended third: truth blendedness ≥ "
        f"{f(sub['blended_min'], '{:.3f}')}; brightest fifth: truth flux ≥ "
        f"{f(sub['bright_min'], '{:.4g}')}.",
        "",
        "## Detection, classification, calibration",
        "",
        "| method | completeness | purity | star/galaxy acc. | 68% cover | 95% cover | "
        "scene total abs err | s/scene |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in summary["methods"].values():
        a = m["all"]
        lines.append(
            f"| {m['label']} | {f(a['completeness'], '{:.3f}')} ({a['n_matched']}/{a['n_truth']})"
            f" | {f(m['purity'], '{:.3f}')} ({m['n_matched']}/{m['n_detected']}) | "
            f"{f(m['star_galaxy_accuracy'], '{:.3f}')} | {f(m['coverage68'], '{:.3f}')} | "
            f"{f(m['coverage95'], '{:.3f}')} | {f(m['total_abs_flux_err'], '{:.3f}')} | "
            f"{f(m['seconds_per_scene'], '{:.2f}')} |"
        )
    lines += [
        "",
        "## Per-source errors (medians over matched true sources)",
        "",
        "| method | sources | completeness | "
        + " | ".join(t for _, t, _ in SOURCE_MEASURES)
        + " |",
        "|---|---|---:|" + "---:|" * len(SOURCE_MEASURES),
    ]
    scopes = (("all", "all"), ("blended", "most blended third"), ("bright", "brightest fifth"))
    for m in summary["methods"].values():
        for key, title in scopes:
            s = m[key]
            cells = [f(s[k], spec) for k, _, spec in SOURCE_MEASURES]
            lines.append(
                f"| {m['label']} | {title} | {f(s['completeness'], '{:.3f}')} "
                f"({s['n_matched']}/{s['n_truth']}) | " + " | ".join(cells) + " |"
            )
    lines.append("")
    if summary.get("bands"):
        lines += _band_markdown(summary, f)
    failed = {n: m["failed_scenes"] for n, m in summary["methods"].items() if m["failed_scenes"]}
    for name, count in failed.items():
        lines.append(f"- {name} failed on {count} scene(s) (see `scenes.csv`, column `note`).")
    for name, why in summary["skipped"].items():
        lines.append(f"- {name}: not run ({why}).")
    if failed or summary["skipped"]:
        lines.append("")
    lines += ["## Settings", "", "```json"]
    lines.append(json.dumps({k: m["settings"] for k, m in summary["methods"].items()}, indent=2))
    lines += ["```", ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    return "\n".join(lines)


def _band_markdown(summary: dict[str, Any], f: Callable[[Any, str], str]) -> list[str]:
    """The per-band and colour tables of a batch of several bands."""
    bands, colours = summary["bands"], summary["colours"]
    scopes = (("all", "all"), ("blended", "most blended third"), ("bright", "brightest fifth"))
    methods = summary["methods"].values()
    head = "| method | sources | " + " | ".join(bands) + " |"
    rule = "|---|---|" + "---:|" * len(bands)
    lines = [
        f"## Per band ({', '.join(bands)}; reference band {summary['ref_band']})",
        "",
        "Matching, subsets and the tables above are those of the reference band. Per band: "
        "median abs relative flux error over matched true sources against the truth's "
        "`flux_<b>`, with the number of sources it is over; – where a method does not "
        "measure the band.",
        "",
        head,
        rule,
    ]
    for m in methods:
        for key, title in scopes:
            cells = []
            for b in bands:
                s = m["bands"][b][key]
                cells.append(f"{f(s['abs_flux_err'], '{:.3f}')} ({s['n_measured']})")
            lines.append(f"| {m['label']} | {title} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Interval coverage per band (68% / 95%, matched sources with intervals) and the "
        "median abs relative error of each scene's summed flux against its true total:",
        "",
        "| method | measure | " + " | ".join(bands) + " |",
        "|---|---|" + "---:|" * len(bands),
    ]
    for m in methods:
        cov = []
        for b in bands:
            e = m["bands"][b]
            cov.append(
                f"{f(e['coverage68'], '{:.3f}')} / {f(e['coverage95'], '{:.3f}')} "
                f"({e['n_intervals']})"
            )
        tot = [f(m["bands"][b]["total_abs_flux_err"], "{:.3f}") for b in bands]
        lines.append(f"| {m['label']} | 68% / 95% cover | " + " | ".join(cov) + " |")
        lines.append(f"| {m['label']} | scene total abs err | " + " | ".join(tot) + " |")
    if colours:
        lines += [
            "",
            "## Colours",
            "",
            "Colours are magnitude differences `-2.5 log10(F_a / F_b)` of the fluxes; error = "
            "measured - true. Median signed error, median abs error and the number of matched "
            "sources with both fluxes positive (methods that measure several bands):",
            "",
            "| method | sources | " + " | ".join(colours) + " |",
            "|---|---|" + "---:|" * len(colours),
        ]
        for m in methods:
            if len(m["measured_bands"]) < 2:
                continue  # a method of one band has no colour
            for key, title in scopes:
                cells = []
                for c in colours:
                    s = m["colours"][c][key]
                    cells.append(
                        f"{f(s['colour_err'], '{:+.3f}')} / {f(s['abs_colour_err'], '{:.3f}')}"
                        f" ({s['n_measured']})"
                    )
                lines.append(f"| {m['label']} | {title} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def band_figure(result: SceneEvalResult, band: str, path: Path, overwrite: bool) -> Path:
    """Absolute flux error in ``band`` of matched sources against truth blendedness."""
    from .figures import _binned_median, plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, name in enumerate(result.methods):
        rows = [r for r in result.rows if r["method"] == name and r["matched"]]
        err = np.array([r.get(f"abs_flux_err_{band}", math.nan) for r in rows], np.float64)
        x = np.array([r["blendedness"] for r in rows], dtype=np.float64)
        keep = np.isfinite(err)
        if not keep.any():
            continue  # the method does not measure this band
        err, x = np.maximum(err[keep], 1e-4), x[keep]  # a perfect flux still shows on a log axis
        ax.scatter(x, err, s=10, alpha=0.4, color=f"C{k}")
        cx, cy = _binned_median(x, err, nbins=5)
        ax.plot(cx, cy, "-o", color=f"C{k}", label=result.methods[name]["label"])
    ax.set_xlabel("truth blendedness (reference band)")
    ax.set_ylabel(f"|relative flux error| in {band} (matched sources)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"Band {band}: points are sources, lines binned medians")
    return save_figure(fig, path, overwrite)


def scene_figure(result: SceneEvalResult, path: Path, overwrite: bool) -> Path:
    """Absolute flux error of matched sources against truth blendedness and truth flux."""
    from .figures import _binned_median, plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for k, name in enumerate(result.methods):
        rows = [r for r in result.rows if r["method"] == name and r["matched"]]
        err = np.array([r["abs_flux_err"] for r in rows], dtype=np.float64)
        floor = 1e-4  # a perfect flux still shows on the log axis
        err = np.maximum(err, floor)
        for ax, key in zip(axes, ("blendedness", "flux_true"), strict=True):
            x = np.array([r[key] for r in rows], dtype=np.float64)
            color = f"C{k}"
            ax.scatter(x, err, s=10, alpha=0.4, color=color)
            xv = np.log10(np.maximum(x, 1e-30)) if key == "flux_true" else x
            cx, cy = _binned_median(xv, err, nbins=5)
            cx = 10**cx if key == "flux_true" else cx
            ax.plot(cx, cy, "-o", color=color, label=result.methods[name]["label"])
    axes[0].set_xlabel("truth blendedness")
    axes[1].set_xlabel("truth flux (PSF-convolved, on the image)")
    axes[1].set_xscale("log")
    axes[0].set_ylabel("|relative flux error| (matched sources)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Per-source flux error: points are sources, lines binned medians")
    return save_figure(fig, path, overwrite)


@dataclass
class SceneEvalConfig:
    """Options of ``galprism evaluate --scenes``.

    Attributes
    ----------
    output_dir, test_dir
        Report folder; folder of ``galprism simulate --view scenes --split test`` files.
    limit
        Use only the first ``limit`` scenes.
    seed
        Run seed (galprism's per-scene seed derives from it and the file name).
    methods
        Which of :data:`SCENE_METHODS` to run; None: all of them on scenes of several
        bands, :data:`SINGLE_BAND_METHODS` on single-band scenes.
    prior, sampler, device
        galprism's prior (name or folder), sampler settings and torch device.
    radius
        Matching radius in pixels.
    scarlet2_python, scarlet2_limit
        Python of an environment with scarlet2 (None: scarlet2 is skipped), and the number
        of scenes it runs on (None: all).
    overwrite
        Replace an existing report.
    """

    output_dir: Path
    test_dir: Path
    limit: int | None = None
    seed: int = 0
    methods: tuple[str, ...] | None = None
    prior: str = "default"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    device: str = "cpu"
    radius: float = MATCH_RADIUS
    scarlet2_python: str | None = None
    scarlet2_limit: int | None = None
    overwrite: bool = False
    command: str = field(default_factory=lambda: shlex.join(["galprism", *sys.argv[1:]]))

    def __post_init__(self) -> None:
        if self.methods is None:
            return self._check_radius()
        unknown = [m for m in self.methods if m not in SCENE_METHODS]
        if unknown or not self.methods:
            raise ConfigError(
                f"scene evaluation methods: unknown or none ({', '.join(unknown)}); "
                f"choose from {', '.join(SCENE_METHODS)}"
            )
        self._check_radius()

    def _check_radius(self) -> None:
        if not self.radius > 0:
            raise ConfigError(f"scene evaluation: matching radius {self.radius} must be positive")


@dataclass
class SceneEvalOutput:
    """What :func:`run_scene_evaluation` returns."""

    result: SceneEvalResult
    paths: dict[str, Path]
    summary: dict[str, Any]
    seconds: float


def _check_prior_bands(prior: Any, obs: Observation, what: str) -> None:
    """A prior that cannot model ``obs``'s bands is refused before any scene is run."""
    try:
        obs.band_index(prior.frame, f"prior {prior.name!r}")
    except GalprismError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _build(
    cfg: SceneEvalConfig, cases: Sequence[SceneCase]
) -> tuple[list[SceneMethod], dict[str, str]]:
    from .scene_peers import GalprismScene, PhotutilsScene, SepScene, sep_available

    methods: list[SceneMethod] = []
    skipped: dict[str, str] = {}
    bands, _ = _batch_bands(cases)
    names = cfg.methods or (SCENE_METHODS if bands else SINGLE_BAND_METHODS)
    prior = None
    for name in names:
        if name in ("galprism", "galprism_1band"):
            from ..priorset import load_priorset

            if name == "galprism_1band" and not bands:
                skipped[name] = "single-band scenes: the same run as galprism"
                continue
            prior = prior or load_priorset(cfg.prior)
            one = name == "galprism_1band"
            if cases:
                c = cases[0]
                _check_prior_bands(prior, c.detection_observation if one else c.observation, name)
            label = f"galprism scene ({prior.name}, {cases[0].ref_band} only)" if one else None
            methods.append(
                GalprismScene(
                    prior,
                    cfg.sampler,
                    seed=cfg.seed,
                    device=cfg.device,
                    one_band=one,
                    name=name,
                    label=label,
                )
            )
        elif name == "photutils":
            methods.append(PhotutilsScene())
        elif name == "sep":
            if sep_available():
                methods.append(SepScene())
            else:
                skipped["sep"] = "sep is not installed: pip install 'galprism[evaluate]'"
        elif name == "scarlet2":
            if cfg.scarlet2_python is None:
                skipped["scarlet2"] = "no scarlet2 environment (its Python) given"
            else:
                from .scene_peers import Scarlet2Scene

                methods.append(Scarlet2Scene(cfg.scarlet2_python, limit=cfg.scarlet2_limit))
    return methods, skipped


def run_scene_evaluation(
    cfg: SceneEvalConfig, *, log: Log | None = None, warn: Log | None = None
) -> SceneEvalOutput:
    """Load the scenes, run the methods, write ``summary.json``, ``summary.md``,
    ``results.csv`` (one row per true source and method), ``scenes.csv`` (one row per
    scene and method) and ``scene_flux_err.png`` into ``cfg.output_dir``.

    Raises
    ------
    OutputExistsError
        If the folder holds a report and ``cfg.overwrite`` is false.
    GalprismError
        A bad scene file or prior (one line naming it).
    """
    t_start = time.perf_counter()
    log = log or (lambda msg: None)
    warn = warn or log
    out = Path(cfg.output_dir)
    if (out / "summary.md").exists() and not cfg.overwrite:
        raise OutputExistsError(f"{out}: already holds a report and overwriting is not allowed")
    cases = load_scene_set(cfg.test_dir, cfg.limit)
    methods, skipped = _build(cfg, cases)
    log(f"{len(cases)} scenes loaded from {cfg.test_dir}")
    for name, why in skipped.items():
        warn(f"{name}: skipped ({why})")
    result = evaluate_scenes(cases, methods, radius=cfg.radius, log=log, warn=warn)
    result.skipped = skipped
    meta = {
        "command": cfg.command,
        "test_dir": str(cfg.test_dir),
        "limit": cfg.limit,
        "seed": cfg.seed,
        "match_radius": cfg.radius,
        "galprism_version": __version__,
        "platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    summary = scene_summary(result, meta)
    out.mkdir(parents=True, exist_ok=True)
    ow = cfg.overwrite
    paths: dict[str, Path] = {}
    paths["results_csv"] = write_text(out / "results.csv", results_csv(result.rows), ow)
    paths["scenes_csv"] = write_text(out / "scenes.csv", results_csv(result.scenes), ow)
    figs = []
    if result.rows:
        paths["figure"] = scene_figure(result, out / "scene_flux_err.png", ow)
        figs.append(paths["figure"])
        for b in summary.get("bands") or ():
            key = f"figure_{b}"
            paths[key] = band_figure(result, b, out / f"scene_flux_err_{b}.png", ow)
            figs.append(paths[key])
    paths["summary_md"] = write_text(out / "summary.md", scene_markdown(summary, figs), ow)
    text = json.dumps(summary, indent=2, default=_json_default) + "\n"
    paths["summary_json"] = write_text(out / "summary.json", text, ow)
    return SceneEvalOutput(result, paths, summary, time.perf_counter() - t_start)

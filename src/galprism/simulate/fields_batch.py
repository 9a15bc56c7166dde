"""Writing a batch of scenes (``galprism simulate --view scenes``).

Per scene ``<prefix>_<index:06d>``:

* ``<stem>.fits`` in the output folder: the observation in ``galprism separate``'s input
  convention, the same HDUs as the other views (``SCI`` with its TAN WCS and zero point,
  ``PSF``, ``MASK``, ``VARIANCE``), no truth;
* ``truth/<stem>.truth.fits``: ``TRUTH`` (the per-source table of
  :func:`galprism.simulate.fields.truth_table`), ``TRUTH_IMAGES`` (``(N, H, W)`` float32 cube:
  plane ``k`` is the noiseless PSF-convolved image of table row ``k``), ``TRUTH_INTRINSIC``
  (the same sources PSF-free), ``TRUE_BACKGROUND`` (sky residual) and ``TRUE_NOISE``;
* ``truth/<stem>.truth.ecsv``: the ``TRUTH`` table as ECSV.

Outside masked pixels ``SCI = sum(TRUTH_IMAGES) + TRUE_BACKGROUND + TRUE_NOISE`` to float32
rounding. The default prefix is ``<instrument>_scenes_<split>``. Nothing is overwritten
without ``overwrite=True`` (the batch stops before generating anything if a target exists);
a scene that fails is listed in :attr:`BatchResult.failed` and the batch goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import galsim
from astropy.io import fits

from ..atomic import atomic_path
from ..errors import GalprismError, OutputExistsError
from .batch import BatchResult
from .fields import SCENES_VIEW, SceneField, ScenesConfig, SceneSimulator
from .write import _image_hdu, _primary, observation_hdul, write_atomic

__all__ = [
    "default_scene_prefix",
    "scene_paths",
    "scene_observation_hdul",
    "scene_truth_hdul",
    "scene_summary",
    "simulate_scenes",
]


def default_scene_prefix(config: ScenesConfig) -> str:
    """``<instrument>_scenes_<split>``."""
    return f"{config.instrument}_{SCENES_VIEW}_{config.split}"


def scene_paths(
    config: ScenesConfig, output_dir: Path, truth_dir: Path, prefix: str
) -> list[tuple[int, Path, Path, Path]]:
    """(index, observation, truth FITS, truth ECSV) paths of every scene of the batch."""
    out = []
    for i in range(config.start, config.start + config.n):
        stem = f"{prefix}_{i:06d}"
        out.append(
            (
                i,
                output_dir / f"{stem}.fits",
                truth_dir / f"{stem}.truth.fits",
                truth_dir / f"{stem}.truth.ecsv",
            )
        )
    return out


def _scene_cards(hdu: fits.PrimaryHDU, field: SceneField) -> None:
    h = hdu.header
    h["VIEW"] = (SCENES_VIEW, "several galaxies and stars, per-source truth")
    kinds = list(field.truth["kind"])
    h["NSOURCE"] = (len(kinds), "sources placed")
    h["NGALAXY"] = (kinds.count("galaxy"), "galaxies placed")
    h["NSTAR"] = (kinds.count("star"), "stars placed")


def scene_observation_hdul(field: SceneField, meta: Mapping[str, Any]) -> fits.HDUList:
    """The observation file of one scene (the other views' HDUs; no truth in it)."""
    hdul = observation_hdul(field, meta)
    _scene_cards(hdul[0], field)
    return hdul


def scene_truth_hdul(field: SceneField, meta: Mapping[str, Any]) -> fits.HDUList:
    """The truth file of one scene: the per-source table and images, residual and noise."""
    primary = _primary(meta, field.index, "truth")
    _scene_cards(primary, field)
    primary.header["NOISESIG"] = (field.noise_sigma, "[count] std of the added noise")
    primary.header["BKG0"] = (field.background_terms[0], "[count] sky residual constant")
    primary.header["BKGGX"] = (field.background_terms[1], "[count] residual change across x")
    primary.header["BKGGY"] = (field.background_terms[2], "[count] residual change across y")
    primary.header["FOOTSIG"] = (
        float(field.truth.meta["FOOTSIG"]),
        "footprint: own image >= FOOTSIG*NOISESIG",
    )
    table = fits.table_to_hdu(field.truth)
    table.name = "TRUTH"
    table.header["COORDS"] = ("0-based pixel centers of SCI", "x, y convention")
    images = _image_hdu(field.images, "TRUTH_IMAGES", meta)
    images.header["PLANES"] = ("TRUTH rows", "plane k: TRUTH row k (its column plane)")
    intrinsic = _image_hdu(field.intrinsic, "TRUTH_INTRINSIC", meta)
    intrinsic.header["PLANES"] = ("TRUTH rows", "PSF-free; plane k: TRUTH row k")
    hdus = [
        primary,
        table,
        images,
        intrinsic,
        _image_hdu(field.background, "TRUE_BACKGROUND", meta),
        _image_hdu(field.noise, "TRUE_NOISE", meta),
    ]
    return fits.HDUList(hdus)


def _write_ecsv(field: SceneField, path: Path, overwrite: bool) -> None:
    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            field.truth.write(tmp, format="ascii.ecsv", overwrite=True)
    except OutputExistsError:
        raise
    except OSError as exc:
        raise GalprismError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def simulate_scenes(
    config: ScenesConfig,
    output_dir: str | os.PathLike[str],
    *,
    prefix: str | None = None,
    truth_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    simulator: SceneSimulator | None = None,
) -> BatchResult:
    """Simulate a batch of scenes and write it (observation, truth FITS, truth ECSV).

    Parameters
    ----------
    config
        The batch.
    output_dir
        Folder of the observations (created if needed).
    prefix
        File name prefix (default ``<instrument>_scenes_<split>``).
    truth_dir
        Folder of the truth files (default ``<output_dir>/truth``).
    overwrite
        Replace existing files.
    progress
        Called as ``progress(done, total)`` after each scene.
    simulator
        An already prepared :class:`SceneSimulator` for this ``config``.

    Returns
    -------
    BatchResult
        ``hdf5`` and ``hdf5_truth`` are None: scenes are written as FITS only.

    Raises
    ------
    OutputExistsError
        If a target exists and ``overwrite`` is false (nothing is written then).
    ConfigError
        On an invalid configuration or missing data.
    """
    t0 = time.perf_counter()
    sim = simulator or SceneSimulator(config)
    prepare = time.perf_counter() - t0
    prefix = prefix or default_scene_prefix(config)
    out = Path(output_dir)
    tdir = Path(truth_dir) if truth_dir is not None else out / "truth"
    paths = scene_paths(config, out, tdir, prefix)
    if not overwrite:
        existing = [p for _, *files in paths for p in files if p.exists()]
        if existing:
            raise OutputExistsError(
                f"{existing[0]}: output exists ({len(existing)} of this batch's files do) "
                "and overwriting is not allowed"
            )
    out.mkdir(parents=True, exist_ok=True)
    tdir.mkdir(parents=True, exist_ok=True)
    meta = sim.meta()
    failed: list[tuple[int, str]] = []
    written = 0
    t1 = time.perf_counter()
    for k, (i, obs, truth_fits, truth_ecsv) in enumerate(paths):
        try:
            field = sim.scene(i)
            # Truth first: an observation on disk always has its truth beside it.
            write_atomic(scene_truth_hdul(field, meta), truth_fits, overwrite=overwrite)
            _write_ecsv(field, truth_ecsv, overwrite)
            write_atomic(scene_observation_hdul(field, meta), obs, overwrite=overwrite)
            written += 1
        except (GalprismError, galsim.GalSimError, OSError) as exc:
            failed.append((i, " ".join(str(exc).split()) or type(exc).__name__))
        if progress is not None:
            progress(k + 1, config.n)
    return BatchResult(
        n_written=written,
        failed=failed,
        output_dir=out,
        truth_dir=tdir,
        hdf5=None,
        hdf5_truth=None,
        seconds=time.perf_counter() - t1,
        prepare_seconds=prepare,
        meta=meta,
    )


def scene_summary(result: BatchResult) -> dict[str, Any]:
    """The batch's :meth:`BatchResult.to_dict` with the rate named per scene."""
    d = result.to_dict()
    d["scenes_per_minute"] = d.pop("cutouts_per_minute")
    return d

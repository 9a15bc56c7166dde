"""Writing a whole simulated batch to disk (what ``galprism simulate`` runs).

File names: ``<prefix>_<index:06d>.fits`` in the output folder, their truth files
``<prefix>_<index:06d>.truth.fits`` in ``truth/`` below it (so that ``*.fits`` in the output
folder matches observations only), and ``<prefix>.h5`` + ``<prefix>.truth.h5`` for the
HDF5 copy. The default prefix is ``<instrument>_<view>_<split>``.

Nothing is overwritten without ``overwrite=True``: if any target exists the batch stops
before generating anything. A cutout that fails (GalSim error, unwritable file) is
reported in :attr:`BatchResult.failed` and the batch goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import galsim

from ..errors import GalprismError, OutputExistsError
from .simulator import SimulationConfig, Simulator
from .write import HDF5Writer, write_fits_pair

__all__ = ["BatchResult", "default_prefix", "batch_paths", "simulate_batch"]


@dataclass
class BatchResult:
    """What a batch wrote.

    Attributes
    ----------
    n_written
        Cutouts written.
    failed
        (index, one-line reason) of cutouts that could not be made or written.
    output_dir, truth_dir
        FITS folders (None when FITS were not written).
    hdf5, hdf5_truth
        HDF5 files (None when not written).
    seconds
        Wall time of generation and writing (excluding preparation).
    prepare_seconds
        Time spent preparing the batch (catalogue, templates).
    meta
        Batch metadata (seed, instrument, noise...).
    """

    n_written: int
    failed: list[tuple[int, str]]
    output_dir: Path | None
    truth_dir: Path | None
    hdf5: Path | None
    hdf5_truth: Path | None
    seconds: float
    prepare_seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (``galprism simulate --json``); ``bands`` only with several."""
        extra = {"bands": self.meta["bands"]} if self.meta.get("bands") else {}
        return {
            "n_written": self.n_written,
            "n_failed": len(self.failed),
            "failed": [{"index": i, "error": e} for i, e in self.failed],
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "truth_dir": str(self.truth_dir) if self.truth_dir else None,
            "hdf5": str(self.hdf5) if self.hdf5 else None,
            "hdf5_truth": str(self.hdf5_truth) if self.hdf5_truth else None,
            "seconds": round(self.seconds, 3),
            "prepare_seconds": round(self.prepare_seconds, 3),
            "cutouts_per_minute": round(60.0 * self.n_written / self.seconds, 1)
            if self.seconds > 0
            else None,
            "seed": self.meta.get("seed"),
            "galprism_version": self.meta.get("version"),
            "instrument": self.meta.get("instrument"),
            "view": self.meta.get("view"),
            "split": self.meta.get("split"),
            "size": self.meta.get("size"),
            "pixel_scale": self.meta.get("pixel_scale"),
            "zeropoint": self.meta.get("zeropoint"),
            "noise_sigma": self.meta.get("noise_sigma"),
            **extra,
        }


def default_prefix(config: SimulationConfig) -> str:
    """``<instrument>_<view>_<split>``."""
    return f"{config.instrument}_{config.view}_{config.split}"


def batch_paths(
    config: SimulationConfig, output_dir: Path, truth_dir: Path, prefix: str
) -> list[tuple[int, Path, Path]]:
    """(index, observation path, truth path) of every cutout of the batch."""
    out = []
    for i in range(config.start, config.start + config.n):
        stem = f"{prefix}_{i:06d}"
        out.append((i, output_dir / f"{stem}.fits", truth_dir / f"{stem}.truth.fits"))
    return out


def simulate_batch(
    config: SimulationConfig,
    output_dir: str | os.PathLike[str] | None,
    *,
    prefix: str | None = None,
    write_fits: bool = True,
    hdf5: str | os.PathLike[str] | None = "auto",
    truth_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    simulator: Simulator | None = None,
) -> BatchResult:
    """Simulate a batch and write it.

    Parameters
    ----------
    config
        The batch.
    output_dir
        Folder for the FITS files (created if needed); may be None when only ``hdf5`` is
        written to an explicit path.
    prefix
        File name prefix (default :func:`default_prefix`).
    write_fits
        Write one observation + one truth FITS file per cutout.
    hdf5
        HDF5 file of the batch: ``"auto"`` for ``<output_dir>/<prefix>.h5``, a path, or
        None for none. The truth goes to ``<stem>.truth.h5`` beside it.
    truth_dir
        Folder of the truth FITS files (default ``<output_dir>/truth``).
    overwrite
        Replace existing files.
    progress
        Called as ``progress(done, total)`` after each cutout.
    simulator
        An already prepared :class:`Simulator` for this ``config``.

    Returns
    -------
    BatchResult

    Raises
    ------
    OutputExistsError
        If a target exists and ``overwrite`` is false (nothing is written then).
    ConfigError
        On an invalid configuration or missing data.
    """
    t0 = time.perf_counter()
    sim = simulator or Simulator(config)
    prepare = time.perf_counter() - t0
    prefix = prefix or default_prefix(config)
    if output_dir is None and (write_fits or hdf5 == "auto"):
        raise GalprismError(
            "simulate: an output folder is needed for FITS files or the default HDF5 path"
        )
    out = Path(output_dir) if output_dir is not None else None
    tdir = (
        Path(truth_dir) if truth_dir is not None else (out / "truth" if out is not None else None)
    )
    paths = (
        batch_paths(config, out, tdir, prefix)
        if write_fits and out is not None and tdir is not None
        else []
    )
    h5_path = (
        (out / f"{prefix}.h5")
        if hdf5 == "auto" and out is not None
        else (Path(hdf5) if hdf5 not in (None, "auto") else None)
    )
    if not overwrite:
        targets = [p for _, obs, tru in paths for p in (obs, tru)]
        if h5_path is not None:
            targets += [
                h5_path,
                h5_path.with_name(f"{h5_path.stem}.truth{h5_path.suffix or '.h5'}"),
            ]
        existing = [p for p in targets if p.exists()]
        if existing:
            raise OutputExistsError(
                f"{existing[0]}: output exists ({len(existing)} of this batch's files do) "
                "and overwriting is not allowed"
            )
    for d in {p.parent for _, obs, tru in paths for p in (obs, tru)} | (
        {h5_path.parent} if h5_path else set()
    ):
        d.mkdir(parents=True, exist_ok=True)
    meta = sim.meta()
    writer = (
        HDF5Writer(h5_path, meta, sim.psf_stack(), overwrite=overwrite)
        if h5_path is not None
        else None
    )
    failed: list[tuple[int, str]] = []
    written = 0
    t1 = time.perf_counter()
    indices = range(config.start, config.start + config.n)
    path_of = {i: (obs, tru) for i, obs, tru in paths}
    try:
        for k, i in enumerate(indices):
            try:
                cutout = sim.cutout(i)
                if i in path_of:
                    write_fits_pair(cutout, meta, *path_of[i], overwrite=overwrite)
                if writer is not None:
                    writer.add(cutout)
                written += 1
            except (GalprismError, galsim.GalSimError, OSError) as exc:
                failed.append((i, " ".join(str(exc).split()) or type(exc).__name__))
            if progress is not None:
                progress(k + 1, config.n)
        h5_files = writer.close() if writer is not None else (None, None)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    return BatchResult(
        n_written=written,
        failed=failed,
        output_dir=out if paths else None,
        truth_dir=tdir if paths else None,
        hdf5=h5_files[0],
        hdf5_truth=h5_files[1],
        seconds=time.perf_counter() - t1,
        prepare_seconds=prepare,
        meta=meta,
    )

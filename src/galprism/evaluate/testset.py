"""The simulated test set an evaluation runs on: observations with their truth.

A test set is a folder written by ``galprism simulate --view galaxies --split test``:
observation files ``*.fits`` read exactly as ``galprism separate`` reads them
(:func:`galprism.io.read.read_cutout`), and truth files ``truth/<stem>.truth.fits``.
:func:`make_testset` writes one from a seed, so that an evaluation can be reproduced from
a clean checkout with one command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import InputError
from ..io.read import output_stem, read_cutout
from ..observation import Observation
from .measures import blendedness

__all__ = ["EvalCutout", "load_testset", "make_testset", "sky_plane", "find_testset_files"]


@dataclass(frozen=True, eq=False)
class EvalCutout:
    """One test cutout and what is known about it.

    Attributes
    ----------
    name
        File name (the cutout's identity in reports and seeds).
    observation
        The cutout as ``galprism separate`` reads it (image, variance, mask, PSF, WCS).
    galaxy
        ``(H, W)`` true central galaxy, intrinsic (PSF-free), in the cutout's units.
    galaxy_conv
        ``(H, W)`` the same convolved with the cutout's PSF.
    neighbours_conv
        ``(H, W)`` every other source, convolved (the sky view minus its flat residual).
    sigma
        Noise standard deviation (square root of the median valid variance).
    blendedness
        :func:`galprism.evaluate.measures.blendedness` of the convolved truth.
    central_ident
        COSMOS IDENT of the central galaxy (-1 when unknown).
    """

    name: str
    observation: Observation
    galaxy: np.ndarray
    galaxy_conv: np.ndarray
    neighbours_conv: np.ndarray
    sigma: float
    blendedness: float
    central_ident: int = -1

    @property
    def image(self) -> np.ndarray:
        """``(H, W)`` observed image (0 at masked pixels)."""
        return self.observation.image[0]

    @property
    def valid(self) -> np.ndarray:
        return self.observation.valid[0]


def sky_plane(header: fits.Header, size: tuple[int, int]) -> np.ndarray:
    """The simulator's flat sky residual (``BKG0``, ``BKGGX``, ``BKGGY``) on a cutout.

    It is part of ``TRUE_SKY`` but is no neighbour, so blendedness leaves it out.
    """
    h, w = size
    b0 = float(header.get("BKG0", 0.0))
    gx = float(header.get("BKGGX", 0.0))
    gy = float(header.get("BKGGY", 0.0))
    cx = (np.arange(w) - 0.5 * (w - 1)) / w
    cy = (np.arange(h) - 0.5 * (h - 1)) / h
    return b0 + gx * cx[None, :] + gy * cy[:, None]


def _truth_array(hdul: fits.HDUList, name: str, path: Path, shape: tuple[int, int]) -> np.ndarray:
    if name not in hdul:
        raise InputError(
            f"{path}: truth file has no {name} HDU (is it a galaxies-view truth file?)"
        )
    data = hdul[name].data
    if data is None or data.shape != shape:
        raise InputError(
            f"{path}[{name}]: expected a {shape[1]}x{shape[0]} image, got "
            f"{None if data is None else data.shape}"
        )
    arr = np.asarray(data, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{path}[{name}]: contains non-finite values")
    return arr


def find_testset_files(folder: str | os.PathLike[str], pattern: str = "*.fits") -> list[Path]:
    """Observation files of a test-set folder matching ``pattern``, sorted by name (not
    ``truth/``)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: test set folder not found")
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise InputError(
            f"{root}: no {pattern} observation files (make one with galprism simulate --split test)"
        )
    return files


def load_cutout(
    path: str | os.PathLike[str], truth_dir: str | os.PathLike[str] | None = None
) -> EvalCutout:
    """Read one observation and its truth file.

    Raises
    ------
    InputError
        If the file is not from the test split, the truth file is missing, or shapes
        disagree; the message names the file.
    """
    path = Path(path)
    with fits.open(path) as hdul:
        split = str(hdul[0].header.get("SPLIT", "")).strip()
        view = str(hdul[0].header.get("VIEW", "")).strip()
    if split != "test":
        raise InputError(
            f"{path}: SPLIT = {split or 'missing'!r}; evaluations use test-split cutouts only"
        )
    if view != "galaxies":
        raise InputError(
            f"{path}: VIEW = {view or 'missing'!r}; evaluations need galaxies-view cutouts"
        )
    obs = read_cutout(path)
    if obs.n_bands != 1:
        raise InputError(f"{path}: {obs.n_bands} bands; the evaluation handles single-band cutouts")
    tdir = Path(truth_dir) if truth_dir is not None else path.parent / "truth"
    tpath = tdir / f"{output_stem(path)}.truth.fits"
    if not tpath.is_file():
        raise InputError(f"{path}: truth file {tpath} not found")
    shape = obs.shape[1:]
    with fits.open(tpath) as hdul:
        galaxy = _truth_array(hdul, "TRUE_GALAXY", tpath, shape)
        galaxy_conv = _truth_array(hdul, "TRUE_GALAXY_CONV", tpath, shape)
        sky_conv = _truth_array(hdul, "TRUE_SKY_CONV", tpath, shape)
        neighbours = sky_conv - sky_plane(hdul[0].header, shape)
        ident = int(hdul[0].header.get("CENTID", -1))
    valid_var = obs.variance[obs.valid]
    sigma = float(np.sqrt(np.median(valid_var)))
    return EvalCutout(
        name=path.name,
        observation=obs,
        galaxy=galaxy,
        galaxy_conv=galaxy_conv,
        neighbours_conv=neighbours,
        sigma=sigma,
        blendedness=blendedness(galaxy_conv, neighbours),
        central_ident=ident,
    )


def load_testset(
    folder: str | os.PathLike[str], limit: int | None = None, pattern: str = "*.fits"
) -> list[EvalCutout]:
    """Every cutout of a test-set folder (the first ``limit`` by name when given)."""
    files = find_testset_files(folder, pattern)
    if limit is not None:
        files = files[: int(limit)]
    return [load_cutout(p) for p in files]


def make_testset(
    folder: str | os.PathLike[str],
    n: int,
    seed: int,
    *,
    data_dir: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Simulate ``n`` test-split galaxies-view cutouts into ``folder`` (FITS + truth).

    The same ``seed`` gives byte-identical files (see ``docs/simulate.md``).
    """
    from ..simulate import SimulationConfig, simulate_batch  # local: loads GalSim data

    config = SimulationConfig(
        view="galaxies", split="test", n=int(n), seed=int(seed), data_dir=data_dir
    )
    result = simulate_batch(config, folder, hdf5=None, overwrite=overwrite)
    if result.failed:
        index, reason = result.failed[0]
        raise InputError(
            f"{folder}: simulating the test set failed for {len(result.failed)} cutout(s), e.g. "
            f"#{index}: {reason}"
        )
    return Path(folder)

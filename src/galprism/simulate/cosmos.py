"""The real HST COSMOS galaxies: catalogue access and the train/test split by object.

Any GalSim ``RealGalaxyCatalog`` works (:func:`galprism.simulate.data.find_catalog`). Its
galaxies are split once, by object, into a training set and a test set. Galaxies of one
set never appear in cutouts of the other, neither as the central galaxy nor as a
neighbour, so a prior learned from ``train`` cutouts is evaluated on galaxies it has
never seen.

The split is either given (:func:`read_split_file`: the test galaxies, by IDENT or by
catalogue row) or drawn deterministically from a seed (:func:`make_split`), stratified by
magnitude so that both sets span the catalogue's range: galaxies are sorted by (MAG,
IDENT), cut into consecutive groups of ten, and three of each group (fewer in a short
last group, in proportion) go to the test set, drawn with the seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import galsim
import numpy as np
from astropy.table import Table

from ..errors import ConfigError, InputError
from .data import find_catalog

__all__ = [
    "HSC_MAG_BANDS",
    "SPLIT_SEED",
    "SPLITS",
    "SPLIT_FILE_FORMAT",
    "GalaxyRecord",
    "CosmosCatalog",
    "make_split",
    "read_split_file",
]

#: default seed of the split draw; changing it changes which galaxies are held out
SPLIT_SEED = 20251005
#: catalogue columns the simulator reads (and ``stamp_flux``, for the HST-like instrument)
COLUMNS = ("IDENT", "MAG", "NOISE_VARIANCE", "PIXEL_SCALE")
#: bands of the ``HSC_<band>`` magnitude columns of the ``_fits`` companion, in this order
HSC_MAG_BANDS = ("g", "r", "i", "z", "y")
#: what :func:`read_split_file` accepts, for help texts
SPLIT_FILE_FORMAT = (
    "the test galaxies, one per line: IDENTs, or catalogue row numbers (0-based) under a "
    "first line INDEX; # starts a comment; or an ECSV table with an IDENT or INDEX column"
)
SPLITS = ("train", "test")
_GROUP = 10
_TEST_PER_GROUP = 3


@dataclass(frozen=True)
class GalaxyRecord:
    """One row of the COSMOS catalogue.

    Attributes
    ----------
    ident
        COSMOS ``IDENT``.
    index
        Row index in the GalSim catalogue.
    mag
        F814W AB magnitude (``MAG``), used as the i-band magnitude.
    stamp_flux
        The catalogue's ``stamp_flux``: the galaxy's flux in the stamp's native units
        (electrons/s); NaN when the catalogue has no such column.
    noise_variance
        Per-pixel variance of the stamp's own noise, native units.
    pixel_scale
        Stamp pixel scale in arcsec (0.03).
    flux_radius
        SExtractor half-light radius in HST pixels (NaN when unknown).
    hsc_mags
        HSC g, r, i, z, y AB magnitudes (``HSC_g`` ... ``HSC_y`` of the ``_fits``
        companion), NaN when unknown; empty when the companion has none.
    """

    ident: int
    index: int
    mag: float
    stamp_flux: float
    noise_variance: float
    pixel_scale: float
    flux_radius: float
    hsc_mags: tuple[float, ...] = ()

    def flux(self, zeropoint: float) -> float:
        """Total flux on an AB ``zeropoint`` at the catalogue magnitude."""
        return 10.0 ** (-0.4 * (self.mag - zeropoint))


def make_split(
    idents: list[int], mags: list[float], seed: int = SPLIT_SEED
) -> dict[str, list[int]]:
    """Deterministic magnitude-stratified split of galaxies into train and test.

    Parameters
    ----------
    idents, mags
        Catalogue ``IDENT`` and magnitude of every galaxy.
    seed
        Seed of the draw inside each magnitude group.

    Returns
    -------
    dict
        ``{"train": [...], "test": [...]}``, each sorted by IDENT.
    """
    if len(idents) != len(mags) or len(set(idents)) != len(idents):
        raise ConfigError("COSMOS split: IDENTs must be unique and match the magnitudes one to one")
    order = sorted(range(len(idents)), key=lambda i: (mags[i], idents[i]))
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for start in range(0, len(order), _GROUP):
        group = order[start : start + _GROUP]
        k = max(1, round(_TEST_PER_GROUP * len(group) / _GROUP))
        chosen = rng.choice(len(group), size=k, replace=False)
        test.extend(idents[group[c]] for c in chosen)
    test_set = set(test)
    return {"train": sorted(i for i in idents if i not in test_set), "test": sorted(test_set)}


def _split_values(path: Path) -> tuple[str, list[int]]:
    """``("IDENT" | "INDEX", values)`` of a split file (see :data:`SPLIT_FILE_FORMAT`)."""
    if path.suffix.lower() == ".ecsv":
        try:
            table = Table.read(path, format="ascii.ecsv")
        except Exception as exc:  # noqa: BLE001 - astropy raises many kinds on bad files
            raise InputError(f"{path}: not a readable ECSV table ({exc})") from exc
        kinds = [c for c in ("IDENT", "INDEX") if c in table.colnames]
        if len(kinds) != 1:
            raise InputError(f"{path}: needs exactly one of the columns IDENT or INDEX")
        column = table[kinds[0]]
        if column.dtype.kind not in "iu":
            raise InputError(f"{path}: column {kinds[0]} must hold integers")
        return kinds[0], [int(v) for v in column]
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the split file ({exc})") from exc
    kind, values = "IDENT", []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not values and kind == "IDENT" and text.upper() in ("IDENT", "INDEX"):
            kind = text.upper()
            continue
        try:
            values.append(int(text))
        except ValueError:
            raise InputError(f"{path}:{number}: {text!r} is not an integer {kind}") from None
    return kind, values


def read_split_file(path: str | os.PathLike[str], idents: list[int]) -> dict[str, list[int]]:
    """A train/test split given as a file listing the test galaxies.

    Parameters
    ----------
    path
        The file (format: :data:`SPLIT_FILE_FORMAT`).
    idents
        The catalogue's ``IDENT`` column, in row order.

    Returns
    -------
    dict
        ``{"train": [...], "test": [...]}``, each sorted by IDENT; every galaxy not listed
        is a training galaxy.

    Raises
    ------
    InputError
        If the file is missing or unreadable, names a galaxy the catalogue lacks or one
        twice, or leaves either set empty.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split file not found")
    kind, values = _split_values(path)
    if kind == "INDEX":
        bad = [v for v in values if not 0 <= v < len(idents)]
        if bad:
            raise InputError(
                f"{path}: row {bad[0]} is outside the catalogue's 0..{len(idents) - 1}"
            )
        values = [idents[v] for v in values]
    else:
        unknown = sorted(set(values) - set(idents))
        if unknown:
            raise InputError(f"{path}: IDENT {unknown[0]} is not in the catalogue")
    if len(set(values)) != len(values):
        twice = next(v for v in values if values.count(v) > 1)
        raise InputError(f"{path}: galaxy IDENT {twice} is listed twice")
    test = set(values)
    if not test or len(test) == len(set(idents)):
        raise InputError(
            f"{path}: lists {len(test)} of the catalogue's {len(idents)} galaxies; "
            "both the test and the training set need at least one"
        )
    return {"train": sorted(i for i in idents if i not in test), "test": sorted(test)}


class CosmosCatalog:
    """A GalSim COSMOS catalogue: rows, GalSim objects and the train/test split.

    Parameters
    ----------
    catalog
        The ``RealGalaxyCatalog`` FITS file (see
        :func:`galprism.simulate.data.find_catalog`); its image and PSF files lie beside it.
    data_dir
        Data folder whose ``cosmos/`` holds the catalogue, when ``catalog`` is not given.
    split_seed
        Seed of the drawn split (:func:`make_split`), when ``split_file`` is not given.
    split_file
        File listing the test galaxies (:func:`read_split_file`).

    Raises
    ------
    ConfigError
        If no catalogue is given or found, or it lacks a column the simulator reads.
    InputError
        If the catalogue or the split file cannot be read.
    """

    def __init__(
        self,
        catalog: str | os.PathLike[str] | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        split_seed: int = SPLIT_SEED,
        split_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path: Path = find_catalog(catalog, data_dir)
        self.dir: Path = self.path.parent
        try:
            table = Table.read(self.path)
        except Exception as exc:  # noqa: BLE001 - astropy raises many kinds on bad files
            raise InputError(f"{self.path}: not a readable FITS catalogue ({exc})") from exc
        missing = [c for c in COLUMNS if c not in table.colnames]
        if missing:
            raise ConfigError(
                f"{self.path}: lacks the column(s) {', '.join(missing)} of a GalSim "
                "RealGalaxyCatalog"
            )
        radii: dict[int, float] = {}
        colours: dict[int, tuple[float, ...]] = {}
        # GalSim's companion of real_galaxy_catalog_X.fits (flux_radius, ...), optional.
        extra = self.dir / f"{self.path.stem}_fits.fits"
        if extra.is_file():
            fits_table = Table.read(extra)
            if "flux_radius" in fits_table.colnames:
                radii = {
                    int(i): float(r)
                    for i, r in zip(fits_table["IDENT"], fits_table["flux_radius"], strict=True)
                }
            hsc_cols = [f"HSC_{b}" for b in HSC_MAG_BANDS]
            if all(c in fits_table.colnames for c in hsc_cols):
                mags = np.stack([np.asarray(fits_table[c], dtype=np.float64) for c in hsc_cols])
                colours = {
                    int(i): tuple(float(m) for m in mags[:, k])
                    for k, i in enumerate(fits_table["IDENT"])
                }
        self.companion: Path | None = extra if extra.is_file() else None
        has_flux = "stamp_flux" in table.colnames
        self.records: list[GalaxyRecord] = [
            GalaxyRecord(
                ident=int(row["IDENT"]),
                index=k,
                mag=float(row["MAG"]),
                stamp_flux=float(row["stamp_flux"]) if has_flux else math.nan,
                noise_variance=float(row["NOISE_VARIANCE"]),
                pixel_scale=float(row["PIXEL_SCALE"]),
                flux_radius=radii.get(int(row["IDENT"]), math.nan),
                hsc_mags=colours.get(int(row["IDENT"]), ()),
            )
            for k, row in enumerate(table)
        ]
        self.by_ident: dict[int, GalaxyRecord] = {r.ident: r for r in self.records}
        idents = [r.ident for r in self.records]
        if len(self.by_ident) != len(idents):
            raise ConfigError(f"{self.path}: IDENTs are not unique")
        if len(idents) < 2:
            raise ConfigError(f"{self.path}: {len(idents)} galaxies; a split needs at least 2")
        if split_file is not None:
            self.split = read_split_file(split_file, idents)
            self.split_origin = f"file {Path(split_file)}"
        else:
            self.split = make_split(idents, [r.mag for r in self.records], int(split_seed))
            self.split_origin = f"drawn, seed {int(split_seed)}"

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the rows the simulator reads, in row order.

        Identifies the catalogue for cached per-galaxy values
        (:func:`galprism.simulate.hstnoise.load_cache`) wherever its files lie.
        """
        rows = [
            [r.ident, repr(r.mag), repr(r.stamp_flux), repr(r.noise_variance), repr(r.pixel_scale)]
            for r in self.records
        ]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    @cached_property
    def galsim_catalog(self) -> galsim.RealGalaxyCatalog:
        """GalSim's view of the catalogue, images preloaded (70 small stamps)."""
        cat = galsim.RealGalaxyCatalog(self.path.name, dir=str(self.dir))
        cat.preload()
        return cat

    @cached_property
    def acs_zeropoint(self) -> float:
        """AB zero point of the stamps' native units, ``MAG + 2.5 log10(stamp_flux)`` (median).

        Raises
        ------
        ConfigError
            If the catalogue has no ``stamp_flux`` column.
        """
        if any(math.isnan(r.stamp_flux) for r in self.records):
            raise ConfigError(
                f"{self.path}: no stamp_flux column; the HST-like instrument needs it to put "
                "the stamps' noise on the AB flux scale"
            )
        return float(np.median([r.mag + 2.5 * math.log10(r.stamp_flux) for r in self.records]))

    def members(self, split: str) -> list[GalaxyRecord]:
        """Galaxies of ``split`` (``"train"`` or ``"test"``), in IDENT order."""
        if split not in SPLITS:
            raise ConfigError(f"COSMOS split {split!r}: must be one of {', '.join(SPLITS)}")
        return [self.by_ident[i] for i in self.split[split]]

    def real_galaxy(
        self, record: GalaxyRecord, flux: float, gsparams: galsim.GSParams | None = None
    ) -> galsim.RealGalaxy:
        """The galaxy as GalSim's ``RealGalaxy`` (HST PSF deconvolved), scaled to ``flux``."""
        return galsim.RealGalaxy(
            self.galsim_catalog, index=record.index, flux=flux, gsparams=gsparams
        )

    def psf_image(self, record: GalaxyRecord) -> np.ndarray:
        """The ACS PSF of the galaxy's stamp, float64, normalised to unit sum."""
        psf = np.asarray(self.galsim_catalog.getPSFImage(record.index).array, dtype=np.float64)
        return psf / psf.sum()

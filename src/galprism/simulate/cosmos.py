"""The real HST COSMOS galaxies: catalogue access and the train/test split by object.

The 70 galaxies of the GalSim COSMOS sample are split once, by object, into a training
set and a test set (``cosmos_split.json`` beside this module). Galaxies of one set never
appear in cutouts of the other, neither as the central galaxy nor as a neighbour, so a
prior learned from ``train`` cutouts is evaluated on galaxies it has never seen.

The split is stratified by magnitude so that both sets span the catalogue's range:
galaxies are sorted by (MAG, IDENT), cut into consecutive groups of ten, and three of each
group (fewer in a short last group, in proportion) go to the test set, drawn with a fixed
seed. :func:`make_split` recomputes it; the tests check that it equals the shipped file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import galsim
import numpy as np
from astropy.table import Table

from ..errors import ConfigError
from .data import cosmos_dir

__all__ = [
    "CATALOG_FILE",
    "SPLIT_FILE",
    "SPLIT_SEED",
    "SPLITS",
    "GalaxyRecord",
    "CosmosCatalog",
    "make_split",
    "load_split",
]

#: GalSim RealGalaxyCatalog file of the 70 galaxies
CATALOG_FILE = "real_galaxy_catalog_dev.fits"
#: companion catalogue with flux_radius and HSC magnitudes (same row order)
FITS_CATALOG_FILE = "real_galaxy_catalog_dev_fits.fits"
#: split file shipped inside the package
SPLIT_FILE = "cosmos_split.json"
#: seed of the split draw; changing it changes which galaxies are held out
SPLIT_SEED = 20251005
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
        Sum of the HST stamp in its native units (electrons/s).
    noise_variance
        Per-pixel variance of the stamp's own noise, native units.
    pixel_scale
        Stamp pixel scale in arcsec (0.03).
    flux_radius
        SExtractor half-light radius in HST pixels (NaN when unknown).
    """

    ident: int
    index: int
    mag: float
    stamp_flux: float
    noise_variance: float
    pixel_scale: float
    flux_radius: float

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


def load_split() -> dict[str, list[int]]:
    """The shipped train/test split (IDENT lists) of the COSMOS sample."""
    text = resources.files(__package__).joinpath(SPLIT_FILE).read_text()
    data = json.loads(text)
    return {name: [int(i) for i in data[name]] for name in SPLITS}


class CosmosCatalog:
    """The GalSim COSMOS sample: rows, GalSim objects and the split.

    Parameters
    ----------
    data_dir
        Folder holding ``cosmos/`` (see :func:`galprism.simulate.data.find_data_dir`).

    Raises
    ------
    ConfigError
        If the catalogue is missing or does not contain every galaxy of the shipped split.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.dir: Path = cosmos_dir(data_dir)
        table = Table.read(self.dir / CATALOG_FILE)
        radii: dict[int, float] = {}
        extra = self.dir / FITS_CATALOG_FILE
        if extra.is_file():
            fits_table = Table.read(extra)
            radii = {
                int(i): float(r)
                for i, r in zip(fits_table["IDENT"], fits_table["flux_radius"], strict=True)
            }
        self.records: list[GalaxyRecord] = [
            GalaxyRecord(
                ident=int(row["IDENT"]),
                index=k,
                mag=float(row["MAG"]),
                stamp_flux=float(row["stamp_flux"]),
                noise_variance=float(row["NOISE_VARIANCE"]),
                pixel_scale=float(row["PIXEL_SCALE"]),
                flux_radius=radii.get(int(row["IDENT"]), math.nan),
            )
            for k, row in enumerate(table)
        ]
        self.by_ident: dict[int, GalaxyRecord] = {r.ident: r for r in self.records}
        split = load_split()
        missing = sorted(set(split["train"] + split["test"]) - set(self.by_ident))
        if missing:
            raise ConfigError(
                f"{self.dir / CATALOG_FILE}: lacks {len(missing)} galaxies of the shipped split "
                f"(e.g. IDENT {missing[0]}); it is not the COSMOS sample galprism was built for"
            )
        self.split = split

    @cached_property
    def galsim_catalog(self) -> galsim.RealGalaxyCatalog:
        """GalSim's view of the catalogue, images preloaded (70 small stamps)."""
        cat = galsim.RealGalaxyCatalog(CATALOG_FILE, dir=str(self.dir))
        cat.preload()
        return cat

    @cached_property
    def acs_zeropoint(self) -> float:
        """AB zero point of the stamps' native units, ``MAG + 2.5 log10(stamp_flux)`` (median)."""
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

    def noise_image(self, record: GalaxyRecord) -> tuple[galsim.Image | None, float, float]:
        """GalSim's (correlation-function image, pixel scale, variance) of the stamp's noise."""
        return self.galsim_catalog.getNoiseProperties(record.index)

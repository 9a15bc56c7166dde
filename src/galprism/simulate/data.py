"""Where the real survey data that ``galprism simulate`` starts from comes from.

Nothing here ships with the package (licences and size), and nothing is guessed: every
file comes from an argument or from the ``GALPRISM_DATA_DIR`` environment variable.

* The galaxies: any GalSim ``RealGalaxyCatalog`` FITS file (``catalog``). GalSim finds
  the image and PSF files it names beside it, as ``galsim.RealGalaxyCatalog(file_name,
  dir)`` does. Without ``catalog``, the single ``real_galaxy_catalog*.fits`` of the data
  folder's ``cosmos/`` subfolder is used.
* The HSC-like instrument's PSF and noise: ``hsc/hsc_cosmos_35.npz`` and ``multiview/``
  of the data folder (scarlet's test data, MIT licence).

The data folder is the ``data_dir`` argument when given, else ``$GALPRISM_DATA_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

__all__ = [
    "ENV_VAR",
    "COSMOS_SOURCES",
    "HSC_SOURCES",
    "find_data_dir",
    "find_catalog",
    "hsc_npz_path",
    "multiview_dir",
]

#: environment variable naming the data folder (the one holding ``cosmos/``, ``hsc/``)
ENV_VAR = "GALPRISM_DATA_DIR"
#: where a COSMOS catalogue can be had, for error messages and help texts
COSMOS_SOURCES = (
    "GalSim's COSMOS sample (galsim_download_cosmos, or its 25.2 / 23.5 example sets) or "
    "BlendingToolKit's COSMOS example set"
)
#: where the HSC files can be had
HSC_SOURCES = "scarlet's test data"


def find_data_dir(
    data_dir: str | os.PathLike[str] | None = None, needed_for: str | None = None
) -> Path:
    """The data folder: ``data_dir`` when given, else ``$GALPRISM_DATA_DIR``.

    Parameters
    ----------
    data_dir
        Folder holding ``hsc/``, ``multiview/`` and optionally ``cosmos/``; it wins over
        the environment variable.
    needed_for
        What needs the folder, e.g. ``"hsc/hsc_cosmos_35.npz (the HSC-like PSF)"``, for
        the error raised when none is given.

    Returns
    -------
    pathlib.Path
        The resolved folder.

    Raises
    ------
    ConfigError
        If neither is given, or the folder does not exist.
    """
    if data_dir is not None:
        path, how = Path(data_dir), "data folder"
    elif os.environ.get(ENV_VAR):
        path, how = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    elif needed_for is not None:
        raise ConfigError(
            f"no data folder given for {needed_for}: pass data_dir or set ${ENV_VAR} to the "
            f"folder holding hsc/ and multiview/ (from {HSC_SOURCES})"
        )
    else:
        raise ConfigError(
            f"no data folder given: pass data_dir or set ${ENV_VAR} to the folder holding "
            f"hsc/ and multiview/ (from {HSC_SOURCES}) and cosmos/ ({COSMOS_SOURCES})"
        )
    if not path.is_dir():
        raise ConfigError(f"{path}: {how} not found")
    return path.resolve()


def _is_main_catalog(path: Path) -> bool:
    # GalSim's companions of real_galaxy_catalog_X.fits are *_fits.fits and *_selection.fits.
    return path.is_file() and not path.name.endswith(("_fits.fits", "_selection.fits"))


def find_catalog(
    catalog: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The GalSim ``RealGalaxyCatalog`` file to draw galaxies from.

    Parameters
    ----------
    catalog
        The catalogue FITS file; wins over the data folder.
    data_dir
        Data folder (see :func:`find_data_dir`) whose ``cosmos/`` holds exactly one
        ``real_galaxy_catalog*.fits`` (not counting GalSim's ``*_fits.fits`` and
        ``*_selection.fits`` companions).

    Returns
    -------
    pathlib.Path
        The resolved catalogue file.

    Raises
    ------
    ConfigError
        If nothing is given, the file is missing, or ``cosmos/`` holds no catalogue or
        several.
    """
    if catalog is not None:
        path = Path(catalog)
        if not path.is_file():
            raise ConfigError(f"{path}: COSMOS catalogue file not found")
        return path.resolve()
    if data_dir is None and not os.environ.get(ENV_VAR):
        raise ConfigError(
            "no COSMOS catalogue given: pass catalog (a GalSim RealGalaxyCatalog FITS file, "
            f"its image and PSF files beside it) or data_dir, or set ${ENV_VAR} to a folder "
            f"whose cosmos/ holds one; get one from {COSMOS_SOURCES}"
        )
    folder = find_data_dir(data_dir) / "cosmos"
    found = sorted(p for p in folder.glob("real_galaxy_catalog*.fits") if _is_main_catalog(p))
    if len(found) != 1:
        what = "none" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise ConfigError(
            f"{folder}: holds {what} real_galaxy_catalog*.fits; pass the catalogue file "
            f"itself (from {COSMOS_SOURCES})"
        )
    return found[0]


def hsc_npz_path(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The real HSC blend ``<data>/hsc/hsc_cosmos_35.npz`` (g,r,i,z,y; PSFs, variance, mask)."""
    what = "hsc/hsc_cosmos_35.npz (the HSC-like instrument's PSF and noise)"
    path = find_data_dir(data_dir, what) / "hsc" / "hsc_cosmos_35.npz"
    if not path.is_file():
        raise ConfigError(
            f"{path}: missing; the HSC-like instrument takes its PSF and noise from it "
            f"(from {HSC_SOURCES})"
        )
    return path


def multiview_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The HST + HSC multiview folder (``Cut_HSC.fits``, ``PSF_HSC.fits``, ...)."""
    path = find_data_dir(data_dir, "multiview/ (the HSC + HST images of one field)") / "multiview"
    if not path.is_dir():
        raise ConfigError(
            f"{path}: missing; it holds Cut_HSC.fits and PSF_HSC.fits (from {HSC_SOURCES})"
        )
    return path

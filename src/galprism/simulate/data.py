"""Where the real survey data that ``galprism simulate`` starts from lives.

The simulator needs the GalSim COSMOS sample (``cosmos/``) and, for the HSC-like
instrument, the real HSC i-band PSF and noise (``hsc/hsc_cosmos_35.npz``,
``multiview/``). None of it ships with the package (licences and size), so the folder is
looked up, in order, from an explicit argument, the ``GALPRISM_DATA_DIR`` environment
variable, ``../shared/data`` beside the current folder, and ``../shared/data`` beside a
source checkout of galprism.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

__all__ = ["ENV_VAR", "find_data_dir", "cosmos_dir", "hsc_npz_path", "multiview_dir"]

#: environment variable naming the data folder (the one holding ``cosmos/``, ``hsc/``)
ENV_VAR = "GALPRISM_DATA_DIR"

_MARKER = Path("cosmos") / "real_galaxy_catalog_dev.fits"


def _candidates(explicit: str | os.PathLike[str] | None) -> list[tuple[Path, str]]:
    if explicit is not None:
        return [(Path(explicit), "the data_dir argument")]
    found: list[tuple[Path, str]] = []
    if os.environ.get(ENV_VAR):
        found.append((Path(os.environ[ENV_VAR]), f"${ENV_VAR}"))
    found.append((Path.cwd().parent / "shared" / "data", "../shared/data from the current folder"))
    # src/galprism/simulate/data.py -> the folder that holds the checkout
    found.append(
        (
            Path(__file__).resolve().parents[4] / "shared" / "data",
            "../shared/data beside the checkout",
        )
    )
    return found


def find_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding ``cosmos/``, ``hsc/`` and ``multiview/``.

    Parameters
    ----------
    explicit
        A folder to use instead of the search; it must hold
        ``cosmos/real_galaxy_catalog_dev.fits``.

    Returns
    -------
    pathlib.Path
        The resolved folder.

    Raises
    ------
    ConfigError
        If no candidate folder holds the COSMOS catalogue.
    """
    tried = []
    for path, how in _candidates(explicit):
        if (path / _MARKER).is_file():
            return path.resolve()
        tried.append(f"{path} ({how})")
    raise ConfigError(
        f"data folder not found: none of {', '.join(tried)} holds {_MARKER}; "
        f"pass --data-dir or set {ENV_VAR}"
    )


def cosmos_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The GalSim COSMOS sample folder (``<data>/cosmos``)."""
    return find_data_dir(data_dir) / "cosmos"


def hsc_npz_path(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The real HSC blend ``<data>/hsc/hsc_cosmos_35.npz`` (g,r,i,z,y; PSFs, variance, mask)."""
    path = find_data_dir(data_dir) / "hsc" / "hsc_cosmos_35.npz"
    if not path.is_file():
        raise ConfigError(
            f"{path}: missing; the HSC-like instrument takes its PSF and noise from it"
        )
    return path


def multiview_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The HST + HSC multiview folder (``Cut_HSC.fits``, ``PSF_HSC.fits``, ...)."""
    path = find_data_dir(data_dir) / "multiview"
    if not path.is_dir():
        raise ConfigError(f"{path}: missing; it holds Cut_HSC.fits and PSF_HSC.fits")
    return path

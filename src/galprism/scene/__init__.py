"""Whole-scene groundwork: find the sources of an image, group them into blends, place them.

* :mod:`.detect`: photutils detection, deblending and measurement (:class:`Detections`).
* :mod:`.catalog`: read, check and write source catalogues (0-based pixel or sky positions).
* :mod:`.blends`: group sources whose footprints overlap into blends with their frames.
* :mod:`.placement`: place prior-grid stamps at sub-pixel positions in a blend frame, and
  the star (PSF times flux) model, as linear operators with exact adjoints.
* :mod:`.classify`: a star-or-galaxy decision from the fit of a point source against an
  extended one.

The modules import only numpy, astropy and torch at import time; photutils is imported
when :func:`~galprism.scene.detect.detect` runs.
"""

from .blends import Blend, group_blends
from .catalog import catalog_hdu, normalize_catalog, read_catalog, write_catalog
from .classify import StarGalaxyFit, star_or_galaxy
from .detect import Detections, detect
from .placement import PlaceStamp, PlaceStamps, StarOperator

__all__ = [
    "Blend",
    "group_blends",
    "catalog_hdu",
    "normalize_catalog",
    "read_catalog",
    "write_catalog",
    "StarGalaxyFit",
    "star_or_galaxy",
    "Detections",
    "detect",
    "PlaceStamp",
    "PlaceStamps",
    "StarOperator",
]

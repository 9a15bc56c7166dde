"""Whole-scene groundwork: find the sources of an image, group them into blends, place them.

* :mod:`.detect`: photutils detection, deblending and measurement (:class:`Detections`).
* :mod:`.catalog`: read, check and write source catalogues (0-based pixel or sky positions).
* :mod:`.blends`: group sources whose footprints overlap into blends with their frames.
* :mod:`.placement`: place prior-grid stamps at sub-pixel positions in a blend frame, and
  the star (PSF times flux) model, as linear operators with exact adjoints.
* :mod:`.classify`: a star-or-galaxy decision from the fit of a point source against an
  extended one.
* :mod:`.model`: the joint linear model of one blend (galaxies drawn from the galaxy prior
  at their positions and flux scales, stars and a background integrated out) and its
  posterior samples.
* :mod:`.views`: further images of the same sky brought to the model frame (matching
  kernel to the prior's resolution, resample, a noise bound for the matched noise).
* :mod:`.joint`: one blend's joint model over the image and such views, and its samples.
* :mod:`.run`: ``galprism separate --scene``: image to catalogue, stamps, model, residual
  and children, blend by blend (imported on demand; it needs the separate pipeline).

The modules import only numpy, astropy and torch at import time (:mod:`.views` and
:mod:`.joint` also scipy; neither is imported here); photutils is imported
when :func:`~galprism.scene.detect.detect` runs.

How the pieces fit a scene model: sources come from :func:`detect` or from
:func:`read_catalog`; :func:`group_blends` gives each blend a box in the image; a blend's
frame is that box on the prior's grid, each galaxy is a prior-grid stamp placed by
:class:`PlaceStamps` (positions in the frame's pixels), and the observation's operators
(PSF, mask, downsampling) map the frame to the observed pixels of the box. A star is not
drawn on the prior's grid: :class:`StarOperator` adds its PSF image directly to the
observed pixels, after the observation's convolution.
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

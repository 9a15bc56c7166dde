"""Rendering real COSMOS galaxies onto a cutout grid with GalSim.

Each galaxy is prepared once per batch as a :class:`GalaxyTemplate`: GalSim's
``RealGalaxy`` (the HST stamp with the ACS PSF deconvolved) convolved with a small
Gaussian that band-limits it (the *truth kernel*, by default 0.2" FWHM at the HSC scale,
about one pixel), drawn once on a grid finer than the output pixels and wrapped as an
``InterpolatedImage``. Without that kernel the deconvolved stamp carries HST noise
amplified up to the ACS resolution, which is far above anything a ground-based pixel
should contain (see ``docs/simulate.md``).

Each appearance of the galaxy in a cutout is the template flipped, rotated, sheared,
dilated and rescaled in flux (GalSim transformations), drawn in real space on that fine
grid around its position and summed into output pixels (``Image.bin``), which integrates
it over the pixel. This is what makes 1,000 cutouts take minutes rather than an hour:
a fresh FFT draw of the deconvolved ``RealGalaxy`` costs 80 ms, this about 3 ms.

The result is the galaxy's *intrinsic* image on the output grid, i.e. the truth the
priors learn; the instrument PSF is applied afterwards by discrete convolution (see
:mod:`galprism.simulate.scene`), exactly the forward model galprism inverts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import galsim
import numpy as np

from .cosmos import CosmosCatalog, GalaxyRecord

__all__ = [
    "GalaxyTemplate",
    "Placement",
    "build_template",
    "oversampling",
    "draw_source",
    "draw_point",
    "draw_sersic",
]

_TEMPLATE_GSPARAMS = galsim.GSParams(maximum_fft_size=16384)


def oversampling(pixel_scale: float, truth_fwhm: float) -> int:
    """Sub-pixels per output pixel so that the truth kernel spans >= 1.5 sub-pixels per sigma."""
    sigma = truth_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return max(2, math.ceil(1.5 * pixel_scale / sigma))


@dataclass(frozen=True)
class GalaxyTemplate:
    """A galaxy ready to be placed: band-limited, on a fine grid, at its catalogue flux.

    Attributes
    ----------
    record
        Its catalogue row.
    profile
        ``InterpolatedImage`` of the band-limited galaxy, total flux = catalogue flux.
    flux
        Catalogue flux in output counts.
    radius
        Half-side of the template in arcsec (bounds the stamp drawn per appearance).
    fine_scale
        Sub-pixel scale of the template (arcsec).
    centroid
        Light centroid (adaptive moments) relative to the template center, arcsec; each
        appearance is centered, flipped and rotated about it.
    """

    record: GalaxyRecord
    profile: galsim.InterpolatedImage
    flux: float
    radius: float
    fine_scale: float
    centroid: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Placement:
    """How one appearance of a galaxy is transformed and where it goes.

    Attributes
    ----------
    x, y
        Center in pixels of the canvas (0-based, pixel centers at integers).
    flux
        Total flux in output counts.
    rotation
        Rotation angle, radians (counter-clockwise), applied after the flip.
    flip
        Mirror x -> -x before rotating.
    g1, g2
        Reduced shear applied after the rotation.
    dilation
        Size scale factor (flux preserving), applied last.
    """

    x: float
    y: float
    flux: float
    rotation: float = 0.0
    flip: bool = False
    g1: float = 0.0
    g2: float = 0.0
    dilation: float = 1.0


def build_template(
    catalog: CosmosCatalog,
    record: GalaxyRecord,
    pixel_scale: float,
    truth_fwhm: float,
    zeropoint: float,
) -> GalaxyTemplate:
    """Prepare one galaxy (one FFT draw of GalSim's ``RealGalaxy``, ~0.1 s).

    Parameters
    ----------
    catalog
        The COSMOS catalogue.
    record
        The galaxy.
    pixel_scale
        Output pixel scale, arcsec.
    truth_fwhm
        FWHM of the Gaussian truth kernel, arcsec.
    zeropoint
        AB zero point of output counts.

    Returns
    -------
    GalaxyTemplate
    """
    flux = record.flux(zeropoint)
    fine = pixel_scale / oversampling(pixel_scale, truth_fwhm)
    rg = catalog.real_galaxy(record, flux=flux, gsparams=_TEMPLATE_GSPARAMS)
    smooth = galsim.Convolve([rg, galsim.Gaussian(fwhm=truth_fwhm)], gsparams=_TEMPLATE_GSPARAMS)
    stamp = catalog.galsim_catalog.getGalImage(record.index)
    # The stamp's extent plus room for the kernel and the deconvolution's ringing.
    half = 0.5 * max(stamp.array.shape) * record.pixel_scale + 3.0 * truth_fwhm + 0.2
    n = 2 * math.ceil(half / fine) + 1
    image = smooth.drawImage(nx=n, ny=n, scale=fine, method="no_pixel")
    profile = galsim.InterpolatedImage(
        image, x_interpolant="lanczos3", flux=flux, calculate_stepk=False, calculate_maxk=False
    )
    # Stamps are cut around catalogue positions, not light centroids (offsets up to ~1
    # HSC pixel): center on the adaptive-moments centroid so "central" means central.
    moments = galsim.hsm.FindAdaptiveMom(image, strict=False)
    centroid = (0.0, 0.0)
    if moments.moments_status == 0:
        centroid = (
            (moments.moments_centroid.x - image.true_center.x) * fine,
            (moments.moments_centroid.y - image.true_center.y) * fine,
        )
    return GalaxyTemplate(
        record=record,
        profile=profile,
        flux=flux,
        radius=0.5 * n * fine,
        fine_scale=fine,
        centroid=centroid,
    )


def _transformed(template: GalaxyTemplate, p: Placement) -> galsim.GSObject:
    obj = template.profile.withFlux(p.flux).shift(-template.centroid[0], -template.centroid[1])
    if p.flip:
        obj = obj.transform(-1.0, 0.0, 0.0, 1.0)
    if p.rotation:
        obj = obj.rotate(p.rotation * galsim.radians)
    if p.g1 or p.g2:
        obj = obj.shear(g1=p.g1, g2=p.g2)
    if p.dilation != 1.0:
        obj = obj.dilate(p.dilation)
    return obj


def _stamp(
    shape: tuple[int, ...], placement: Placement, r: int
) -> tuple[int, int, int, int] | None:
    """``(x0, x1, y0, y1)`` of the square of half-side ``r`` around the placement, clipped to
    the canvas; None when nothing of it is inside."""
    cx, cy = round(placement.x), round(placement.y)
    x0, x1 = max(cx - r, 0), min(cx + r + 1, shape[1])
    y0, y1 = max(cy - r, 0), min(cy + r + 1, shape[0])
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, x1, y0, y1


def draw_source(
    canvas: np.ndarray, template: GalaxyTemplate, placement: Placement, pixel_scale: float
) -> None:
    """Add one transformed galaxy, integrated over output pixels, into ``canvas`` in place.

    Only a stamp around the galaxy is drawn; parts outside the canvas are dropped (their
    light is not in this canvas, as for a real detector edge).

    Parameters
    ----------
    canvas
        2-D float array, modified in place.
    template
        The galaxy.
    placement
        Where and how (pixel coordinates of ``canvas``).
    pixel_scale
        Output pixel scale, arcsec (the template's fine scale must divide it).
    """
    k = round(pixel_scale / template.fine_scale)
    g = math.hypot(placement.g1, placement.g2)
    # Shear stretches by at most (1+g)/sqrt(1-g^2); a flip or rotation keeps the circle.
    reach = (
        (template.radius + math.hypot(*template.centroid))
        * placement.dilation
        * (1.0 + g)
        / math.sqrt(max(1e-6, 1.0 - g * g))
    )
    bounds = _stamp(canvas.shape, placement, math.ceil(reach / pixel_scale) + 1)
    if bounds is None:
        return
    x0, x1, y0, y1 = bounds
    nx, ny = x1 - x0, y1 - y0
    fine = galsim.Image(nx * k, ny * k, scale=pixel_scale / k, dtype=np.float64)
    # The fine image's true center sits at output-pixel coordinate x0 + (nx - 1) / 2.
    offset = (k * (placement.x - (x0 + 0.5 * (nx - 1))), k * (placement.y - (y0 + 0.5 * (ny - 1))))
    _transformed(template, placement).drawImage(image=fine, method="no_pixel", offset=offset)
    canvas[y0:y1, x0:x1] += fine.bin(k, k).array


#: Interpolant of a star's intrinsic image: a point band-limited by Lanczos-5 weights
#: (0.35% of the peak off a shifted 3.4 px Moffat; Lanczos-3 0.8%).
_POINT_ORDER = 5
_POINT = galsim.Lanczos(_POINT_ORDER)


def draw_point(canvas: np.ndarray, placement: Placement) -> None:
    """Add a point source (a star), band-limited to the pixel grid, into ``canvas`` in place.

    The point becomes separable Lanczos-5 weights at its sub-pixel position (each axis
    normalised to unit sum, so the flux is exact). Convolved with a pixelised PSF this is
    that PSF shifted by the sub-pixel offset, which is what a star on a detector is; a
    pixel-integrated point (all the flux in one pixel) would put every star at a pixel
    center. Weights falling outside the canvas are dropped, as for an edge.

    Parameters
    ----------
    canvas
        2-D float array, modified in place.
    placement
        Position (canvas pixels) and flux; the other fields are ignored.
    """
    cx, cy = math.floor(placement.x), math.floor(placement.y)
    offsets = np.arange(1 - _POINT_ORDER, _POINT_ORDER + 1)
    wx = np.array([_POINT.xval(float(v)) for v in cx + offsets - placement.x])
    wy = np.array([_POINT.xval(float(v)) for v in cy + offsets - placement.y])
    stamp = placement.flux * np.outer(wy / wy.sum(), wx / wx.sum())
    xs, ys = cx + offsets, cy + offsets
    keep_x = (xs >= 0) & (xs < canvas.shape[1])
    keep_y = (ys >= 0) & (ys < canvas.shape[0])
    canvas[np.ix_(ys[keep_y], xs[keep_x])] += stamp[np.ix_(keep_y, keep_x)]


def draw_sersic(
    canvas: np.ndarray,
    placement: Placement,
    n: float,
    hlr: float,
    pixel_scale: float,
    truth_fwhm: float = 0.0,
) -> None:
    """Add a sheared GalSim Sersic profile, integrated over output pixels, into ``canvas``.

    Parameters
    ----------
    canvas
        2-D float array, modified in place.
    placement
        Position (canvas pixels), flux and shear (``g1``, ``g2``); rotation, flip and
        dilation are ignored (the shear's angle is already random).
    n
        Sersic index (GalSim accepts 0.3 to 6.2).
    hlr
        Half-light radius, arcsec.
    pixel_scale
        Output pixel scale, arcsec.
    truth_fwhm
        FWHM (arcsec) of the truth kernel convolved in, as for the COSMOS galaxies (0: none).
    """
    obj: galsim.GSObject = galsim.Sersic(n=n, half_light_radius=hlr, flux=placement.flux)
    if placement.g1 or placement.g2:
        obj = obj.shear(g1=placement.g1, g2=placement.g2)
    if truth_fwhm > 0:
        obj = galsim.Convolve([obj, galsim.Gaussian(fwhm=truth_fwhm)])
    # An untruncated profile (GalSim cannot always solve for a truncated one's radius);
    # the stamp of 10 half-light radii holds >= 97% of an n = 4 profile's light.
    r = math.ceil(10.0 * hlr * (1.0 + math.hypot(placement.g1, placement.g2)) / pixel_scale) + 3
    bounds = _stamp(canvas.shape, placement, r)
    if bounds is None:
        return
    x0, x1, y0, y1 = bounds
    nx, ny = x1 - x0, y1 - y0
    image = galsim.Image(nx, ny, scale=pixel_scale, dtype=np.float64)
    offset = (placement.x - (x0 + 0.5 * (nx - 1)), placement.y - (y0 + 0.5 * (ny - 1)))
    obj.drawImage(image=image, offset=offset)
    canvas[y0:y1, x0:x1] += image.array

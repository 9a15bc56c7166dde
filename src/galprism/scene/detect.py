"""Detect the sources of an image with photutils, on a band-coadded signal-to-noise map.

Steps (:func:`detect`):

1. **Background** of each band: the sigma-clipped median of its valid pixels, or a
   :class:`photutils.background.Background2D` mesh of ``background_box`` pixels for
   images whose sky varies across the field.
2. **Detection image**: the inverse-variance weighted sum of the background-subtracted
   bands divided by its noise, ``sum_c d_c / v_c / sqrt(sum_c 1 / v_c)``, a per-pixel
   signal-to-noise map that uses every band and weights each by its depth; it is
   smoothed with a Gaussian of ``kernel_fwhm`` pixels (about the PSF).
3. **Threshold**: ``nsigma`` times the sigma-clipped standard deviation of the smoothed
   detection image measured on the image itself. Measuring it (rather than trusting
   the variance map alone) accounts for the noise the smoothing removes and for noise
   that is correlated between pixels, as in drizzled images. The default of 5 is a
   deliberate choice: smoothing makes noise coherent over a few pixels, so smoothed
   white noise crosses 3 sigma in a few places per few thousand pixels, each a false
   source, while at 5 sigma it does so about once per few million pixels.
4. ``detect_sources`` (at least ``npixels`` connected pixels) then ``deblend_sources``
   (``nlevels`` multi-thresholds, ``contrast``); photutils' defaults for the last two.
5. Steps 1 to 4 are done twice: the second time the background and the noise are
   measured only away from the first pass's sources (their segments dilated by the
   smoothing kernel), which the first pass's sigma clipping cannot fully exclude in a
   small or crowded image. The first pass stands when fewer than 100 valid pixels per
   band would be left.
6. ``SourceCatalog`` on the inverse-variance weighted mean of the bands gives centroids,
   shape moments and Kron radii; fluxes are summed per band over each segment.

Positions are 0-based pixels: the center of the first pixel is ``(0, 0)``.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from dataclasses import dataclass, field

import astropy.units as u
import numpy as np
from astropy.convolution import convolve
from astropy.stats import sigma_clipped_stats
from astropy.table import Column, Table
from astropy.wcs import WCS

from ..errors import ConfigError, InputError

__all__ = ["Detections", "detect", "DEFAULT_NSIGMA", "DEFAULT_NPIXELS"]

#: detection threshold, in standard deviations of the smoothed detection image
DEFAULT_NSIGMA = 5.0
#: smallest number of connected pixels above the threshold that make a source
DEFAULT_NPIXELS = 5
#: Kron aperture scale (photutils' default): ``kron_semimajor`` is this times
#: ``kron_radius`` times ``semimajor_sigma``
KRON_SCALE = 2.5
#: fewest source-free valid pixels per band for the second background and noise estimate
_MIN_FREE_PIXELS = 100


@dataclass(frozen=True)
class Detections:
    """The sources found in an image.

    Attributes
    ----------
    table
        One row per source: ``id`` (the segment label), ``x``, ``y`` (0-based pixels),
        ``ra``, ``dec`` (degrees, when a celestial WCS was given), ``bbox_xmin``,
        ``bbox_xmax``, ``bbox_ymin``, ``bbox_ymax`` (the segment's inclusive pixel
        bounds), ``area`` (pixels), ``flux`` and ``flux_err`` (background-subtracted sum
        over the segment's valid pixels, in image units; one column per band for a
        cube), ``peak_snr`` (maximum of the smoothed detection image in the segment),
        ``semimajor_sigma``, ``semiminor_sigma`` (pixels), ``orientation`` (degrees,
        counter-clockwise from +x), ``kron_radius`` (in units of the moments' ellipse)
        and ``kron_semimajor`` (pixels).
    segmentation
        ``(H, W)`` label map: pixel value = the ``id`` of the source it belongs to, 0 for
        none.
    detection_image
        ``(H, W)`` smoothed signal-to-noise map that was thresholded.
    threshold
        The threshold applied to ``detection_image``.
    background
        ``(C, H, W)`` background subtracted from each band.
    settings
        The parameters used, for provenance.
    """

    table: Table
    segmentation: np.ndarray
    detection_image: np.ndarray
    threshold: float
    background: np.ndarray
    settings: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)


def _as_cube(a: np.ndarray, shape: tuple[int, int, int], what: str, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.shape == (1, *shape[1:]) and shape[0] > 1:
        a = np.broadcast_to(a, shape)
    if a.shape != shape:
        raise InputError(f"{name}: {what} has shape {a.shape}, expected {shape} or {shape[1:]}")
    return a


def _deblend_kwargs(nlevels: int, contrast: float) -> dict[str, object]:
    """photutils 3 renamed ``nlevels`` to ``n_levels``; pass whichever this one takes."""
    from photutils.segmentation import deblend_sources

    params = inspect.signature(deblend_sources).parameters
    key = "n_levels" if "n_levels" in params else "nlevels"
    return {key: nlevels, "contrast": contrast, "progress_bar": False}


def _plain(values: object) -> np.ndarray:
    """A photutils property as a float64 array (Quantities lose their unit)."""
    return np.asarray(getattr(values, "value", values), dtype=np.float64)


def _background(image: np.ndarray, valid: np.ndarray, box: int | None, name: str) -> np.ndarray:
    bkg = np.empty_like(image)
    for c in range(image.shape[0]):
        if box is None:
            _, median, _ = sigma_clipped_stats(image[c][valid[c]], sigma=3.0)
            bkg[c] = median
            continue
        from photutils.background import Background2D

        try:
            bkg[c] = Background2D(image[c], box, mask=~valid[c]).background
        except ValueError as exc:
            raise InputError(
                f"{name}: band {c}: background mesh of {box} px failed ({exc})"
            ) from exc
    return bkg


def detect(
    image: np.ndarray,
    variance: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    *,
    wcs: WCS | None = None,
    nsigma: float = DEFAULT_NSIGMA,
    npixels: int = DEFAULT_NPIXELS,
    kernel_fwhm: float = 3.0,
    nlevels: int = 32,
    contrast: float = 0.001,
    deblend: bool = True,
    background_box: int | None = None,
    name: str = "image",
) -> Detections:
    """Detect, deblend and measure the sources of an image.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(C, H, W)`` pixel values (linear units).
    variance
        Per-pixel noise variance of the same shape (or ``(H, W)`` for all bands). When
        None, each band's variance is the square of the sigma-clipped standard deviation
        of its valid pixels.
    valid
        Boolean mask, true where a pixel is observed (default: all).
    wcs
        Celestial WCS of the image; adds ``ra``/``dec`` columns.
    nsigma
        Threshold in standard deviations of the smoothed detection image.
    npixels
        Smallest number of connected pixels above the threshold making a source; also the
        smallest piece ``deblend_sources`` splits off.
    kernel_fwhm
        FWHM in pixels of the Gaussian smoothing before thresholding (about the PSF's).
    nlevels, contrast
        ``deblend_sources`` settings (number of multi-thresholds, and the fraction of a
        segment's flux a piece needs to be split off).
    deblend
        Split touching sources with ``deblend_sources`` (needs scikit-image).
    background_box
        Mesh size in pixels of a varying background; None for a constant per band.
    name
        How the image is named in error messages.

    Returns
    -------
    Detections
        Possibly empty (no source above the threshold).

    Raises
    ------
    InputError
        On mismatched shapes, non-finite or non-positive values at valid pixels, or no
        valid pixel.
    ConfigError
        If deblending is asked for and scikit-image is not installed.
    """
    from photutils.segmentation import (
        SourceCatalog,
        deblend_sources,
        detect_sources,
        make_2dgaussian_kernel,
    )

    img = np.asarray(image, dtype=np.float64)
    two_d = img.ndim == 2
    if img.ndim not in (2, 3):
        raise InputError(f"{name}: image must be (H, W) or (C, H, W), got shape {img.shape}")
    img = img[None] if two_d else img
    shape = img.shape
    ok = np.ones(shape, bool) if valid is None else _as_cube(valid, shape, "mask", name)
    ok = ok.astype(bool)
    if not ok.any():
        raise InputError(f"{name}: no valid pixel")
    if not np.isfinite(img[ok]).all():
        raise InputError(f"{name}: non-finite pixel values at valid pixels")
    if variance is None:
        var = np.empty(shape)
        for c in range(shape[0]):
            _, _, std = sigma_clipped_stats(img[c][ok[c]], sigma=3.0)
            var[c] = std**2
    else:
        var = _as_cube(np.asarray(variance, dtype=np.float64), shape, "variance", name)
    if not (np.isfinite(var[ok]).all() and (var[ok] > 0).all()):
        raise InputError(f"{name}: variance is not finite and positive at every valid pixel")
    if deblend and importlib.util.find_spec("skimage") is None:
        raise ConfigError(f"{name}: deblending sources needs scikit-image (pip install it)")

    size = 2 * int(np.ceil(1.5 * kernel_fwhm)) + 1
    kernel = make_2dgaussian_kernel(kernel_fwhm, size=size)
    free = ok
    for first_pass in (True, False):
        bkg = _background(img, free, background_box, name)
        data = np.where(ok, img - bkg, 0.0)
        smooth, mean, smooth_mean, mean_err, seen = _detection_images(data, var, ok, kernel)
        _, _, noise = sigma_clipped_stats(smooth[seen & free.any(axis=0)], sigma=3.0)
        threshold = float(nsigma * noise)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty result is reported by an empty table
            segm = detect_sources(smooth, threshold, npixels, mask=~seen)
        if segm is None or not first_pass:
            break
        # Sources raise the sigma-clipped background and noise, most in a small, crowded
        # image: measure both again away from the sources found (dilated by the kernel),
        # when enough pixels are left in every band.
        around = ok & ~segm.make_source_mask(size=size)[None]
        if (around.sum(axis=(1, 2)) < _MIN_FREE_PIXELS).any():
            break
        free = around
    settings: dict[str, object] = {
        "nsigma": nsigma,
        "npixels": npixels,
        "kernel_fwhm": kernel_fwhm,
        "nlevels": nlevels,
        "contrast": contrast,
        "deblend": deblend,
        "background_box": background_box,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty result is reported by an empty table
        segm = detect_sources(smooth, threshold, npixels, mask=~seen)
    if segm is None:
        return Detections(
            _empty_table(shape[0], two_d, wcs),
            np.zeros(shape[1:], np.int64),
            smooth,
            threshold,
            bkg,
            settings,
        )
    if deblend:
        try:
            segm = deblend_sources(smooth, segm, npixels, **_deblend_kwargs(nlevels, contrast))
        except ValueError:  # photutils refuses to deblend some tiny segments: keep them whole
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined moments of tiny segments give NaN
        cat = SourceCatalog(
            mean,
            segm,
            convolved_data=smooth_mean,
            error=mean_err,
            mask=~seen,
            kron_params=(KRON_SCALE, 1.4, 0.0),
        )
        labels = np.asarray(cat.labels, dtype=np.int64)
        centroid = _plain(cat.centroid).reshape(-1, 2)
        eig = _plain(cat.covariance_eigvals).reshape(-1, 2)
        orientation = _plain(cat.orientation).reshape(-1)
        kron = _plain(cat.kron_radius).reshape(-1)
        bbox = [
            np.asarray(_plain(getattr(cat, k)), np.int64).reshape(-1)
            for k in ("bbox_xmin", "bbox_xmax", "bbox_ymin", "bbox_ymax")
        ]
    seg = np.asarray(segm.data, dtype=np.int64)
    table = _table(
        labels, centroid, eig, orientation, kron, bbox, seg, data, var, ok, smooth, two_d, wcs
    )
    return Detections(table, seg, smooth, threshold, bkg, settings)


def _detection_images(
    data: np.ndarray, var: np.ndarray, ok: np.ndarray, kernel: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed S/N map, weighted band mean (raw and smoothed), its error, observed pixels."""
    weight = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0)
    wsum = weight.sum(axis=0)
    seen = wsum > 0
    safe = np.where(seen, wsum, 1.0)
    snr = np.where(seen, (weight * data).sum(axis=0) / np.sqrt(safe), 0.0)
    mean = np.where(seen, (weight * data).sum(axis=0) / safe, 0.0)
    mean_err = np.where(seen, 1.0 / np.sqrt(safe), 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns when it interpolates over masks
        smooth = convolve(snr, kernel, mask=~seen, normalize_kernel=True)
        smooth_mean = convolve(mean, kernel, mask=~seen, normalize_kernel=True)
    return np.where(seen, smooth, 0.0), mean, smooth_mean, mean_err, seen


def _segment_sums(seg: np.ndarray, labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-band sums of ``values`` ``(C, H, W)`` over each labelled segment: ``(N, C)``."""
    nmax = int(seg.max()) + 1
    sums = np.stack(
        [np.bincount(seg.ravel(), weights=v.ravel(), minlength=nmax) for v in values], axis=1
    )
    return sums[labels]


def _table(
    labels: np.ndarray,
    centroid: np.ndarray,
    eig: np.ndarray,
    orientation: np.ndarray,
    kron: np.ndarray,
    bbox: list[np.ndarray],
    seg: np.ndarray,
    data: np.ndarray,
    var: np.ndarray,
    ok: np.ndarray,
    smooth: np.ndarray,
    two_d: bool,
    wcs: WCS | None,
) -> Table:
    flux = _segment_sums(seg, labels, np.where(ok, data, 0.0))
    flux_err = np.sqrt(_segment_sums(seg, labels, np.where(ok, var, 0.0)))
    area = np.bincount(seg.ravel(), minlength=int(seg.max()) + 1)[labels]
    peak = np.full(labels.shape, -np.inf)
    np.maximum.at(peak, np.searchsorted(labels, seg[seg > 0]), smooth[seg > 0])
    eig = np.clip(eig, 0.0, None)
    major, minor = np.sqrt(eig.max(axis=1)), np.sqrt(eig.min(axis=1))
    t = Table()
    t["id"] = Column(labels, description="segment label")
    t["x"] = Column(centroid[:, 0], unit=u.pix, description="0-based pixel column of the centroid")
    t["y"] = Column(centroid[:, 1], unit=u.pix, description="0-based pixel row of the centroid")
    if wcs is not None and wcs.has_celestial:
        ra, dec = wcs.celestial.pixel_to_world_values(centroid[:, 0], centroid[:, 1])
        t["ra"] = Column(np.asarray(ra, np.float64), unit=u.deg, description="right ascension")
        t["dec"] = Column(np.asarray(dec, np.float64), unit=u.deg, description="declination")
    for key, values in zip(("bbox_xmin", "bbox_xmax", "bbox_ymin", "bbox_ymax"), bbox, strict=True):
        t[key] = Column(values, unit=u.pix, description="inclusive segment bound")
    t["area"] = Column(area.astype(np.int64), unit=u.pix**2, description="segment pixels")
    squeeze = (lambda a: a[:, 0]) if two_d else (lambda a: a)
    t["flux"] = Column(squeeze(flux), description="background-subtracted segment sum per band")
    t["flux_err"] = Column(squeeze(flux_err), description="noise of flux from the variance")
    t["peak_snr"] = Column(peak, description="maximum of the smoothed detection image")
    t["semimajor_sigma"] = Column(major, unit=u.pix, description="moments' major sigma")
    t["semiminor_sigma"] = Column(minor, unit=u.pix, description="moments' minor sigma")
    t["orientation"] = Column(orientation, unit=u.deg, description="major axis from +x, CCW")
    t["kron_radius"] = Column(kron, description="first-moment Kron radius (moment units)")
    t["kron_semimajor"] = Column(
        KRON_SCALE * kron * major, unit=u.pix, description="Kron aperture semi-major axis"
    )
    return t


def _empty_table(n_bands: int, two_d: bool, wcs: WCS | None) -> Table:
    empty = np.zeros(0)
    eig = np.zeros((0, 2))
    bbox = [np.zeros(0, np.int64)] * 4
    seg = np.zeros((1, 1), np.int64)
    data = np.zeros((n_bands, 1, 1))
    return _table(
        np.zeros(0, np.int64),
        eig,
        eig,
        empty,
        empty,
        bbox,
        seg,
        data,
        data + 1,
        data > 0,
        np.zeros((1, 1)),
        two_d,
        wcs,
    )

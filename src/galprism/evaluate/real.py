"""Real data with an independent truth: HSC i band against HST of the same galaxy.

``multiview/`` holds an HSC cube (0.168"/px) and an HST ACS F814W image (0.03"/px) of the
same field, with PSFs. The HST image, about 5.6 times sharper, serves as the truth of the
central galaxy of the HSC i-band cutout:

1. The central galaxy is the HST segment (photutils ``detect_sources`` +
   ``deblend_sources`` on the HST image, whose resolution makes this reliable) nearest the
   HSC cube's center; the HSC cutout is cropped to the prior's size around it.
2. HST images are brought to the HSC grid with GalSim: an ``InterpolatedImage`` whose WCS
   is the exact affine map from HST to HSC pixels (fitted through the two astropy WCS;
   residual recorded, < 1e-5 px here), so fluxes are conserved. The HST PSF (re-centered
   on its centroid) is deconvolved and replaced by the HSC i-band PSF (the *convolved*
   truth) or by the simulator's truth kernel, a 0.2" Gaussian, integrated over HSC
   pixels (the *intrinsic* truth, defined exactly as ``TRUE_GALAXY`` in simulations).
3. One flux scale (and a constant sky offset) per cutout is fitted by least squares
   between the whole HST scene, convolved, and the HSC cutout, over the pixels the HST
   image covers; the same scale multiplies the central galaxy's truth.

The HSC cube has no zero point (its authors renormalised it) and no variance map. The
noise is the sigma-clipped standard deviation of source-free pixels (as for
``sample_fits/multiview_hsc_i.fits``), and the flux scale is tied to the priors' by
assuming the cube has the noise level of the HSC UltraDeep data the simulations use:
``ZP = 27 + 2.5 log10(sigma_cube / sigma_sim)``. This assumption is stated in the report.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import galsim
import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS

from ..errors import InputError
from ..io.flux import noise_matched_zeropoint
from ..observation import Note, NoteKind, Observation
from .measures import blendedness
from .testset import EvalCutout

__all__ = [
    "MultiviewData",
    "RealCase",
    "load_multiview",
    "pixel_affine",
    "Resampler",
    "recentered_psf",
    "hst_segments",
    "build_real_case",
    "TRUTH_FWHM",
]

#: FWHM (arcsec) of the simulator's truth kernel (docs/simulate.md): intrinsic = HST (x) this
TRUTH_FWHM = 0.2
#: HSC pixels whose convolved light is at least this fraction inside the HST footprint
COVERAGE_MIN = 0.9
HSC_BAND = 2  # i band in the g, r, i, z, y cube


@dataclass(frozen=True)
class MultiviewData:
    """The raw multiview files (arrays in their own units, float64)."""

    hsc: np.ndarray  # (H, W) i band
    hsc_psf: np.ndarray  # (k, k), unit sum
    hsc_wcs: WCS
    hst: np.ndarray  # (H', W')
    hst_psf: np.ndarray  # (k', k'), unit sum
    hst_wcs: WCS
    folder: Path


def _read(path: Path) -> fits.PrimaryHDU:
    if not path.is_file():
        raise InputError(f"{path}: multiview file not found")
    with fits.open(path) as hdul:
        hdu = hdul[0]
        if hdu.data is None:
            raise InputError(f"{path}: primary HDU has no data")
        return fits.PrimaryHDU(np.asarray(hdu.data, dtype=np.float64), hdu.header.copy())


def load_multiview(data_dir: str | os.PathLike[str] | None = None) -> MultiviewData:
    """Read ``Cut_HSC.fits`` (i band), ``PSF_HSC.fits`` (i band), ``Cut_HST.fits``,
    ``PSF_HST.fits``."""
    from ..simulate.data import multiview_dir  # local: shares the simulator's data lookup

    folder = multiview_dir(data_dir)
    hsc = _read(folder / "Cut_HSC.fits")
    hst = _read(folder / "Cut_HST.fits")
    hsc_psf = _read(folder / "PSF_HSC.fits").data
    hst_psf = _read(folder / "PSF_HST.fits").data
    if hsc.data.ndim != 3 or hsc.data.shape[0] <= HSC_BAND or hsc_psf.ndim != 3:
        raise InputError(
            f"{folder}/Cut_HSC.fits: expected a (bands, H, W) cube with an i band and a matching "
            "PSF cube"
        )
    for name, arr in (
        ("Cut_HSC", hsc.data),
        ("Cut_HST", hst.data),
        ("PSF_HSC", hsc_psf),
        ("PSF_HST", hst_psf),
    ):
        if not np.isfinite(arr).all():
            raise InputError(f"{folder}/{name}.fits: contains non-finite values")
    psf_i = hsc_psf[HSC_BAND] / hsc_psf[HSC_BAND].sum()
    return MultiviewData(
        hsc=hsc.data[HSC_BAND],
        hsc_psf=psf_i,
        hsc_wcs=WCS(hsc.header).celestial,
        hst=hst.data,
        hst_psf=hst_psf / hst_psf.sum(),
        hst_wcs=WCS(hst.header).celestial,
        folder=folder,
    )


def pixel_affine(
    src: WCS, dst: WCS, shape: tuple[int, int], n: int = 7
) -> tuple[np.ndarray, np.ndarray, float]:
    """Affine map ``p_dst = A p_src + t`` (0-based pixels) fitted through the two WCS.

    Returns ``A`` (2x2), ``t`` (2,) and the largest residual in destination pixels over an
    ``n x n`` grid covering the source image (the map is exact for two TAN projections only
    up to projection curvature).
    """
    h, w = shape
    xs, ys = np.meshgrid(np.linspace(0, w - 1, n), np.linspace(0, h - 1, n))
    xs, ys = xs.ravel(), ys.ravel()
    xd, yd = dst.world_to_pixel(src.pixel_to_world(xs, ys))
    design = np.c_[xs, ys, np.ones_like(xs)]
    cx = np.linalg.lstsq(design, xd, rcond=None)[0]
    cy = np.linalg.lstsq(design, yd, rcond=None)[0]
    resid = max(np.abs(design @ cx - xd).max(), np.abs(design @ cy - yd).max())
    a = np.array([[cx[0], cx[1]], [cy[0], cy[1]]])
    return a, np.array([cx[2], cy[2]]), float(resid)


def recentered_psf(psf: np.ndarray, wcs: galsim.BaseWCS) -> galsim.GSObject:
    """A unit-flux ``InterpolatedImage`` of ``psf`` shifted so that its centroid is at the
    origin."""
    ii = galsim.InterpolatedImage(
        galsim.Image(np.ascontiguousarray(psf), wcs=wcs), x_interpolant="lanczos5", flux=1.0
    )
    h, w = psf.shape
    yy, xx = np.indices(psf.shape)
    total = psf.sum()
    dx = (psf * xx).sum() / total - 0.5 * (w - 1)
    dy = (psf * yy).sum() / total - 0.5 * (h - 1)
    du, dv = wcs.jacobian().getMatrix() @ np.array([dx, dy])
    return ii.shift(-du, -dv)


@dataclass
class Resampler:
    """Draws images of the source grid onto a crop of the destination grid (world = destination
    pixels).

    Parameters
    ----------
    a, t
        From :func:`pixel_affine` (source to destination pixels).
    src_shape
        Shape of source images.
    origin
        Destination pixel ``(x, y)`` of the crop's pixel 0.
    size
        Crop ``(ny, nx)``.
    src_psf, dst_psf
        PSF images on the source and destination grids.
    """

    a: np.ndarray
    t: np.ndarray
    src_shape: tuple[int, int]
    origin: tuple[int, int]
    size: tuple[int, int]
    src_psf: np.ndarray
    dst_psf: np.ndarray
    gsparams: galsim.GSParams = field(
        default_factory=lambda: galsim.GSParams(maximum_fft_size=16384)
    )

    def __post_init__(self) -> None:
        self.jac = galsim.JacobianWCS(self.a[0, 0], self.a[0, 1], self.a[1, 0], self.a[1, 1])
        self.src_psf_obj = recentered_psf(self.src_psf, self.jac)
        self.dst_psf_obj = recentered_psf(self.dst_psf, galsim.PixelScale(1.0))
        h, w = self.src_shape
        center = self.a @ np.array([0.5 * (w - 1), 0.5 * (h - 1)]) + self.t
        ny, nx = self.size
        self.offset = galsim.PositionD(
            center[0] - self.origin[0] - 0.5 * (nx - 1), center[1] - self.origin[1] - 0.5 * (ny - 1)
        )

    def _profile(self, image: np.ndarray) -> galsim.GSObject:
        return galsim.InterpolatedImage(
            galsim.Image(np.ascontiguousarray(image, dtype=np.float64), wcs=self.jac),
            x_interpolant="lanczos5",
            normalization="flux",
            gsparams=self.gsparams,
        )

    def convolved(self, image: np.ndarray) -> np.ndarray:
        """``image`` with its PSF replaced by the destination PSF, on the destination crop."""
        prof = galsim.Convolve(
            [self._profile(image), galsim.Deconvolve(self.src_psf_obj), self.dst_psf_obj],
            gsparams=self.gsparams,
        )
        return self._draw(prof, "no_pixel")

    def intrinsic(self, image: np.ndarray, fwhm_dst_pixels: float) -> np.ndarray:
        """``image`` with its PSF replaced by a Gaussian (FWHM in destination pixels),
        pixel-integrated."""
        kernel = galsim.Gaussian(fwhm=fwhm_dst_pixels)
        prof = galsim.Convolve(
            [self._profile(image), galsim.Deconvolve(self.src_psf_obj), kernel],
            gsparams=self.gsparams,
        )
        return self._draw(prof, "auto")

    def _draw(self, prof: galsim.GSObject, method: str) -> np.ndarray:
        ny, nx = self.size
        out = galsim.Image(nx, ny, scale=1.0, dtype=np.float64)
        prof.drawImage(out, offset=self.offset, method=method)
        return out.array.copy()

    def coverage(self) -> np.ndarray:
        """Fraction of each destination pixel's convolved light that the source image covers."""
        ones = np.ones(self.src_shape)
        area = abs(np.linalg.det(self.a))
        return self.convolved(ones) * area


def hst_segments(
    image: np.ndarray, sigma: float, fwhm: float = 5.0, nsigma: float = 2.0, npixels: int = 30
) -> np.ndarray:
    """Deblended segmentation of a background-subtracted HST image (photutils)."""
    from astropy.convolution import convolve
    from photutils.segmentation import deblend_sources, detect_sources, make_2dgaussian_kernel

    kernel = make_2dgaussian_kernel(fwhm, size=2 * int(np.ceil(1.5 * fwhm)) + 1)
    smooth = convolve(image, kernel, normalize_kernel=True)
    _, _, ssd = sigma_clipped_stats(smooth, sigma=3.0)
    segm = detect_sources(smooth, nsigma * ssd, npixels)
    if segm is None:
        raise InputError("Cut_HST.fits: no source detected in the HST image")
    segm = deblend_sources(smooth, segm, npixels, contrast=0.01, progress_bar=False)
    return np.asarray(segm.data, dtype=np.int64)


@dataclass(eq=False)
class RealCase:
    """The real cutout as an :class:`EvalCutout` plus how its truth was made."""

    cutout: EvalCutout
    info: dict[str, Any]
    hst_truth_view: (
        np.ndarray
    )  # intrinsic truth of the whole scene (for the two-view run), HSC units
    hst_truth_noise: float  # per-pixel noise std of the intrinsic scene truth, HSC units
    coverage: np.ndarray


def _noise_sigma(image: np.ndarray) -> tuple[float, float]:
    """Sigma-clipped (median, std) of source-free pixels (photutils source mask)."""
    from ..simulate.noise import source_mask

    mask = source_mask(image)
    _, med, std = sigma_clipped_stats(image, mask=mask, sigma=3.0, maxiters=10)
    return float(med), float(std)


def build_real_case(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    size: int = 48,
    refine_alignment: bool = True,
    prior_noise_sigma: float | None = None,
    prior_zeropoint: float = 27.0,
) -> RealCase:
    """Assemble the HSC i-band cutout and its HST truth (module docstring, steps 1-3)."""
    from ..simulate.noise import hsc_i_sigma

    mv = load_multiview(data_dir)
    # HSC noise and the zero point that gives it the simulations' noise level.
    _, sigma = _noise_sigma(mv.hsc)
    sim_sigma = float(prior_noise_sigma) if prior_noise_sigma is not None else hsc_i_sigma(data_dir)
    zp = noise_matched_zeropoint(sigma, sim_sigma, prior_zeropoint)
    # HST background, noise and central galaxy.
    hst_med, hst_sigma = _noise_sigma(mv.hst)
    hst = mv.hst - hst_med
    labels = hst_segments(hst, hst_sigma)
    a, t, resid = pixel_affine(mv.hst_wcs, mv.hsc_wcs, hst.shape)
    ainv = np.linalg.inv(a)
    hh, hw = mv.hsc.shape
    center_hst = ainv @ (np.array([0.5 * (hw - 1), 0.5 * (hh - 1)]) - t)
    best, best_d, centroid = 0, math.inf, (math.nan, math.nan)
    for lab in np.unique(labels[labels > 0]):
        yy, xx = np.nonzero(labels == lab)
        f = np.clip(hst[yy, xx], 0, None)
        if f.sum() <= 0:
            continue
        cx, cy = (f * xx).sum() / f.sum(), (f * yy).sum() / f.sum()
        d = math.hypot(cx - center_hst[0], cy - center_hst[1])
        if d < best_d:
            best, best_d, centroid = int(lab), d, (cx, cy)
    if best == 0:
        raise InputError("Cut_HST.fits: no HST segment with positive flux near the HSC center")
    gal_hsc = a @ np.array(centroid) + t
    center = (int(round(gal_hsc[0])), int(round(gal_hsc[1])))
    obs_full = Observation(
        mv.hsc,
        np.full(mv.hsc.shape, sigma**2),
        mv.hsc_psf,
        wcs=mv.hsc_wcs,
        pixel_scale=float(np.sqrt(abs(np.linalg.det(mv.hsc_wcs.pixel_scale_matrix))) * 3600.0),
        zeropoint=zp,
        name="multiview/Cut_HSC.fits[i]",
        notes=(
            Note(NoteKind.NOISE, f"noise sigma {sigma:.4g} estimated from source-free pixels"),
            Note(
                NoteKind.ZEROPOINT,
                f"zero point {zp:.3f} assumed "
                f"(noise matched to {sim_sigma:.4g} at ZP {prior_zeropoint:g})",
            ),
        ),
    )
    obs = obs_full.crop(center, (size, size))
    x0, y0 = obs.origin
    shift, fit = align_scene(hst, obs, a, t, mv.hst_psf, mv.hsc_psf, refine=refine_alignment)
    rs, scale, offset, fit_mask = fit["resampler"], fit["scale"], fit["offset"], fit["mask"]
    central_mask = central_footprint(labels, best)
    central = np.where(central_mask, hst, 0.0)
    scene_conv = fit["scene"]
    gal_conv = rs.convolved(central)
    cover = fit["coverage"]
    # Per-component scales show how far one scene-wide scale is from the central galaxy's own.
    others = scene_conv - gal_conv
    design = np.c_[gal_conv[fit_mask], others[fit_mask], np.ones(int(fit_mask.sum()))]
    own_scale = float(np.linalg.lstsq(design, obs.image[0][fit_mask], rcond=None)[0][0])
    fwhm_px = TRUTH_FWHM / obs.pixel_scale
    gal_int = rs.intrinsic(central, fwhm_px)
    scene_int = rs.intrinsic(hst, fwhm_px)
    # Noise the HST image carries into the truth: white noise of the HST sigma pushed
    # through the same path, times the HST noise's measured correlation (5x5 binning).
    rng = np.random.default_rng(0)
    white = rng.standard_normal(hst.shape) * hst_sigma
    corr = _correlation_factor(hst, labels, hst_sigma)
    inside = cover > COVERAGE_MIN
    conv_noise = float(np.std(rs.convolved(white)[inside])) * corr * abs(scale)
    int_noise = float(np.std(rs.intrinsic(white, fwhm_px)[inside])) * corr * abs(scale)
    # The truth only holds the central segment's pixels, so only their noise enters it:
    # the RMSE a perfect method would still show against this truth.
    seg_noise = rs.convolved(np.where(central_mask, white, 0.0)) * corr * abs(scale)
    floor = float(np.sqrt(np.mean(seg_noise**2)) / sigma)
    truth_conv = scale * gal_conv
    neighbours = scale * (scene_conv - gal_conv)
    cutout = EvalCutout(
        name="multiview_hsc_i",
        observation=obs,
        galaxy=scale * gal_int,
        galaxy_conv=truth_conv,
        neighbours_conv=neighbours,
        sigma=sigma,
        blendedness=blendedness(truth_conv, neighbours),
    )
    model = scale * scene_conv + offset
    chi = (obs.image[0] - model)[fit_mask] / sigma
    info = {
        "hsc_noise_sigma": sigma,
        "zeropoint_assumed": zp,
        "sim_noise_sigma": sim_sigma,
        "hst_noise_sigma": hst_sigma,
        "hst_noise_correlation_factor": corr,
        "wcs_affine_residual_px": resid,
        "hst_to_hsc_pixel_ratio": float(1.0 / math.sqrt(abs(np.linalg.det(a)))),
        "central_segment": best,
        "central_hst_pixel": [float(centroid[0]), float(centroid[1])],
        "central_hsc_pixel": [float(gal_hsc[0]), float(gal_hsc[1])],
        "crop_origin": [int(x0), int(y0)],
        "flux_scale_hst_to_hsc": float(scale),
        "central_own_scale_ratio": own_scale / float(scale),
        "astrometric_shift_px": [float(shift[0]), float(shift[1])],
        "truth_rmse_floor_sigma": floor,
        "sky_offset": float(offset),
        "scene_fit_pixels": int(fit_mask.sum()),
        "scene_fit_rms_sigma": float(np.sqrt(np.mean(chi**2))),
        "truth_conv_noise_sigma": conv_noise / sigma,
        "truth_intrinsic_noise_sigma": int_noise / sigma,
        "truth_flux": float(truth_conv.sum()),
        "blendedness": cutout.blendedness,
    }
    return RealCase(cutout, info, scale * scene_int, int_noise, cover)


def central_footprint(labels: np.ndarray, label: int, grow: int = 5) -> np.ndarray:
    """The central segment grown by ``grow`` HST pixels into unassigned pixels.

    A segment stops at the detection isophote; growing it keeps the faint wings in the
    truth and puts its edge at the noise level, where the PSF replacement's ringing at a
    sharp edge is negligible. Pixels of other segments are never taken.
    """
    from scipy.ndimage import binary_dilation

    grown = binary_dilation(labels == label, iterations=grow)
    return grown & ((labels == 0) | (labels == label))


def align_scene(
    hst: np.ndarray,
    obs: Observation,
    a: np.ndarray,
    t: np.ndarray,
    hst_psf: np.ndarray,
    hsc_psf: np.ndarray,
    *,
    refine: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit ``HSC = scale * HST_scene_convolved + offset``, optionally refining a sub-pixel shift.

    The two surveys' WCS agree to a fraction of an HSC pixel only; a residual shift shows
    up as a dipole in the scene residual. With ``refine`` the shift (HSC pixels, at most
    1.5) minimising the residual is found by Nelder-Mead and recorded.
    """
    from scipy.optimize import minimize

    x0, y0 = obs.origin
    size = obs.shape[1:]
    image = obs.image[0]

    def fit(shift: np.ndarray) -> dict[str, Any]:
        rs = Resampler(a, t + shift, hst.shape, (x0, y0), size, hst_psf, hsc_psf)
        scene = rs.convolved(hst)
        cover = rs.coverage()
        mask = (cover > COVERAGE_MIN) & obs.valid[0]
        design = np.c_[scene[mask], np.ones(int(mask.sum()))]
        (scale, offset), *_ = np.linalg.lstsq(design, image[mask], rcond=None)
        chi2 = float(np.mean((image[mask] - design @ np.array([scale, offset])) ** 2))
        return {
            "resampler": rs,
            "scene": scene,
            "coverage": cover,
            "mask": mask,
            "scale": float(scale),
            "offset": float(offset),
            "chi2": chi2,
        }

    shift = np.zeros(2)
    if refine:
        res = minimize(
            lambda s: fit(np.clip(s, -1.5, 1.5))["chi2"],
            shift,
            method="Nelder-Mead",
            options={"initial_simplex": [[0, 0], [0.3, 0], [0, 0.3]], "xatol": 0.02, "fatol": 1e-9},
        )
        shift = np.clip(res.x, -1.5, 1.5)
    return shift, fit(shift)


def _correlation_factor(image: np.ndarray, labels: np.ndarray, sigma: float, b: int = 5) -> float:
    """std of ``b x b`` block sums of source-free pixels over ``b * sigma`` (1 for white noise)."""
    h, w = (s // b * b for s in image.shape)
    blocks = image[:h, :w].reshape(h // b, b, w // b, b)
    free = (labels[:h, :w].reshape(h // b, b, w // b, b) == 0).all(axis=(1, 3))
    sums = blocks.sum(axis=(1, 3))[free]
    if sums.size < 20:
        return 1.0
    _, _, std = sigma_clipped_stats(sums, sigma=3.0)
    return float(std / (b * sigma))

"""What goes into one cutout: neighbours, central galaxy, background, noise.

The two views of the method (``docs/simulate.md`` has the numbers):

* ``sky``: neighbours only (the "random" source): galaxies at random positions over the
  cutout and a margin around it, so that some are only partly inside, with magnitudes
  from a power-law number count ``dN/dm = n25 * 10**(slope * (m - 25))`` per arcmin^2
  per mag, plus a smooth sky-subtraction residual (constant + gradient).
* ``galaxies``: the same surroundings plus one central galaxy within ``center_jitter``
  pixels of the cutout center.

Optionally (both off by default, so that existing batches stay bit-identical), two kinds
of neighbour the COSMOS stamps cannot supply:

* ``star_density > 0``: stars, point sources with magnitudes uniform in
  ``star_mag_range`` at that density per arcmin^2 per mag. A star's intrinsic image is
  a band-limited point: separable Lanczos-5 weights at its sub-pixel position, which
  the pixelised PSF turns into that PSF shifted by the sub-pixel offset (to 0.35% of
  the peak for the HSC i PSF's width). Real cutouts contain stars; a sky prior that never saw
  one explains a star by a smooth blob and leaves a 100-sigma residual on a bright one.
* ``bright_sersic``: neighbours brighter than any COSMOS galaxy may be rendered under
  the stamp-noise cap (the bright end the counts were truncated at) are drawn as GalSim
  Sersic profiles (``sersic_n_range``, log-uniform ``sersic_hlr_range``, shear up to
  ``sersic_shear_max``, the truth kernel applied as to the COSMOS galaxies). Bright
  compact neighbours then exist in the sky view at the counts' density.

Every appearance of a galaxy is randomly flipped, rotated, sheared and dilated and gets
a random flux, all drawn from the cutout's own random generator.

Brightness is capped per galaxy so that its HST stamp noise stays below
``max_hst_noise_ratio`` times the added noise (:mod:`galprism.simulate.hstnoise`): a
galaxy may be rendered at magnitude ``m`` only if ``m >= m_min``, where ``m_min`` is
the magnitude at which that ratio is reached (and never more than ``max_brighten`` mag
brighter than its catalogue magnitude). Galaxies whose ``m_min`` is fainter than
``central_mag_max`` are never central. A neighbour magnitude drawn from the counts is
given to a galaxy drawn uniformly among those allowed at that magnitude; the counts are
truncated at the bright end where no galaxy is allowed.

With ``central_noise = "raise"`` the central galaxy is not capped: any galaxy of the split
may be central, at a magnitude uniform between ``max_brighten`` brighter than catalogued
and ``central_mag_max``, and that cutout's added noise is raised instead, to the level
at which the central's stamp noise is ``max_hst_noise_ratio`` times it
(:func:`cutout_noise_sigma`). The truth stays clean relative to the noise, as with the
cap, and the training set gets bright centrals of every shape, seen through more noise
(every cutout records its own variance). Neighbours and the sky residual keep the base
noise level, so the sky source has the same distribution in both views.

Truth and observation are built on a canvas padded by half the PSF on each side: the
intrinsic images are drawn there (:mod:`galprism.simulate.render`), convolved with the
pixelised PSF (``scipy.signal.fftconvolve``), and cropped, so the observation is exactly
``PSF * truth`` (plus light from just outside the cutout, as in real data) + noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import fftconvolve

from ..errors import ConfigError
from .render import GalaxyTemplate, Placement, draw_point, draw_sersic, draw_source

__all__ = [
    "VIEWS",
    "SceneConfig",
    "PoolGalaxy",
    "SourceSpec",
    "Scene",
    "CENTRAL_NOISE",
    "build_pool",
    "central_m_min",
    "cutout_noise_sigma",
    "sample_scene",
    "render_scene",
]

VIEWS = ("sky", "galaxies")
#: how the central galaxy's stamp noise is kept below the added noise: by capping its
#: brightness (``fixed`` noise) or by raising that cutout's noise (``raise``)
CENTRAL_NOISE = ("fixed", "raise")


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of the scene model (defaults in ``docs/simulate.md``).

    Attributes
    ----------
    count_n25
        Neighbour density at m = 25, per arcmin^2 per magnitude.
    count_slope
        ``d log10 N / dm`` of the counts.
    mag_bright, mag_faint
        Magnitude range of neighbours.
    margin
        Arcsec around the cutout where neighbour centers may also fall.
    central_mag_max
        Faintest magnitude of a central galaxy.
    center_jitter
        Largest offset of the central galaxy from the cutout center, pixels.
    max_brighten
        Largest brightening over the catalogue magnitude, mag.
    max_hst_noise_ratio
        Largest allowed (HST stamp noise in the observation) / (added noise); None
        disables the cap (the HST-like instrument, where the stamps' noise is the noise).
    shear_max
        Largest reduced shear |g|.
    dilation_range
        Range of the size scale factor.
    background_sigma
        Standard deviation of the constant sky residual, in units of the noise sigma.
    background_gradient
        Standard deviation of the residual's change across the cutout per axis, same units.
    star_density
        Stars per arcmin^2 per magnitude (0: no stars).
    star_mag_range
        Magnitude range of stars.
    bright_sersic
        Render neighbours brighter than every COSMOS galaxy's cap as Sersic profiles
        (the counts then reach ``mag_bright``).
    sersic_n_range, sersic_hlr_range, sersic_shear_max
        Sersic index range (uniform), half-light radius range in arcsec (log-uniform),
        largest reduced shear of those neighbours.
    center_exclusion
        Radius (pixels) around the cutout center where no neighbour is centered (0: none).
        With it the sky source is "everything not centered on the cutout", which is what
        a survey gets by cutting its sky view at random positions at least that far from
        any detection, and what keeps a central galaxy from being explained as sky.
    central_noise
        ``"fixed"``: the central galaxy is capped like the neighbours and every cutout has
        the base noise; ``"raise"``: the central is not capped and the cutout's noise is
        raised to keep its stamp noise ratio at most ``max_hst_noise_ratio``.
    """

    count_n25: float = 35.0
    count_slope: float = 0.3
    mag_bright: float = 20.0
    mag_faint: float = 27.5
    margin: float = 2.5
    central_mag_max: float = 26.0
    center_jitter: float = 1.0
    max_brighten: float = 0.5
    max_hst_noise_ratio: float | None = 0.2
    shear_max: float = 0.1
    dilation_range: tuple[float, float] = (0.9, 1.1)
    background_sigma: float = 0.3
    background_gradient: float = 0.1
    central_noise: str = "fixed"
    center_exclusion: float = 0.0
    star_density: float = 0.0
    star_mag_range: tuple[float, float] = (18.0, 26.0)
    bright_sersic: bool = False
    sersic_n_range: tuple[float, float] = (0.5, 4.0)
    sersic_hlr_range: tuple[float, float] = (0.1, 1.0)
    sersic_shear_max: float = 0.5

    def validate(self) -> None:
        """Raise :class:`ConfigError` on values that make no sense."""
        if not (self.count_n25 >= 0 and self.count_slope > 0):
            raise ConfigError(
                f"scene: counts need n25 >= 0 and slope > 0, got {self.count_n25}, "
                f"{self.count_slope}"
            )
        if not self.mag_bright < self.mag_faint:
            raise ConfigError(
                f"scene: mag_bright {self.mag_bright} must be brighter than mag_faint "
                f"{self.mag_faint}"
            )
        lo, hi = self.dilation_range
        if not 0 < lo <= hi:
            raise ConfigError(
                f"scene: dilation range {self.dilation_range} must satisfy 0 < low <= high"
            )
        if not 0 <= self.shear_max < 0.9:
            raise ConfigError(f"scene: shear_max {self.shear_max} must be in [0, 0.9)")
        if self.max_hst_noise_ratio is not None and not self.max_hst_noise_ratio > 0:
            raise ConfigError(
                f"scene: max_hst_noise_ratio {self.max_hst_noise_ratio} must be positive"
            )
        if not self.star_density >= 0 or not self.star_mag_range[0] < self.star_mag_range[1]:
            raise ConfigError(
                f"scene: stars need density >= 0 and a magnitude range low < high, got "
                f"{self.star_density}, {self.star_mag_range}"
            )
        n_lo, n_hi = self.sersic_n_range
        r_lo, r_hi = self.sersic_hlr_range
        if not (
            0.3 <= n_lo <= n_hi <= 6.2 and 0 < r_lo <= r_hi and 0 <= self.sersic_shear_max < 0.9
        ):
            raise ConfigError(
                f"scene: Sersic neighbours need 0.3 <= n_low <= n_high <= 6.2 (GalSim's range), "
                f"0 < hlr_low <= hlr_high and shear in [0, 0.9), got {self.sersic_n_range}, "
                f"{self.sersic_hlr_range}, {self.sersic_shear_max}"
            )
        if self.central_noise not in CENTRAL_NOISE:
            raise ConfigError(
                f"scene: central_noise {self.central_noise!r}: must be one of "
                f"{', '.join(CENTRAL_NOISE)}"
            )
        if (
            self.margin < 0
            or self.center_jitter < 0
            or self.background_sigma < 0
            or self.background_gradient < 0
            or not self.center_exclusion >= 0
        ):
            raise ConfigError(
                "scene: margin, center_jitter, center_exclusion and background terms must be >= 0"
            )


@dataclass(frozen=True)
class PoolGalaxy:
    """A galaxy available to a batch, with its brightness cap.

    Attributes
    ----------
    template
        The prepared galaxy.
    hst_std
        Its stamp noise in the observation at catalogue flux and unit dilation (counts),
        NaN when not measured.
    m_min
        Brightest magnitude it may be rendered at.
    """

    template: GalaxyTemplate
    hst_std: float
    m_min: float

    @property
    def ident(self) -> int:
        """COSMOS IDENT."""
        return self.template.record.ident


@dataclass(frozen=True)
class SourceSpec:
    """One galaxy placed in a cutout (a row of the truth ``SOURCES`` table).

    Attributes
    ----------
    role
        ``"central"``, ``"neighbour"`` (a COSMOS galaxy), ``"star"`` or ``"sersic"``.
    ident
        COSMOS IDENT (-1 for stars and Sersic neighbours).
    placement
        Transformation, flux and position in *cutout* pixel coordinates (0-based).
    mag
        Rendered AB magnitude.
    hst_noise_ratio
        Its stamp noise in the observation over the added noise (NaN if not measured).
    sersic_n, hlr
        Sersic index and half-light radius (arcsec) of a ``"sersic"`` neighbour, else NaN.
    """

    role: str
    ident: int
    placement: Placement
    mag: float
    hst_noise_ratio: float
    sersic_n: float = math.nan
    hlr: float = math.nan


@dataclass
class Scene:
    """A rendered cutout before defects: arrays are ``(H, W)`` float64.

    Attributes
    ----------
    sources
        What was placed.
    truth
        ``galaxy``/``sky`` intrinsic images and ``galaxy_conv``/``sky_conv`` PSF-convolved
        ones (``galaxy*`` only in the galaxies view), and ``noise``.
    image
        ``sum of *_conv + noise``.
    background
        (constant, x gradient, y gradient) of the sky residual, counts.
    """

    sources: list[SourceSpec]
    truth: dict[str, np.ndarray]
    image: np.ndarray
    background: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))


def build_pool(
    templates: list[GalaxyTemplate],
    hst_std: dict[int, float],
    noise_sigma: float,
    cfg: SceneConfig,
) -> list[PoolGalaxy]:
    """Attach to each galaxy the brightest magnitude it may be rendered at.

    The stamp noise scales with the rendered flux and as 1/dilation (the noise is spread
    over a larger area), so the cap uses the smallest dilation.

    Parameters
    ----------
    templates
        Galaxies of the split.
    hst_std
        IDENT -> stamp noise in the observation at catalogue flux (counts); missing or
        NaN entries are not capped by noise.
    noise_sigma
        Added noise, counts.
    cfg
        Scene parameters.

    Returns
    -------
    list of PoolGalaxy
    """
    pool = []
    d_min = cfg.dilation_range[0]
    for t in templates:
        std = float(hst_std.get(t.record.ident, math.nan))
        m_min = t.record.mag - cfg.max_brighten
        if cfg.max_hst_noise_ratio is not None and math.isfinite(std) and std > 0:
            # ratio(m) = std/sigma * 10**(-0.4 (m - MAG)) / d_min <= max ratio
            m_noise = t.record.mag + 2.5 * math.log10(
                std / (noise_sigma * d_min * cfg.max_hst_noise_ratio)
            )
            m_min = max(m_min, m_noise)
        pool.append(PoolGalaxy(template=t, hst_std=std, m_min=m_min))
    return pool


def central_m_min(p: PoolGalaxy, cfg: SceneConfig) -> float:
    """Brightest magnitude ``p`` may have as the central galaxy.

    Its noise cap ``m_min``, or with ``central_noise = "raise"`` (the cutout's noise is
    raised instead) ``max_brighten`` brighter than catalogued.
    """
    if cfg.central_noise == "raise":
        return p.template.record.mag - cfg.max_brighten
    return p.m_min


def _sample_mags(
    rng: np.random.Generator, n: int, lo: float, hi: float, slope: float
) -> np.ndarray:
    # Inverse CDF of a density proportional to 10**(slope m) on [lo, hi].
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + rng.random(n) * (b - a)) / slope


def _transform(rng: np.random.Generator, cfg: SceneConfig) -> dict[str, float | bool]:
    g = cfg.shear_max * math.sqrt(rng.random())
    beta = 2.0 * math.pi * rng.random()
    return {
        "rotation": 2.0 * math.pi * rng.random(),
        "flip": bool(rng.random() < 0.5),
        "g1": g * math.cos(beta),
        "g2": g * math.sin(beta),
        "dilation": float(rng.uniform(*cfg.dilation_range)),
    }


def _ratio(p: PoolGalaxy, mag: float, dilation: float, noise_sigma: float) -> float:
    return p.hst_std / noise_sigma * 10.0 ** (-0.4 * (mag - p.template.record.mag)) / dilation


def sample_scene(
    rng: np.random.Generator,
    view: str,
    pool: list[PoolGalaxy],
    size: int,
    pixel_scale: float,
    noise_sigma: float,
    zeropoint: float,
    cfg: SceneConfig,
) -> list[SourceSpec]:
    """Draw the galaxies of one cutout.

    Parameters
    ----------
    rng
        The cutout's generator.
    view
        ``"sky"`` or ``"galaxies"``.
    pool
        Galaxies of the split with their caps.
    size
        Cutout side, pixels.
    pixel_scale
        Arcsec per pixel.
    noise_sigma
        Added noise (counts), for the recorded stamp-noise ratios.
    zeropoint
        AB zero point of the counts.
    cfg
        Scene parameters.

    Returns
    -------
    list of SourceSpec
        Central galaxy first (galaxies view), then neighbours.

    Raises
    ------
    ConfigError
        If the view is unknown or no galaxy of the pool can be central.
    """
    if view not in VIEWS:
        raise ConfigError(f"view {view!r}: must be one of {', '.join(VIEWS)}")
    specs: list[SourceSpec] = []
    center = 0.5 * (size - 1)
    if view == "galaxies":
        centrals = [p for p in pool if central_m_min(p, cfg) <= cfg.central_mag_max]
        if not centrals:
            raise ConfigError(
                "no galaxy of this split can be central: all need magnitudes fainter than "
                "central_mag_max "
                f"{cfg.central_mag_max} to keep their HST noise below {cfg.max_hst_noise_ratio} x "
                "the added noise"
            )
        p = centrals[int(rng.integers(len(centrals)))]
        m_min = central_m_min(p, cfg)
        mag = float(rng.uniform(m_min, max(m_min, cfg.central_mag_max)))
        r = cfg.center_jitter * math.sqrt(rng.random())
        phi = 2.0 * math.pi * rng.random()
        tr = _transform(rng, cfg)
        placement = Placement(
            center + r * math.cos(phi),
            center + r * math.sin(phi),
            10.0 ** (-0.4 * (mag - zeropoint)),
            **tr,
        )
        specs.append(
            SourceSpec(
                "central", p.ident, placement, mag, _ratio(p, mag, placement.dilation, noise_sigma)
            )
        )
    side = size * pixel_scale + 2.0 * cfg.margin  # arcsec: the cutout and its margin
    m_px = cfg.margin / pixel_scale
    lo = cfg.mag_bright if cfg.bright_sersic else max(cfg.mag_bright, min(p.m_min for p in pool))
    hi = cfg.mag_faint
    if lo < hi and cfg.count_n25 > 0:
        area = (side / 60.0) ** 2
        s = cfg.count_slope
        expected = (
            cfg.count_n25
            * area
            * (10.0 ** (s * (hi - 25.0)) - 10.0 ** (s * (lo - 25.0)))
            / (s * math.log(10.0))
        )
        n = int(rng.poisson(expected))
        mags = _sample_mags(rng, n, lo, hi, s)
        if cfg.center_exclusion >= (0.5 * size + m_px) * math.sqrt(2.0):
            raise ConfigError(
                f"scene: center_exclusion {cfg.center_exclusion} px leaves no room for neighbours"
            )
        m_mins = np.array([p.m_min for p in pool])
        for mag in mags:
            allowed = np.flatnonzero(m_mins <= mag)
            if not len(allowed):
                specs.append(_sersic_spec(rng, float(mag), size, m_px, center, zeropoint, cfg))
                continue
            p = pool[int(allowed[rng.integers(len(allowed))])]
            x, y = _position(rng, size, m_px, center, cfg)
            tr = _transform(rng, cfg)
            placement = Placement(float(x), float(y), 10.0 ** (-0.4 * (mag - zeropoint)), **tr)
            specs.append(
                SourceSpec(
                    "neighbour",
                    p.ident,
                    placement,
                    float(mag),
                    _ratio(p, float(mag), placement.dilation, noise_sigma),
                )
            )
    if cfg.star_density > 0:
        lo_s, hi_s = cfg.star_mag_range
        n = int(rng.poisson(cfg.star_density * (side / 60.0) ** 2 * (hi_s - lo_s)))
        for mag in rng.uniform(lo_s, hi_s, size=n):
            x, y = _position(rng, size, m_px, center, cfg)
            placement = Placement(float(x), float(y), 10.0 ** (-0.4 * (mag - zeropoint)))
            specs.append(SourceSpec("star", -1, placement, float(mag), math.nan))
    return specs


def _position(
    rng: np.random.Generator, size: int, m_px: float, center: float, cfg: SceneConfig
) -> tuple[float, float]:
    x, y = rng.uniform(-0.5 - m_px, size - 0.5 + m_px, size=2)
    while math.hypot(x - center, y - center) < cfg.center_exclusion:
        x, y = rng.uniform(-0.5 - m_px, size - 0.5 + m_px, size=2)
    return float(x), float(y)


def _sersic_spec(
    rng: np.random.Generator,
    mag: float,
    size: int,
    m_px: float,
    center: float,
    zeropoint: float,
    cfg: SceneConfig,
) -> SourceSpec:
    x, y = _position(rng, size, m_px, center, cfg)
    n = float(rng.uniform(*cfg.sersic_n_range))
    hlr = float(math.exp(rng.uniform(*np.log(cfg.sersic_hlr_range))))
    g = cfg.sersic_shear_max * math.sqrt(rng.random())
    beta = 2.0 * math.pi * rng.random()
    placement = Placement(
        x, y, 10.0 ** (-0.4 * (mag - zeropoint)), g1=g * math.cos(beta), g2=g * math.sin(beta)
    )
    return SourceSpec("sersic", -1, placement, mag, math.nan, sersic_n=n, hlr=hlr)


def cutout_noise_sigma(specs: list[SourceSpec], noise_sigma: float, cfg: SceneConfig) -> float:
    """The added noise of a cutout: the base level, raised for a bright central if asked.

    Parameters
    ----------
    specs
        Output of :func:`sample_scene`; ratios are relative to ``noise_sigma``.
    noise_sigma
        Base noise std (counts).
    cfg
        Scene parameters.

    Returns
    -------
    float
        ``noise_sigma * max(1, ratio_central / max_hst_noise_ratio)`` with
        ``central_noise = "raise"``, else ``noise_sigma``.
    """
    if cfg.central_noise != "raise" or cfg.max_hst_noise_ratio is None:
        return float(noise_sigma)
    ratios = [
        s.hst_noise_ratio for s in specs if s.role == "central" and math.isfinite(s.hst_noise_ratio)
    ]
    worst = max(ratios, default=0.0)
    return float(noise_sigma * max(1.0, worst / cfg.max_hst_noise_ratio))


def _shifted(p: Placement, pad: int) -> Placement:
    return Placement(p.x + pad, p.y + pad, p.flux, p.rotation, p.flip, p.g1, p.g2, p.dilation)


def render_scene(
    rng: np.random.Generator,
    view: str,
    specs: list[SourceSpec],
    templates: dict[int, GalaxyTemplate],
    psf: np.ndarray,
    size: int,
    pixel_scale: float,
    noise_sigma: float,
    cfg: SceneConfig,
    noise_field: np.ndarray | None = None,
    cutout_sigma: float | None = None,
    truth_fwhm: float = 0.0,
) -> Scene:
    """Render truth images and the noisy observation of one cutout.

    Parameters
    ----------
    rng
        The cutout's generator (background residual and white noise).
    view
        ``"sky"`` or ``"galaxies"``.
    specs
        Output of :func:`sample_scene`.
    templates
        IDENT -> template.
    psf
        ``(kh, kw)`` odd, unit-sum PSF.
    size
        Cutout side, pixels.
    pixel_scale
        Arcsec per pixel.
    noise_sigma
        Added noise standard deviation (counts).
    cfg
        Scene parameters.
    noise_field
        Pre-drawn noise (e.g. correlated HST noise) to use instead of white noise.
    cutout_sigma
        Std of this cutout's white noise if it differs from ``noise_sigma``
        (:func:`cutout_noise_sigma`); the sky residual keeps ``noise_sigma``'s scale.
    truth_fwhm
        FWHM (arcsec) of the truth kernel applied to Sersic neighbours (0: none).

    Returns
    -------
    Scene
    """
    pad = max(psf.shape) // 2
    n = size + 2 * pad
    galaxy = np.zeros((n, n))
    sky = np.zeros((n, n))
    for spec in specs:
        target = galaxy if spec.role == "central" else sky
        placement = _shifted(spec.placement, pad)
        if spec.role == "star":
            draw_point(target, placement)
        elif spec.role == "sersic":
            draw_sersic(target, placement, spec.sersic_n, spec.hlr, pixel_scale, truth_fwhm)
        else:
            draw_source(target, templates[spec.ident], placement, pixel_scale)
    # Sky-subtraction residual: a plane, which the unit-sum PSF leaves unchanged away
    # from the canvas edge (the crop below keeps only such pixels).
    b0 = cfg.background_sigma * noise_sigma * rng.standard_normal()
    gx, gy = cfg.background_gradient * noise_sigma * rng.standard_normal(2)
    coords = (np.arange(n) - pad - 0.5 * (size - 1)) / size
    sky += b0 + gx * coords[None, :] + gy * coords[:, None]
    crop = (slice(pad, pad + size), slice(pad, pad + size))
    truth: dict[str, np.ndarray] = {}
    if view == "galaxies":
        truth["galaxy"] = galaxy[crop].copy()
        truth["galaxy_conv"] = fftconvolve(galaxy, psf, mode="same")[crop]
    truth["sky"] = sky[crop].copy()
    truth["sky_conv"] = fftconvolve(sky, psf, mode="same")[crop]
    noise = (
        noise_field
        if noise_field is not None
        else (noise_sigma if cutout_sigma is None else cutout_sigma)
        * rng.standard_normal((size, size))
    )
    truth["noise"] = np.asarray(noise, dtype=np.float64)
    image = truth["sky_conv"] + truth["noise"]
    if "galaxy_conv" in truth:
        image = image + truth["galaxy_conv"]
    return Scene(
        sources=specs, truth=truth, image=image, background=(float(b0), float(gx), float(gy))
    )

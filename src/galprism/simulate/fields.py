"""Fields of several galaxies and stars with per-source truth (``galprism simulate --view scenes``).

What the scene deblender (``galprism separate --scene``) is evaluated on. Each scene is
an image (default 96x96 pixels for the HSC-like instrument) holding

* ``n_galaxies`` galaxies (a count uniform in that range, default 3 to 6) at positions
  uniform in the central square of side ``inner_fraction`` of the image, so that many
  overlap; magnitudes uniform in ``galaxy_mags`` (default 19 to 26: from the faint end of
  the training cutouts' central galaxies to several magnitudes brighter than any of them);
  each galaxy is a COSMOS galaxy of the split allowed at that magnitude under the stamp-noise
  cap (:func:`galprism.simulate.scene.build_pool`), transformed as in the other views,
  or, where no COSMOS galaxy is allowed (every galaxy brighter than about i = 22.7 for the
  70-galaxy catalogue's test split), a GalSim Sersic profile (the ``bright_sersic``
  neighbours' model: index, half-light radius and shear from :class:`SceneConfig`);
* one star (a point through the PSF, :func:`galprism.simulate.render.draw_point`) in a
  fraction ``star_fraction`` of the scenes: scene ``i`` has one when
  ``floor((i + 1) f) > floor(i f)``, so any run of consecutive scenes has that fraction to
  within one scene (``f = 0.5``: the odd indices);
* the smooth sky residual of the other views (constant + gradient) and white noise (HSC) or
  the correlated ACS noise (HST).

Every source is drawn on its own canvas (padded by half the PSF), convolved with the
pixelised PSF and cropped; these per-source images are the truth. The observation is the
sum of all intrinsic images convolved once (what a detector records) plus the residual and
the noise; it equals the sum of the per-source truth images plus the residual to float64
round-off (a test checks it).

Randomness: scene ``i`` draws everything from
``default_rng(SeedSequence([seed, crc32(instrument), crc32("scenes"), crc32(split), i]))``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import galsim
import numpy as np
from astropy.table import Column, Table
from astropy.wcs import WCS
from scipy.signal import fftconvolve

from ..errors import ConfigError
from .cosmos import SPLIT_SEED, SPLITS, CosmosCatalog
from .defects import add_defects, bad_bits
from .render import Placement, draw_point, draw_sersic, draw_source
from .scene import SceneConfig, SourceSpec, _transform
from .simulator import SimulationConfig, Simulator, _code, _convolve_bands
from .write import wcs_cards

__all__ = [
    "SCENES_VIEW",
    "SCENE_DEFAULT_SIZE",
    "ScenesConfig",
    "SceneField",
    "SceneSimulator",
    "has_star",
    "half_light_radius",
    "blendedness",
    "truth_table",
    "add_band_columns",
]

#: the view name of these fields (``--view scenes``)
SCENES_VIEW = "scenes"
#: default image side per instrument, pixels (16 arcsec for HSC; about the same for HST)
SCENE_DEFAULT_SIZE = {"hsc": 96, "hst": 512}


@dataclass(frozen=True)
class ScenesConfig:
    """Everything that defines a batch of scenes.

    Attributes
    ----------
    split, n, instrument, psf, noise_sigma, truth_fwhm, seed, start, data_dir, catalog,
    split_seed, split_file
        As in :class:`galprism.simulate.SimulationConfig`.
    size
        Image side in pixels (default :data:`SCENE_DEFAULT_SIZE` of the instrument).
    mask_fraction
        Fraction of scenes (in expectation) with masked defects (default none).
    scene
        Shared scene parameters: stamp-noise cap and brightening of the COSMOS galaxies,
        their transformations, the Sersic model of brighter galaxies, the star magnitude
        range and the sky residual. Its counts, central-galaxy and star-density fields are
        not used here.
    n_galaxies
        Smallest and largest number of galaxies per scene (uniform).
    galaxy_mags
        Brightest and faintest galaxy magnitude (AB, uniform).
    star_fraction
        Fraction of scenes with one star.
    inner_fraction
        Side of the central square where sources are placed, as a fraction of the image.
    footprint_sigma
        A source's footprint, for its blendedness, is where its noiseless image is at least
        this many noise standard deviations.
    bands, colour_gradient, gradient_fwhm
        Several HSC bands, as in :class:`galprism.simulate.SimulationConfig`.
    """

    split: str = "test"
    n: int = 10
    size: int | None = None
    instrument: str = "hsc"
    psf: str = "npz"
    noise_sigma: float | None = None
    truth_fwhm: float | None = None
    seed: int = 0
    start: int = 0
    mask_fraction: float = 0.0
    scene: SceneConfig = field(default_factory=SceneConfig)
    data_dir: str | None = None
    catalog: str | None = None
    split_seed: int = SPLIT_SEED
    split_file: str | None = None
    n_galaxies: tuple[int, int] = (3, 6)
    galaxy_mags: tuple[float, float] = (19.0, 26.0)
    star_fraction: float = 0.5
    inner_fraction: float = 0.6
    footprint_sigma: float = 1.0
    bands: tuple[str, ...] | None = None
    colour_gradient: float = 0.3
    gradient_fwhm: float = 0.5

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        if self.split not in SPLITS:
            raise ConfigError(f"split {self.split!r}: must be one of {', '.join(SPLITS)}")
        lo, hi = self.n_galaxies
        if not (int(lo) == lo and int(hi) == hi and 1 <= lo <= hi):
            raise ConfigError(
                f"scenes: galaxy count range {self.n_galaxies}: need 1 <= low <= high"
            )
        m_lo, m_hi = self.galaxy_mags
        if not (math.isfinite(m_lo) and math.isfinite(m_hi) and m_lo <= m_hi):
            raise ConfigError(
                f"scenes: galaxy magnitudes {self.galaxy_mags}: need finite brightest <= faintest"
            )
        if not 0.0 <= self.star_fraction <= 1.0:
            raise ConfigError(f"scenes: star fraction {self.star_fraction}: must be in [0, 1]")
        if not 0.0 < self.inner_fraction <= 1.0:
            raise ConfigError(f"scenes: inner fraction {self.inner_fraction}: must be in (0, 1]")
        if not self.footprint_sigma > 0:
            raise ConfigError(f"scenes: footprint threshold {self.footprint_sigma}: must be > 0")
        self.base().validate()

    def base(self) -> SimulationConfig:
        """The :class:`SimulationConfig` whose catalogue, instrument and galaxies scenes use."""
        return SimulationConfig(
            view="sky",
            split=self.split,
            n=self.n,
            size=self.size or SCENE_DEFAULT_SIZE.get(self.instrument, 96),
            instrument=self.instrument,
            psf=self.psf,
            noise_sigma=self.noise_sigma,
            truth_fwhm=self.truth_fwhm,
            seed=self.seed,
            mask_fraction=self.mask_fraction,
            scene=self.scene,
            data_dir=self.data_dir,
            start=self.start,
            catalog=self.catalog,
            split_seed=self.split_seed,
            split_file=self.split_file,
            bands=self.bands,
            colour_gradient=self.colour_gradient,
            gradient_fwhm=self.gradient_fwhm,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded in every file's ``config``)."""
        d = asdict(self)
        d["view"] = SCENES_VIEW
        d["scene"]["dilation_range"] = list(self.scene.dilation_range)
        if self.bands is None:
            for key in ("bands", "colour_gradient", "gradient_fwhm"):
                d.pop(key)
        else:
            d["bands"] = list(self.bands)
        return d


def has_star(index: int, fraction: float) -> bool:
    """Whether scene ``index`` holds a star: ``floor((index + 1) f) > floor(index f)``.

    Deterministic and evenly spread, so any ``k`` consecutive scenes hold ``k f`` stars to
    within one, which a random draw per scene would not give a small batch.
    """
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)


@dataclass
class SceneField:
    """One simulated scene; arrays are ``(H, W)`` unless said otherwise.

    Attributes
    ----------
    index
        Scene index in the batch.
    image
        Observation (float32), defects included.
    variance
        Per-pixel variance of the added noise (float32).
    maskbits, valid
        HSC-convention bit mask (0 = good) and ``maskbits & bad_bits == 0``.
    psf, psf_index
        The PSF used (unit sum) and its index in the instrument's list.
    sources
        Placed sources, galaxies first, then the star; row ``k`` of :attr:`truth`.
    truth
        The truth table (:func:`truth_table`).
    images
        ``(N, H, W)`` float64 noiseless PSF-convolved image of each source.
    intrinsic
        ``(N, H, W)`` float64 PSF-free image of each source on the same grid.
    background
        Sky residual image (float64).
    background_terms
        (constant, x gradient, y gradient) of the residual, counts.
    noiseless
        All sources drawn together and convolved once, plus the residual (float64).
    noise
        The added noise (float64).
    noise_sigma
        Its standard deviation.
    defects
        Defect kinds added.
    bands
        Band names of a multi-band scene (then ``image``, ``variance``, ``maskbits``,
        ``valid``, ``background``, ``noiseless`` and ``noise`` are ``(C, H, W)``, ``images``
        and ``intrinsic`` ``(N, C, H, W)``, ``psf`` ``(C, kh, kw)``, and ``noise_sigma`` is the
        reference band's); empty for a single band.
    band_sigmas
        ``(C,)`` noise std per band (multi-band only).
    """

    index: int
    image: np.ndarray
    variance: np.ndarray
    maskbits: np.ndarray
    valid: np.ndarray
    psf: np.ndarray
    psf_index: int
    sources: list[SourceSpec]
    truth: Table
    images: np.ndarray
    intrinsic: np.ndarray
    background: np.ndarray
    background_terms: tuple[float, float, float]
    noiseless: np.ndarray
    noise: np.ndarray
    noise_sigma: float
    defects: list[str]
    bands: tuple[str, ...] = ()
    band_sigmas: np.ndarray | None = None


def half_light_radius(image: np.ndarray, x: float, y: float) -> float:
    """Radius (pixels) of the circle around ``(x, y)`` that holds half of ``image``'s light.

    Pixels count as points at their centers, sorted by distance; the radius is
    interpolated linearly in the cumulative light. The pixel grid limits it to about
    0.4 px for a source much smaller than a pixel. NaN when the image holds no positive
    light.

    Parameters
    ----------
    image
        2-D non-negative image of one source.
    x, y
        Center, 0-based pixels.

    Returns
    -------
    float
    """
    total = float(image.sum())
    if not total > 0:
        return math.nan
    yy, xx = np.indices(image.shape)
    r = np.hypot(xx - x, yy - y).ravel()
    order = np.argsort(r, kind="stable")
    r, cum = r[order], np.cumsum(image.ravel()[order])
    k = int(np.searchsorted(cum, 0.5 * total))
    if k == 0:
        return float(r[0])
    # Interpolate between the last pixel short of half the light and the first past it.
    frac = (0.5 * total - cum[k - 1]) / max(cum[k] - cum[k - 1], 1e-300)
    return float(r[k - 1] + frac * (r[k] - r[k - 1]))


def blendedness(images: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Each source's blendedness and footprint size from the noiseless per-source images.

    The footprint of source ``k`` is where its own image is at least ``threshold`` (or
    its brightest pixel alone, if no pixel reaches it); its blendedness is
    ``1 - (its light in the footprint) / (all sources' light in the footprint)``: 0 for an
    isolated source, towards 1 for one buried under others.

    Parameters
    ----------
    images
        ``(N, H, W)`` noiseless images, one per source.
    threshold
        Footprint level in image units.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(N,)`` blendedness and ``(N,)`` footprint sizes in pixels.
    """
    total = images.sum(axis=0)
    out = np.zeros(len(images))
    area = np.zeros(len(images), dtype=np.int64)
    for k, own in enumerate(images):
        foot = own >= threshold
        if not foot.any():
            foot = np.zeros(own.shape, dtype=bool)
            foot[np.unravel_index(int(np.argmax(own)), own.shape)] = True
        mine, everyone = float(own[foot].sum()), float(total[foot].sum())
        out[k] = 1.0 - mine / everyone if everyone > 0 else math.nan
        area[k] = int(foot.sum())
    return out, area


def truth_table(
    sources: list[SourceSpec],
    images: np.ndarray,
    intrinsic: np.ndarray,
    wcs: WCS,
    zeropoint: float,
    bunit: str,
    noise_sigma: float,
    footprint_sigma: float,
) -> Table:
    """The per-source truth of one scene, in the columns of galprism's source catalogues.

    Parameters
    ----------
    sources
        The placed sources (row order = plane order of ``images``).
    images, intrinsic
        ``(N, H, W)`` noiseless PSF-convolved and PSF-free per-source images.
    wcs
        Celestial WCS of the image (0-based pixel convention of astropy).
    zeropoint
        AB zero point of the image's units.
    bunit
        The image's unit.
    noise_sigma
        Added noise standard deviation (sets the blendedness footprints).
    footprint_sigma
        Footprint threshold in noise standard deviations.

    Returns
    -------
    astropy.table.Table
    """
    import astropy.units as u

    x = np.array([s.placement.x for s in sources], dtype=np.float64)
    y = np.array([s.placement.y for s in sources], dtype=np.float64)
    ra, dec = (np.asarray(v, dtype=np.float64) for v in wcs.pixel_to_world_values(x, y))
    flux = images.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, zeropoint - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
    hlr = np.array(
        [
            0.0 if s.role == "star" else half_light_radius(img, s.placement.x, s.placement.y)
            for s, img in zip(sources, intrinsic, strict=True)
        ]
    )
    blend, area = blendedness(images, footprint_sigma * noise_sigma)
    kind = np.array(["star" if s.role == "star" else "galaxy" for s in sources], dtype="<U6")
    model = {"neighbour": "cosmos", "sersic": "sersic", "star": "point"}
    t = Table()
    t["id"] = Column(np.arange(1, len(sources) + 1, dtype=np.int64), description="source id")
    t["kind"] = Column(kind, description="galaxy or star")
    t["x"] = Column(x, unit=u.pix, description="0-based pixel column of the source center")
    t["y"] = Column(y, unit=u.pix, description="0-based pixel row of the source center")
    t["ra"] = Column(ra, unit=u.deg, description="right ascension")
    t["dec"] = Column(dec, unit=u.deg, description="declination")
    t["flux"] = Column(
        flux, unit=bunit, description="sum over the image of the noiseless PSF-convolved source"
    )
    t["mag"] = Column(mag, unit=u.mag, description="AB magnitude of flux")
    t["flux_placed"] = Column(
        np.array([s.placement.flux for s in sources]),
        unit=bunit,
        description="total flux placed, including light falling off the image",
    )
    t["hlr"] = Column(
        hlr, unit=u.pix, description="half-light radius of the PSF-free source (0 for stars)"
    )
    t["blendedness"] = Column(
        blend, description="1 - own light / all light in the source's footprint"
    )
    t["footprint_area"] = Column(area, unit=u.pix**2, description="pixels of the footprint")
    t["plane"] = Column(
        np.arange(len(sources), dtype=np.int64), description="plane of TRUTH_IMAGES"
    )
    t["model"] = Column(
        np.array([model[s.role] for s in sources], dtype="<U6"),
        description="cosmos (HST galaxy), sersic or point",
    )
    t["ident"] = Column(
        np.array([s.ident for s in sources], dtype=np.int64), description="COSMOS IDENT, or -1"
    )
    t["sersic_n"] = Column(np.array([s.sersic_n for s in sources]), description="Sersic index")
    t["sersic_hlr"] = Column(
        np.array([s.hlr for s in sources]), unit=u.arcsec, description="Sersic half-light radius"
    )
    for name in ("rotation", "g1", "g2", "dilation"):
        t[name] = Column(np.array([getattr(s.placement, name) for s in sources], dtype=float))
    t["flip"] = Column(np.array([s.placement.flip for s in sources], dtype=bool))
    t["hst_noise_ratio"] = Column(
        np.array([s.hst_noise_ratio for s in sources]),
        description="HST stamp noise in the image / added noise (NaN: not a COSMOS galaxy)",
    )
    # Short upper-case keys: they become FITS header cards of the TRUTH table.
    t.meta["MAGZERO"] = float(zeropoint)
    t.meta["NOISESIG"] = float(noise_sigma)
    t.meta["FOOTSIG"] = float(footprint_sigma)
    return t


class SceneSimulator:
    """Prepared state of a batch of scenes; :meth:`scene` makes any scene of it.

    Parameters
    ----------
    config
        The batch.
    catalog
        Reuse an already opened catalogue.

    Raises
    ------
    ConfigError
        On an invalid configuration or missing data.
    """

    def __init__(self, config: ScenesConfig, catalog: CosmosCatalog | None = None) -> None:
        config.validate()
        self.config = config
        self.base = Simulator(config.base(), catalog)
        self.catalog = self.base.catalog
        self.instrument = self.base.instrument
        self.size = self.base.size
        self.truth_fwhm = self.base.truth_fwhm
        self.seed_key = [
            int(config.seed),
            _code(self.instrument.name),
            _code(SCENES_VIEW),
            _code(config.split),
        ]
        self.wcs = WCS(dict((k, v) for k, v, _ in wcs_cards((self.size,) * 2, self.pixel_scale)))

    @property
    def pixel_scale(self) -> float:
        """Arcsec per pixel."""
        return self.instrument.pixel_scale

    def meta(self) -> dict[str, Any]:
        """Batch metadata written to every file."""
        meta = self.base.meta()
        meta.update(
            seed_key=self.seed_key,
            view=SCENES_VIEW,
            size=self.size,
            config=self.config.to_dict(),
        )
        return meta

    def rng(self, index: int) -> np.random.Generator:
        """The generator of scene ``index``."""
        return np.random.default_rng(np.random.SeedSequence([*self.seed_key, int(index)]))

    def _position(self, rng: np.random.Generator) -> tuple[float, float]:
        half = 0.5 * self.config.inner_fraction * self.size
        center = 0.5 * (self.size - 1)
        x, y = rng.uniform(center - half, center + half, size=2)
        return float(x), float(y)

    def plan(self, index: int) -> tuple[np.random.Generator, int, list[SourceSpec]]:
        """The first draws of scene ``index``: its generator (advanced), PSF index and sources.

        Cheap (no rendering).
        """
        cfg, inst = self.config, self.instrument
        scene = cfg.scene
        zp = inst.zeropoint
        rng = self.rng(index)
        psf_index = int(rng.integers(len(inst.psfs))) if len(inst.psfs) > 1 else 0
        n_gal = int(rng.integers(cfg.n_galaxies[0], cfg.n_galaxies[1] + 1))
        m_mins = np.array([p.m_min for p in self.base.pool])
        specs: list[SourceSpec] = []
        for _ in range(n_gal):
            mag = float(rng.uniform(*cfg.galaxy_mags))
            x, y = self._position(rng)
            flux = 10.0 ** (-0.4 * (mag - zp))
            allowed = np.flatnonzero(m_mins <= mag)
            if len(allowed):
                p = self.base.pool[int(allowed[rng.integers(len(allowed))])]
                placement = Placement(x, y, flux, **_transform(rng, scene))
                ratio = (
                    p.hst_std
                    / inst.noise_sigma
                    * 10.0 ** (-0.4 * (mag - p.template.record.mag))
                    / placement.dilation
                )
                specs.append(SourceSpec("neighbour", p.ident, placement, mag, ratio))
                continue
            n = float(rng.uniform(*scene.sersic_n_range))
            hlr = float(math.exp(rng.uniform(*np.log(scene.sersic_hlr_range))))
            g = scene.sersic_shear_max * math.sqrt(rng.random())
            beta = 2.0 * math.pi * rng.random()
            placement = Placement(x, y, flux, g1=g * math.cos(beta), g2=g * math.sin(beta))
            specs.append(SourceSpec("sersic", -1, placement, mag, math.nan, sersic_n=n, hlr=hlr))
        if has_star(index, cfg.star_fraction):
            mag = float(rng.uniform(*scene.star_mag_range))
            x, y = self._position(rng)
            placement = Placement(x, y, 10.0 ** (-0.4 * (mag - zp)))
            specs.append(SourceSpec("star", -1, placement, mag, math.nan))
        return rng, psf_index, specs

    def _render(self, spec: SourceSpec, n: int, pad: int, scale: float) -> np.ndarray:
        """One source's intrinsic image on an ``n`` x ``n`` canvas padded by ``pad``."""
        canvas = np.zeros((n, n))
        placement = replace(spec.placement, x=spec.placement.x + pad, y=spec.placement.y + pad)
        if spec.role == "star":
            draw_point(canvas, placement)
        elif spec.role == "sersic":
            draw_sersic(canvas, placement, spec.sersic_n, spec.hlr, scale, self.truth_fwhm)
        else:
            draw_source(canvas, self.base.templates[spec.ident], placement, scale)
        return canvas

    def scene(self, index: int) -> SceneField:
        """Make scene ``index`` (deterministic given the configuration).

        Parameters
        ----------
        index
            Scene index (>= 0).

        Returns
        -------
        SceneField
        """
        if self.base.bandset is not None:
            return self._band_scene(index)
        cfg, inst = self.config, self.instrument
        rng, psf_index, specs = self.plan(index)
        psf = inst.psfs[psf_index]
        size, scale = self.size, inst.pixel_scale
        pad = max(psf.shape) // 2
        n = size + 2 * pad
        crop = (slice(pad, pad + size), slice(pad, pad + size))
        images = np.zeros((len(specs), size, size))
        intrinsic = np.zeros((len(specs), size, size))
        joint = np.zeros((n, n))
        for k, spec in enumerate(specs):
            canvas = self._render(spec, n, pad, scale)
            joint += canvas
            intrinsic[k] = canvas[crop]
            images[k] = fftconvolve(canvas, psf, mode="same")[crop]
        sigma = inst.noise_sigma
        b0 = cfg.scene.background_sigma * sigma * rng.standard_normal()
        gx, gy = cfg.scene.background_gradient * sigma * rng.standard_normal(2)
        coords = (np.arange(size) - 0.5 * (size - 1)) / size
        background = b0 + gx * coords[None, :] + gy * coords[:, None]
        noiseless = fftconvolve(joint, psf, mode="same")[crop] + background
        if inst.correlated_noise is not None:
            field_ = galsim.Image(size, size, scale=scale, dtype=np.float64)
            field_.addNoise(
                inst.correlated_noise.copy(rng=galsim.BaseDeviate(int(rng.integers(1, 2**31 - 1))))
            )
            noise = field_.array.copy()
        else:
            noise = sigma * rng.standard_normal((size, size))
        image = noiseless + noise
        maskbits = np.zeros(image.shape, dtype=np.int32)
        defects: list[str] = []
        if rng.random() < cfg.mask_fraction:
            defects = add_defects(rng, image, maskbits, sigma)
        truth = truth_table(
            specs,
            images,
            intrinsic,
            self.wcs,
            inst.zeropoint,
            inst.bunit,
            sigma,
            cfg.footprint_sigma,
        )
        return SceneField(
            index=int(index),
            image=image.astype(np.float32),
            variance=np.full(image.shape, sigma**2, dtype=np.float32),
            maskbits=maskbits,
            valid=(maskbits & bad_bits()) == 0,
            psf=psf,
            psf_index=psf_index,
            sources=specs,
            truth=truth,
            images=images,
            intrinsic=intrinsic,
            background=background,
            background_terms=(float(b0), float(gx), float(gy)),
            noiseless=noiseless,
            noise=noise,
            noise_sigma=float(sigma),
            defects=defects,
        )

    def _band_scene(self, index: int) -> SceneField:
        """A multi-band scene: the sources of :meth:`plan`, coloured, per-band PSF and noise."""
        cfg, inst = self.config, self.instrument
        bs = self.base.bandset
        assert bs is not None
        rng, psf_index, specs = self.plan(index)
        colours = self.base.source_colours(rng, specs)
        size, scale, n_b = self.size, inst.pixel_scale, len(bs.bands)
        pad = max(bs.psfs.shape[-2:]) // 2
        n = size + 2 * pad
        crop = (slice(None), slice(pad, pad + size), slice(pad, pad + size))
        images = np.zeros((len(specs), n_b, size, size))
        intrinsic = np.zeros((len(specs), n_b, size, size))
        joint = np.zeros((n_b, n, n))
        for k, spec in enumerate(specs):
            canvas = self._render(spec, n, pad, scale)
            cube = self.base.band_images(canvas, colours[k], spec.role == "star")
            joint += cube
            intrinsic[k] = cube[crop]
            images[k] = _convolve_bands(cube, bs.psfs)[crop]
        sigmas = bs.sigmas
        b0 = cfg.scene.background_sigma * sigmas * rng.standard_normal(n_b)
        grad = cfg.scene.background_gradient * sigmas[:, None] * rng.standard_normal((n_b, 2))
        coords = (np.arange(size) - 0.5 * (size - 1)) / size
        background = (
            b0[:, None, None]
            + grad[:, 0, None, None] * coords[None, None, :]
            + grad[:, 1, None, None] * coords[None, :, None]
        )
        noiseless = _convolve_bands(joint, bs.psfs)[crop] + background
        noise = sigmas[:, None, None] * rng.standard_normal((n_b, size, size))
        image = noiseless + noise
        maskbits = np.zeros(image.shape, dtype=np.int32)
        defects: list[str] = []
        for b in range(n_b):
            if rng.random() < cfg.mask_fraction:
                defects += add_defects(rng, image[b], maskbits[b], float(sigmas[b]))
        ref = bs.reference
        truth = truth_table(
            specs,
            images[:, ref],
            intrinsic[:, ref],
            self.wcs,
            inst.zeropoint,
            inst.bunit,
            float(sigmas[ref]),
            cfg.footprint_sigma,
        )
        add_band_columns(truth, images, bs.bands, inst.zeropoint, inst.bunit, ref)
        return SceneField(
            index=int(index),
            image=image.astype(np.float32),
            variance=np.broadcast_to(sigmas[:, None, None] ** 2, image.shape).astype(np.float32),
            maskbits=maskbits,
            valid=(maskbits & bad_bits()) == 0,
            psf=bs.psfs,
            psf_index=psf_index,
            sources=specs,
            truth=truth,
            images=images,
            intrinsic=intrinsic,
            background=background,
            background_terms=(float(b0[ref]), *map(float, grad[ref])),
            noiseless=noiseless,
            noise=noise,
            noise_sigma=float(sigmas[ref]),
            defects=defects,
            bands=bs.bands,
            band_sigmas=sigmas,
        )


def add_band_columns(
    truth: Table,
    images: np.ndarray,
    bands: tuple[str, ...],
    zeropoint: float,
    bunit: str,
    reference: int,
) -> None:
    """Add ``flux_<b>`` and ``mag_<b>`` per band to a scene's truth table, in place.

    ``images`` is ``(N, C, H, W)``; ``flux``/``mag`` (and the other single-band columns)
    stay those of band ``reference``, recorded as the table's ``REFBAND``.

    Parameters
    ----------
    truth
        The table of :func:`truth_table`.
    images
        Noiseless PSF-convolved per-source band images.
    bands
        Band names.
    zeropoint, bunit
        Units of the images.
    reference
        Index of the band of the single-band columns.
    """
    import astropy.units as u

    flux = images.sum(axis=(2, 3))
    for k, b in enumerate(bands):
        f = flux[:, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            mag = np.where(f > 0, zeropoint - 2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)
        truth[f"flux_{b}"] = Column(
            f, unit=bunit, description=f"flux in band {b} (sum of its noiseless convolved image)"
        )
        truth[f"mag_{b}"] = Column(mag, unit=u.mag, description=f"AB magnitude in band {b}")
    truth.meta["BANDS"] = ",".join(bands)
    truth.meta["REFBAND"] = bands[reference]

"""One simulated cutout at a time, reproducibly, from a batch configuration.

:class:`Simulator` does the per-batch work once (catalogue, instrument, galaxy
templates, stamp-noise caps) and then makes cutout ``i`` with :meth:`Simulator.cutout`.
Each cutout draws all its randomness from its own generator,
``numpy.random.default_rng(SeedSequence([seed, crc32(instrument), crc32(view),
crc32(split), i]))``, so cutout ``i`` is the same whatever else is generated, in any order
or on any machine with the same library versions, and the seed is recorded in every file.

With ``bands`` the same sources are drawn (the generator's first draws are the same), then
coloured per band (:mod:`galprism.simulate.bands`) and convolved with each band's PSF; the
draws after them (colours, background, noise, defects) are the multi-band cutout's own.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import galsim
import numpy as np
from scipy.signal import fftconvolve

from .. import __version__
from ..errors import ConfigError
from .bands import (
    BandSet,
    coloured_images,
    galaxy_colours,
    gradient_weights,
    make_bandset,
    parse_bands,
    star_colours,
)
from .cosmos import SPLIT_SEED, SPLITS, CosmosCatalog
from .defects import add_defects, bad_bits
from .hstnoise import hst_noise_table
from .instrument import INSTRUMENTS, Instrument, make_instrument
from .render import GalaxyTemplate, build_template, draw_point, draw_sersic, draw_source
from .scene import (
    VIEWS,
    PoolGalaxy,
    SceneConfig,
    SourceSpec,
    _shifted,
    build_pool,
    central_m_min,
    cutout_noise_sigma,
    render_scene,
    sample_scene,
)

__all__ = ["SimulationConfig", "Cutout", "Simulator"]


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated batch.

    Attributes
    ----------
    view
        ``"sky"`` (no central galaxy) or ``"galaxies"`` (central galaxy + surroundings).
    split
        ``"train"`` or ``"test"``: which COSMOS galaxies may appear (by object).
    n
        Number of cutouts.
    size
        Cutout side in pixels (default: 48 for hsc, 256 for hst).
    instrument
        ``"hsc"`` or ``"hst"``.
    psf
        HSC PSF source: ``"npz"`` or ``"multiview"``.
    noise_sigma
        Added noise std in counts (default: measured on the real HSC i band for hsc, the
        catalogue's median for hst).
    truth_fwhm
        FWHM (arcsec) of the truth kernel (default 0.2 for hsc, 0.12 for hst).
    seed
        Batch seed.
    mask_fraction
        Fraction of cutouts (in expectation) that get defects.
    scene
        Scene model parameters.
    data_dir
        Folder holding ``hsc/``, ``multiview/`` and, without ``catalog``, ``cosmos/``
        (default: ``$GALPRISM_DATA_DIR``, see :func:`galprism.simulate.data.find_data_dir`).
    start
        Index of the first cutout (to extend a batch without repeating cutouts).
    catalog
        GalSim ``RealGalaxyCatalog`` FITS file (default: the one in ``data_dir/cosmos``).
    split_seed
        Seed of the catalogue's drawn train/test split.
    split_file
        File listing the test galaxies (:func:`galprism.simulate.cosmos.read_split_file`);
        replaces the drawn split.
    bands
        HSC bands to simulate together (e.g. ``("g", "r", "i", "z", "y")``), HSC-like
        instrument only; None (the default) for the single i-like band
        (:mod:`galprism.simulate.bands`).
    colour_gradient, gradient_fwhm
        With ``bands``: the radial colour gradient (:func:`galprism.simulate.bands.
        gradient_weights`) and the FWHM (arcsec) of its smoothed component.
    """

    view: str = "galaxies"
    split: str = "train"
    n: int = 100
    size: int | None = None
    instrument: str = "hsc"
    psf: str = "npz"
    noise_sigma: float | None = None
    truth_fwhm: float | None = None
    seed: int = 0
    mask_fraction: float = 0.3
    scene: SceneConfig = field(default_factory=SceneConfig)
    data_dir: str | None = None
    start: int = 0
    catalog: str | None = None
    split_seed: int = SPLIT_SEED
    split_file: str | None = None
    bands: tuple[str, ...] | None = None
    colour_gradient: float = 0.3
    gradient_fwhm: float = 0.5

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        if self.bands is not None:
            object.__setattr__(self, "bands", parse_bands(self.bands))
            if self.instrument != "hsc":
                raise ConfigError(
                    f"bands {','.join(self.bands)}: several bands need the hsc instrument"
                )
            if self.noise_sigma is not None:
                raise ConfigError(
                    "noise sigma: with several bands each band's noise is the one measured "
                    "on the real HSC data; give none"
                )
            if not (0.0 <= self.colour_gradient <= 1.0 and self.gradient_fwhm > 0):
                raise ConfigError(
                    f"colour gradient {self.colour_gradient}: must be in [0, 1] (FWHM "
                    f"{self.gradient_fwhm} > 0)"
                )
        if self.view not in VIEWS:
            raise ConfigError(f"view {self.view!r}: must be one of {', '.join(VIEWS)}")
        if self.split not in SPLITS:
            raise ConfigError(f"split {self.split!r}: must be one of {', '.join(SPLITS)}")
        if self.instrument not in INSTRUMENTS:
            raise ConfigError(
                f"instrument {self.instrument!r}: must be one of {', '.join(INSTRUMENTS)}"
            )
        if self.n < 1:
            raise ConfigError(f"n {self.n}: must be at least 1")
        if self.start < 0:
            raise ConfigError(f"start {self.start}: must be >= 0")
        if self.size is not None and not 8 <= self.size <= 4096:
            raise ConfigError(f"size {self.size}: must be between 8 and 4096 pixels")
        if not 0.0 <= self.mask_fraction <= 1.0:
            raise ConfigError(f"mask fraction {self.mask_fraction}: must be in [0, 1]")
        if self.truth_fwhm is not None and not self.truth_fwhm > 0:
            raise ConfigError(f"truth FWHM {self.truth_fwhm}: must be positive")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed {self.seed}: must be a non-negative 63-bit integer")
        if not 0 <= self.split_seed < 2**63:
            raise ConfigError(
                f"split seed {self.split_seed}: must be a non-negative 63-bit integer"
            )
        self.scene.validate()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded in HDF5 attributes and ``--json`` output)."""
        d = asdict(self)
        d["scene"]["dilation_range"] = list(self.scene.dilation_range)
        if self.bands is None:
            # Single-band batches record exactly what they always did.
            for key in ("bands", "colour_gradient", "gradient_fwhm"):
                d.pop(key)
        else:
            d["bands"] = list(self.bands)
        return d


@dataclass
class Cutout:
    """One simulated cutout, arrays ``(H, W)``.

    Attributes
    ----------
    index
        Index in the batch.
    image
        Observation (counts), defects included.
    variance
        Per-pixel variance of the added noise.
    maskbits
        int32 HSC-convention bit mask (0 = good).
    valid
        ``maskbits & bad_bits == 0``.
    psf
        The PSF used, unit sum.
    psf_index
        Its index in the instrument's PSF list.
    truth
        ``galaxy``, ``sky``, ``galaxy_conv``, ``sky_conv``, ``noise`` (no ``galaxy*`` in
        the sky view).
    sources
        Placed galaxies.
    central_ident
        IDENT of the central galaxy, -1 in the sky view.
    defects
        Defect kinds added.
    background
        Sky residual (constant, x gradient, y gradient), counts.
    noise_sigma
        Std of this cutout's added noise (the batch's, unless ``central_noise`` raised it);
        with several bands, that of the reference band (i, else the first).
    bands
        Band names of a multi-band cutout (then every image array is ``(C, H, W)`` and
        ``psf`` is ``(C, kh, kw)``); empty for a single band.
    band_sigmas
        ``(C,)`` std of each band's added noise (multi-band only).
    source_fluxes
        ``(len(sources), C)`` total flux placed per band of every source (multi-band only).
    """

    index: int
    image: np.ndarray
    variance: np.ndarray
    maskbits: np.ndarray
    valid: np.ndarray
    psf: np.ndarray
    psf_index: int
    truth: dict[str, np.ndarray]
    sources: list[SourceSpec]
    central_ident: int
    defects: list[str]
    background: tuple[float, float, float]
    noise_sigma: float
    bands: tuple[str, ...] = ()
    band_sigmas: np.ndarray | None = None
    source_fluxes: np.ndarray | None = None


def _code(text: str) -> int:
    return zlib.crc32(text.encode())


def _convolve_bands(cube: np.ndarray, psfs: np.ndarray) -> np.ndarray:
    """Each band of ``(C, n, n)`` convolved with its own PSF (``fftconvolve``, same size)."""
    return np.stack([fftconvolve(c, p, mode="same") for c, p in zip(cube, psfs, strict=True)])


class Simulator:
    """Prepared state of a batch; :meth:`cutout` makes any cutout of it.

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

    def __init__(self, config: SimulationConfig, catalog: CosmosCatalog | None = None) -> None:
        config.validate()
        if config.instrument == "hst" and config.scene.max_hst_noise_ratio is not None:
            # At the HST's own resolution the stamps' noise is the noise level itself;
            # capping it below the added noise would make every galaxy invisible.
            config = replace(config, scene=replace(config.scene, max_hst_noise_ratio=None))
        self.config = config
        self.catalog = catalog or CosmosCatalog(
            config.catalog,
            data_dir=config.data_dir,
            split_seed=config.split_seed,
            split_file=config.split_file,
        )
        self.instrument: Instrument = make_instrument(
            config.instrument,
            self.catalog,
            psf=config.psf,
            noise_sigma=config.noise_sigma,
            data_dir=config.data_dir,
        )
        inst = self.instrument
        self.size = int(config.size or inst.default_size)
        self.truth_fwhm = float(config.truth_fwhm or inst.truth_fwhm)
        members = self.catalog.members(config.split)
        self.templates: dict[int, GalaxyTemplate] = {
            r.ident: build_template(
                self.catalog, r, inst.pixel_scale, self.truth_fwhm, inst.zeropoint
            )
            for r in members
        }
        self.hst_std: dict[int, float] = {}
        if inst.name == "hsc":
            table = hst_noise_table(
                self.catalog,
                members,
                inst.psfs[0],
                inst.pixel_scale,
                self.truth_fwhm,
                inst.zeropoint,
            )
            self.hst_std = {k: v.obs_std for k, v in table.items()}
        self.pool: list[PoolGalaxy] = build_pool(
            list(self.templates.values()), self.hst_std, inst.noise_sigma, config.scene
        )
        self.seed_key = [
            int(config.seed),
            _code(inst.name),
            _code(config.view),
            _code(config.split),
        ]
        self.bandset: BandSet | None = None
        self.colours: dict[int, np.ndarray] = {}
        if config.bands is not None:
            self.bandset = make_bandset(
                config.bands,
                psf=config.psf,
                data_dir=config.data_dir,
                gradient=config.colour_gradient,
                gradient_fwhm=config.gradient_fwhm,
            )
            self.colours = {
                r.ident: galaxy_colours(r, config.bands, str(self.catalog.path)) for r in members
            }

    def meta(self) -> dict[str, Any]:
        """Batch metadata written to every file."""
        inst = self.instrument
        return {
            "version": __version__,
            "seed": int(self.config.seed),
            "seed_key": self.seed_key,
            "view": self.config.view,
            "split": self.config.split,
            "instrument": inst.name,
            "band": inst.band,
            "pixel_scale": inst.pixel_scale,
            "zeropoint": inst.zeropoint,
            "bunit": inst.bunit,
            "noise_sigma": inst.noise_sigma,
            "noise_origin": inst.noise_origin,
            "psf_origin": inst.psf_origin,
            "truth_fwhm": self.truth_fwhm,
            "size": self.size,
            "catalog": str(self.catalog.path),
            "catalog_fingerprint": self.catalog.fingerprint,
            "split_origin": self.catalog.split_origin,
            "config": self.config.to_dict(),
            **(self._band_meta() if self.bandset is not None else {}),
        }

    def _band_meta(self) -> dict[str, Any]:
        bs = self.bandset
        assert bs is not None
        return {
            "bands": list(bs.bands),
            "filters": list(bs.filters),
            "band": ",".join(bs.filters),
            "band_sigmas": [float(v) for v in bs.sigmas],
            "noise_sigma": float(bs.sigmas[bs.reference]),
            "noise_origin": bs.noise_origin,
            "psf_origin": bs.psf_origin,
            "colour_gradient": bs.gradient,
            "gradient_fwhm": bs.gradient_fwhm,
        }

    def psf_stack(self) -> np.ndarray:
        """The batch's PSFs as ``(P, C, kh, kw)`` (C = 1 for a single band)."""
        if self.bandset is not None:
            return self.bandset.psfs[None]
        return self.instrument.psfs[:, None]

    def source_colours(self, rng: np.random.Generator, specs: list[SourceSpec]) -> np.ndarray:
        """``(len(specs), C)`` flux ratios to i of the sources (multi-band batches).

        COSMOS galaxies: their catalogue colours; stars: the stellar locus; Sersic
        galaxies: the colours of a galaxy of the split drawn uniformly (from ``rng``).
        """
        bs = self.bandset
        assert bs is not None
        idents = sorted(self.colours)
        out = np.empty((len(specs), len(bs.bands)))
        for k, s in enumerate(specs):
            if s.role == "star":
                out[k] = star_colours(rng, bs.bands)
            elif s.role == "sersic":
                out[k] = self.colours[idents[int(rng.integers(len(idents)))]]
            else:
                out[k] = self.colours[s.ident]
        return out

    def band_images(self, canvas: np.ndarray, colours: np.ndarray, star: bool) -> np.ndarray:
        """``(C, n, n)`` intrinsic band images of one source drawn in i on ``canvas``."""
        bs = self.bandset
        assert bs is not None
        weights = np.zeros(len(bs.bands)) if star else gradient_weights(bs.bands, bs.gradient)
        sigma_px = (
            bs.gradient_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / self.instrument.pixel_scale
        )
        return coloured_images(canvas, colours, weights, sigma_px)

    def centrals(self) -> list[PoolGalaxy]:
        """Galaxies that may be central under the current caps."""
        scene = self.config.scene
        return [p for p in self.pool if central_m_min(p, scene) <= scene.central_mag_max]

    def rng(self, index: int) -> np.random.Generator:
        """The generator of cutout ``index``."""
        return np.random.default_rng(np.random.SeedSequence([*self.seed_key, int(index)]))

    def plan(self, index: int) -> tuple[np.random.Generator, int, list[SourceSpec]]:
        """The first draws of cutout ``index``: its generator (advanced), PSF index and galaxies.

        Cheap (no rendering): use it to inspect which galaxies a batch would contain.
        """
        inst = self.instrument
        rng = self.rng(index)
        psf_index = int(rng.integers(len(inst.psfs))) if len(inst.psfs) > 1 else 0
        specs = sample_scene(
            rng,
            self.config.view,
            self.pool,
            self.size,
            inst.pixel_scale,
            inst.noise_sigma,
            inst.zeropoint,
            self.config.scene,
        )
        return rng, psf_index, specs

    def cutout(self, index: int) -> Cutout:
        """Make cutout ``index`` (deterministic given the configuration).

        Parameters
        ----------
        index
            Cutout index (>= 0).

        Returns
        -------
        Cutout
        """
        if self.bandset is not None:
            return self._band_cutout(index)
        cfg, inst = self.config, self.instrument
        rng, psf_index, specs = self.plan(index)
        sigma = cutout_noise_sigma(specs, inst.noise_sigma, cfg.scene)
        if sigma != inst.noise_sigma:
            # Recorded ratios are relative to the noise this cutout actually has.
            specs = [
                replace(s, hst_noise_ratio=s.hst_noise_ratio * inst.noise_sigma / sigma)
                for s in specs
            ]
        psf = inst.psfs[psf_index]
        noise_field = None
        if inst.correlated_noise is not None:
            field_ = galsim.Image(self.size, self.size, scale=inst.pixel_scale, dtype=np.float64)
            field_.addNoise(
                inst.correlated_noise.copy(rng=galsim.BaseDeviate(int(rng.integers(1, 2**31 - 1))))
            )
            noise_field = field_.array
        scene = render_scene(
            rng,
            cfg.view,
            specs,
            self.templates,
            psf,
            self.size,
            inst.pixel_scale,
            inst.noise_sigma,
            cfg.scene,
            noise_field,
            cutout_sigma=sigma,
            truth_fwhm=self.truth_fwhm,
        )
        image = scene.image.copy()
        maskbits = np.zeros(image.shape, dtype=np.int32)
        defects: list[str] = []
        if rng.random() < cfg.mask_fraction:
            defects = add_defects(rng, image, maskbits, sigma)
        central = next((s.ident for s in specs if s.role == "central"), -1)
        return Cutout(
            index=int(index),
            image=image.astype(np.float32),
            variance=np.full(image.shape, sigma**2, dtype=np.float32),
            maskbits=maskbits,
            valid=(maskbits & bad_bits()) == 0,
            psf=psf,
            psf_index=psf_index,
            truth={k: v.astype(np.float32) for k, v in scene.truth.items()},
            sources=specs,
            central_ident=int(central),
            defects=defects,
            background=scene.background,
            noise_sigma=sigma,
        )

    def _band_cutout(self, index: int) -> Cutout:
        """A multi-band cutout: the single-band scene, coloured per source, per-band PSF/noise."""
        cfg, inst, bs = self.config, self.instrument, self.bandset
        assert bs is not None
        rng, psf_index, specs = self.plan(index)
        sigma = cutout_noise_sigma(specs, inst.noise_sigma, cfg.scene)
        factor = sigma / inst.noise_sigma
        if factor != 1.0:
            specs = [replace(s, hst_noise_ratio=s.hst_noise_ratio / factor) for s in specs]
        colours = self.source_colours(rng, specs)
        n_b, size = len(bs.bands), self.size
        pad = max(bs.psfs.shape[-2:]) // 2
        n = size + 2 * pad
        crop = (slice(None), slice(pad, pad + size), slice(pad, pad + size))
        galaxy = np.zeros((n_b, n, n))
        sky = np.zeros((n_b, n, n))
        for spec, col in zip(specs, colours, strict=True):
            canvas = np.zeros((n, n))
            placement = _shifted(spec.placement, pad)
            if spec.role == "star":
                draw_point(canvas, placement)
            elif spec.role == "sersic":
                draw_sersic(
                    canvas, placement, spec.sersic_n, spec.hlr, inst.pixel_scale, self.truth_fwhm
                )
            else:
                draw_source(canvas, self.templates[spec.ident], placement, inst.pixel_scale)
            target = galaxy if spec.role == "central" else sky
            target += self.band_images(canvas, col, spec.role == "star")
        # Sky-subtraction residual per band, in units of that band's noise (a plane: the
        # unit-sum PSF leaves it unchanged away from the canvas edge).
        b0 = cfg.scene.background_sigma * bs.sigmas * rng.standard_normal(n_b)
        grad = cfg.scene.background_gradient * bs.sigmas[:, None] * rng.standard_normal((n_b, 2))
        coords = (np.arange(n) - pad - 0.5 * (size - 1)) / size
        sky += (
            b0[:, None, None]
            + grad[:, 0, None, None] * coords[None, None, :]
            + grad[:, 1, None, None] * coords[None, :, None]
        )
        truth: dict[str, np.ndarray] = {}
        if cfg.view == "galaxies":
            truth["galaxy"] = galaxy[crop].copy()
            truth["galaxy_conv"] = _convolve_bands(galaxy, bs.psfs)[crop]
        truth["sky"] = sky[crop].copy()
        truth["sky_conv"] = _convolve_bands(sky, bs.psfs)[crop]
        sigmas = bs.sigmas * factor
        truth["noise"] = sigmas[:, None, None] * rng.standard_normal((n_b, size, size))
        image = truth["sky_conv"] + truth["noise"]
        if "galaxy_conv" in truth:
            image = image + truth["galaxy_conv"]
        maskbits = np.zeros(image.shape, dtype=np.int32)
        defects: list[str] = []
        # Defects of each band drawn on their own: a coadd's bands come from other exposures.
        for b in range(n_b):
            if rng.random() < cfg.mask_fraction:
                defects += add_defects(rng, image[b], maskbits[b], float(sigmas[b]))
        central = next((s.ident for s in specs if s.role == "central"), -1)
        return Cutout(
            index=int(index),
            image=image.astype(np.float32),
            variance=np.broadcast_to(sigmas[:, None, None] ** 2, image.shape).astype(np.float32),
            maskbits=maskbits,
            valid=(maskbits & bad_bits()) == 0,
            psf=bs.psfs,
            psf_index=psf_index,
            truth={k: v.astype(np.float32) for k, v in truth.items()},
            sources=specs,
            central_ident=int(central),
            defects=defects,
            background=(float(b0[bs.reference]), *map(float, grad[bs.reference])),
            noise_sigma=float(sigmas[bs.reference]),
            bands=bs.bands,
            band_sigmas=sigmas,
            source_fluxes=np.array([s.placement.flux for s in specs])[:, None] * colours,
        )

    def hst_noise_summary(self) -> dict[str, Any]:
        """Per-galaxy stamp-noise ratios at catalogue flux and the caps they imply."""
        sigma = self.instrument.noise_sigma
        rows = []
        for p in self.pool:
            rec = p.template.record
            ratio = p.hst_std / sigma if math.isfinite(p.hst_std) else None
            rows.append(
                {
                    "ident": rec.ident,
                    "catalog_mag": rec.mag,
                    "ratio_at_catalog_mag": ratio,
                    "brightest_mag": p.m_min,
                    "central": p.m_min <= self.config.scene.central_mag_max,
                }
            )
        return {
            "noise_sigma": sigma,
            "max_ratio": self.config.scene.max_hst_noise_ratio,
            "galaxies": rows,
        }

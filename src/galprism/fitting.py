"""``galprism fit``: learn priors from survey cutouts, described by a TOML file.

A fit file names the sources, the prior's grid and the views::

    name = "my-survey"
    sources = ["galaxy", "sky"]     # order of the prior set
    size = 48                       # prior image side (pixels)
    pixel_scale = 0.168             # arcsec per pixel of the prior grid
    arrangement = "stagewise"       # or "joint"
    support = {galaxy = "auto:20"}  # optional: at separation, galaxy is zero beyond (at most) 20 px

    [[views]]
    name = "sky"
    sources = ["sky"]
    data = "train/sky/hsc_sky_train.h5"   # an HDF5 batch of `galprism simulate` ...

    [[views]]
    name = "galaxies"
    sources = ["galaxy", "sky"]
    files = ["cutouts/*.fits"]            # ... or FITS cutouts in separate's convention

    [em]            # any EMConfig setting (galprism.em.EMConfig) but the sampler's
    diffusion_laps = 4

    [em.sampler]    # the E-step sampler: SamplerConfig settings (galprism.diffusion)
    method = "ddim"
    steps = [16, 32]        # a list is a schedule over the laps of each phase (see below)
    cg_iterations = 1

    [network]       # U-Net settings (galprism.nn.UNet)
    widths = [16, 32, 64]

Paths are relative to the fit file. Every observation keeps its own PSF, mask and noise
in its operator, so the priors are of the intrinsic (PSF-free) sources. ``support`` is
written into the prior folder's ``prior.json`` and used by ``galprism separate``; the
E-steps of the fit do not use it (the priors are learned unconfined).

``[em.sampler]`` takes :class:`~galprism.diffusion.SamplerConfig`'s settings ``method``,
``steps``, ``corrections``, ``tau``, ``eta``, ``cg_iterations``, ``trust`` and ``particles``;
those left out keep EM's defaults (:data:`galprism.em.config.ESTEP_SAMPLER`, not those of a
separation). ``steps`` and ``corrections`` may be lists ``[a, b, ..., z]``: ``a`` for lap 0
of each phase of each stage, ``b`` for lap 1, ..., ``z`` for every later lap
(``EMConfig.step_schedule`` / ``correction_schedule``). A fit file that gives these settings
directly in ``[em]`` (the older layout) is refused, naming the key.
"""

from __future__ import annotations

import glob
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .amplitude import Amplitude, check_amplitude
from .diffusion import SamplerConfig
from .em import EMConfig, EMResult, View, run_em
from .em.config import estep_sampler_settings
from .errors import ConfigError, InputError
from .operators import Composition, Convolve, Mask, Scale, SourceSum
from .support import check_support

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ViewSpec", "FitSpec", "load_fit_spec", "load_view", "fit_priors"]


@dataclass
class ViewSpec:
    """One view of a fit: its sources and where its cutouts are."""

    name: str
    sources: list[str]
    data: Path | None = None
    files: list[Path] = field(default_factory=list)
    limit: int = 0


@dataclass
class FitSpec:
    """A whole fit: sources, prior grid, views and EM settings."""

    name: str
    sources: list[str]
    size: int
    views: list[ViewSpec]
    pixel_scale: float | None = None
    zeropoint: float | None = None
    arrangement: str = "stagewise"
    flux_scale: float | None = None
    method: str = "diffusion"
    em: dict[str, Any] = field(default_factory=dict)
    network: dict[str, Any] = field(default_factory=dict)
    asvd: dict[str, Any] = field(default_factory=dict)
    source_file: Path | None = None
    support: dict[str, Any] = field(default_factory=dict)
    amplitude: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("diffusion", "asvd"):
            raise ConfigError(
                f"fit {self.name!r}: method must be 'diffusion' or 'asvd', got {self.method!r}"
            )
        if not self.views:
            raise ConfigError(f"fit {self.name!r}: no views given")
        for v in self.views:
            for s in v.sources:
                if s not in self.sources:
                    raise ConfigError(
                        f"view {v.name!r}: names unknown source {s!r} (sources: "
                        f"{', '.join(self.sources)})"
                    )
            if v.data is None and not v.files:
                raise ConfigError(f"view {v.name!r}: give `data` (HDF5) or `files` (FITS)")
        self.support = check_support(self.support, self.sources, f"fit {self.name!r}")
        self.amplitude = check_amplitude(self.amplitude, self.sources, f"fit {self.name!r}")


def load_fit_spec(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> FitSpec:
    """Read a fit TOML file; ``overrides`` replace top-level settings (CLI options).

    Raises
    ------
    ConfigError
        Unreadable TOML, missing or unknown settings, views naming unknown sources.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such fit file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    base = path.parent
    known = {
        "name",
        "sources",
        "size",
        "pixel_scale",
        "zeropoint",
        "arrangement",
        "flux_scale",
        "method",
        "views",
        "em",
        "network",
        "asvd",
        "support",
        "amplitude",
    }
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}")
    for key in ("sources", "size", "views"):
        if key not in raw:
            raise ConfigError(f"{path}: missing setting {key!r}")
    views = []
    for v in raw["views"]:
        if "name" not in v or "sources" not in v:
            raise ConfigError(f"{path}: every [[views]] needs `name` and `sources`")
        files: list[Path] = []
        for pattern in v.get("files", []):
            matches = sorted(glob.glob(str(base / pattern)))
            if not matches:
                raise ConfigError(f"{path}: view {v['name']!r}: no file matches {pattern!r}")
            files += [Path(m) for m in matches]
        views.append(
            ViewSpec(
                v["name"],
                list(v["sources"]),
                base / v["data"] if "data" in v else None,
                files,
                int(v.get("limit", 0)),
            )
        )
    return FitSpec(
        name=str(raw.get("name", path.stem)),
        sources=list(raw["sources"]),
        size=int(raw["size"]),
        views=views,
        pixel_scale=raw.get("pixel_scale"),
        zeropoint=raw.get("zeropoint"),
        arrangement=raw.get("arrangement", "stagewise"),
        flux_scale=raw.get("flux_scale"),
        method=raw.get("method", "diffusion"),
        em=dict(raw.get("em", {})),
        network=dict(raw.get("network", {})),
        asvd=dict(raw.get("asvd", {})),
        source_file=path,
        support=raw.get("support", {}),
        amplitude=raw.get("amplitude", {}),
    )


@dataclass
class ViewData:
    """A view's data in the data's own flux units, before normalisation."""

    spec: ViewSpec
    y: torch.Tensor
    noise_var: torch.Tensor
    valid: torch.Tensor
    psf: torch.Tensor  # (N, C, kh, kw)
    pixel_scale: float | None
    zeropoint: float | None
    bunit: str | None
    bands: tuple[str, ...] | None = None


def _load_hdf5(spec: ViewSpec) -> ViewData:
    path = spec.data
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as exc:
        raise InputError(f"{path}: cannot open HDF5 ({exc})") from exc
    with f:
        for key in ("images", "variance", "mask", "psf", "psf_index"):
            if key not in f:
                raise InputError(
                    f"{path}: missing dataset {key!r} (expected a `galprism simulate` HDF5 batch)"
                )
        n = f["images"].shape[0] if not spec.limit else min(spec.limit, f["images"].shape[0])
        y = torch.from_numpy(np.asarray(f["images"][:n], dtype=np.float32))
        var = torch.from_numpy(np.asarray(f["variance"][:n], dtype=np.float32))
        valid = torch.from_numpy(np.asarray(f["mask"][:n], dtype=bool))
        psfs = np.asarray(f["psf"], dtype=np.float64)
        psf = torch.from_numpy(psfs[np.asarray(f["psf_index"][:n])])
        attrs = dict(f.attrs)
    bands = _hdf5_bands(attrs, y.shape[1], path)
    return ViewData(
        spec,
        y,
        var,
        valid,
        psf,
        _opt_float(attrs.get("pixel_scale")),
        _opt_float(attrs.get("zeropoint")),
        str(attrs["bunit"]) if "bunit" in attrs else None,
        bands,
    )


def _hdf5_bands(attrs: dict[str, Any], channels: int, path: Path | None) -> tuple[str, ...] | None:
    """Band names of an HDF5 batch: its ``bands`` attribute (``"g,r,i"``), else None.

    Raises
    ------
    InputError
        If the attribute names another number of bands than the images have.
    """
    raw = attrs.get("bands")
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode()
    names = (
        [b.strip() for b in raw.split(",")]
        if isinstance(raw, str)
        else [b.decode() if isinstance(b, bytes) else str(b) for b in np.atleast_1d(raw)]
    )
    if len(names) != channels:
        raise InputError(
            f"{path}: attribute bands names {len(names)} band(s) but the images have {channels}"
        )
    return tuple(names)


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _load_fits(
    spec: ViewSpec, size: int, pixel_scale: float | None, zeropoint: float | None
) -> ViewData:
    from .io.read import read_cutout  # local: FITS reading pulls in astropy's WCS machinery

    files = spec.files[: spec.limit] if spec.limit else spec.files
    obs = []
    for p in files:
        o = read_cutout(p)
        f = o.grid_factor(pixel_scale)
        if f != 1:
            raise ConfigError(
                f"{p}: pixel scale differs from the prior grid's; fit on cutouts at the prior's "
                "scale"
            )
        obs.append(o.crop(None, (size, size)))
    y = np.stack([o.image * o.flux_factor_to(zeropoint) for o in obs])
    var = np.stack(
        [np.where(o.valid, o.variance, 1.0) * o.flux_factor_to(zeropoint) ** 2 for o in obs]
    )
    valid = np.stack([o.valid for o in obs])
    kh = max(o.psf.shape[-2] for o in obs)
    kw = max(o.psf.shape[-1] for o in obs)
    psf = np.stack([_pad(o.psf, kh, kw) for o in obs])
    return ViewData(
        spec,
        torch.from_numpy(y).float(),
        torch.from_numpy(var).float(),
        torch.from_numpy(valid),
        torch.from_numpy(psf),
        pixel_scale,
        zeropoint,
        obs[0].bunit,
        _fits_bands(files, int(y.shape[1])),
    )


def _fits_bands(files: Sequence[Path], channels: int) -> tuple[str, ...] | None:
    """Band names of multi-band FITS cubes (``BANDS`` / ``FILTERn``); None for one band.

    Raises
    ------
    InputError
        If two files name their bands differently.
    """
    if channels < 2:
        return None
    from astropy.io import fits

    from .io.read import band_names

    names: tuple[str, ...] | None = None
    for p in files:
        with fits.open(p) as h:
            sci = h["SCI"].header if "SCI" in h else h[0].header
            found = band_names(channels, sci, h[0].header)
        here = tuple(found) if found else None
        if p == files[0]:
            names = here
        elif here != names:
            raise InputError(
                f"{p}: bands {here} differ from {names} of {files[0]} in the same view"
            )
    return names


def _pad(psf: np.ndarray, kh: int, kw: int) -> np.ndarray:
    ph, pw = (kh - psf.shape[-2]) // 2, (kw - psf.shape[-1]) // 2
    return np.pad(psf, [(0, 0), (ph, kh - psf.shape[-2] - ph), (pw, kw - psf.shape[-1] - pw)])


def load_view(spec: ViewSpec, fit: FitSpec) -> ViewData:
    """Read a view's cutouts (HDF5 or FITS), checking they match the prior grid."""
    data = (
        _load_hdf5(spec)
        if spec.data is not None
        else _load_fits(spec, fit.size, fit.pixel_scale, fit.zeropoint)
    )
    if data.y.shape[-2:] != (fit.size, fit.size):
        raise ConfigError(
            f"view {spec.name!r}: cutouts are {tuple(data.y.shape[-2:])} pixels but the prior is "
            f"{fit.size}x{fit.size}"
        )
    if (
        fit.pixel_scale is not None
        and data.pixel_scale is not None
        and not math.isclose(data.pixel_scale, fit.pixel_scale, rel_tol=1e-3)
    ):
        raise ConfigError(
            f'view {spec.name!r}: data at {data.pixel_scale}"/px but the prior grid is '
            f'{fit.pixel_scale}"/px'
        )
    if data.y.shape[0] == 0:
        raise ConfigError(f"view {spec.name!r}: no cutouts")
    bad = ~torch.isfinite(data.y) & data.valid
    if bad.any():
        raise InputError(f"view {spec.name!r}: {int(bad.sum())} unmasked non-finite pixels")
    return data


def data_bands(views: Sequence[ViewData]) -> tuple[int, tuple[str, ...] | None]:
    """The number of bands ``C`` shared by every view and their names (None if unnamed).

    Raises
    ------
    ConfigError
        If the views have different numbers of bands or name them differently.
    """
    channels = {int(v.y.shape[1]) for v in views}
    if len(channels) != 1:
        detail = ", ".join(f"{v.spec.name!r}: {int(v.y.shape[1])}" for v in views)
        raise ConfigError(f"fit: the views have different numbers of bands ({detail})")
    named = {v.bands for v in views if v.bands is not None}
    if len(named) > 1:
        detail = ", ".join(f"{v.spec.name!r}: {','.join(v.bands or ())}" for v in views)
        raise ConfigError(f"fit: the views name their bands differently ({detail})")
    return channels.pop(), (named.pop() if named else None)


def flux_scale_of(views: Sequence[ViewData]) -> float:
    """Per-dataset flux unit: the 99.9th percentile of |data| over valid pixels.

    Priors then see values of order one (noise well below one), the regime the
    noise schedule defaults are set for.
    """
    vals = torch.cat([v.y[v.valid].abs().flatten() for v in views])
    if vals.numel() == 0:
        raise InputError("fit: no valid pixel in any view")
    k = max(1, int(0.999 * vals.numel()))
    scale = float(vals.kthvalue(k).values)
    if not scale > 0:
        raise InputError("fit: all valid pixels are zero")
    return scale


def to_view(
    data: ViewData, flux_scale: float, amplitude: Mapping[str, Amplitude] | None = None
) -> View:
    """The EM view of normalised data: mask o PSF per cutout, one term per source.

    A source named in ``amplitude`` is a normalised source (:mod:`galprism.amplitude`):
    its term is ``mask o PSF o a_i`` with ``a_i`` measured on cutout ``i``'s data.
    """
    shape = tuple(data.y.shape[1:])
    y = torch.where(data.valid, data.y, torch.zeros_like(data.y)) / flux_scale
    var = torch.where(data.valid, data.noise_var, torch.ones_like(data.noise_var))
    var = torch.where(data.valid, var / flux_scale**2, var)
    bad = data.valid & ~(var > 0)
    if bad.any():
        raise InputError(
            f"view {data.spec.name!r}: {int(bad.sum())} valid pixels have variance <= 0"
        )
    op = Composition(
        [
            Mask(data.valid, shape=shape),
            Convolve(data.psf, shape, name=f"view {data.spec.name} PSF"),
        ]
    )
    terms, amplitudes = [], {}
    for source in data.spec.sources:
        spec = (amplitude or {}).get(source)
        if spec is None:
            terms.append(op)
            continue
        amplitudes[source] = spec.measure(y, var, data.valid)
        terms.append(Composition([op, Scale(amplitudes[source], shape)]))
    return View(data.spec.name, data.spec.sources, y, var, SourceSum(terms), data.valid, amplitudes)


def em_config(
    fit: FitSpec,
    flux_scale: float,
    bunit: str | None,
    channels: int = 1,
    bands: Sequence[str] | None = None,
) -> EMConfig:
    """The :class:`EMConfig` of ``fit`` (its ``[em]`` table, ``[em.sampler]`` included).

    Raises
    ------
    ConfigError
        On an unknown or invalid setting, or a sampler setting in the older layout.

    ``channels`` is the number of bands of the data (the priors' ``C``), ``bands`` their
    names (recorded in the prior's frame).
    """
    where = f"fit {fit.name!r}" if fit.source_file is None else str(fit.source_file)
    settings = dict(fit.em)
    former = EMConfig.former_key(settings)
    if former is not None:
        moved = "method" if former == "sampler" else former
        raise ConfigError(
            f"{where}: [em] {former} has moved to the [em.sampler] table (as {moved})"
        )
    misplaced = sorted(set(settings) & {f.name for f in fields(SamplerConfig)})
    if misplaced:
        raise ConfigError(f"{where}: [em] {misplaced[0]} belongs in the [em.sampler] table")
    for name in ("step_schedule", "correction_schedule"):
        if name in settings:
            raise ConfigError(
                f"{where}: [em] {name}: give a schedule as a list in [em.sampler] "
                f"({'steps' if name == 'step_schedule' else 'corrections'} = [...])"
            )
    table = settings.pop("sampler", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [em] sampler must be the [em.sampler] table")
    settings.update(estep_sampler_settings(table, f"{where}: [em.sampler]"))
    network = dict(fit.network)
    settings.setdefault("backbone", "unet")
    settings.setdefault("backbone_kwargs", network)
    settings.setdefault("gaussian_rank", 32)
    settings.setdefault("arrangement", fit.arrangement)
    settings["metadata"] = {
        "name": fit.name,
        "pixel_scale": fit.pixel_scale,
        "zeropoint": fit.zeropoint,
        "bunit": bunit,
        "flux_scale": flux_scale,
        "support": {k: v.to_json() for k, v in fit.support.items()},
        "amplitude": {k: v.to_json() for k, v in fit.amplitude.items()},
        "training": {
            "fit_file": str(fit.source_file) if fit.source_file else None,
            "views": {
                v.name: {
                    "sources": v.sources,
                    "data": str(v.data) if v.data else [str(f) for f in v.files[:3]],
                }
                for v in fit.views
            },
        },
    }
    if bands is not None:
        settings["metadata"]["bands"] = list(bands)
    try:
        return EMConfig(sources=fit.sources, shape=[channels, fit.size, fit.size], **settings)
    except TypeError as exc:
        raise ConfigError(f"{where}: bad [em] setting ({exc})") from exc
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def fit_priors(
    fit: FitSpec,
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    resume: bool = True,
    progress: bool | None = None,
) -> EMResult:
    """Learn the priors of ``fit`` by EM into ``run_dir`` (see :mod:`galprism.em`)."""
    em_config(fit, 1.0, None)  # bad [em] settings fail before minutes of reading data
    data = [load_view(v, fit) for v in fit.views]
    zps = {d.zeropoint for d in data} - {None}
    if fit.zeropoint is None and len(zps) == 1:
        fit.zeropoint = zps.pop()
    if fit.pixel_scale is None:
        scales = {d.pixel_scale for d in data} - {None}
        fit.pixel_scale = scales.pop() if len(scales) == 1 else None
    channels, bands = data_bands(data)
    flux_scale = fit.flux_scale or flux_scale_of(data)
    views = [to_view(d, flux_scale, fit.amplitude) for d in data]
    config = em_config(fit, flux_scale, data[0].bunit, channels, bands)
    result = run_em(views, config, run_dir, device=device, resume=resume, progress=progress)
    return result


def fit_asvd_prior(
    fit: FitSpec,
    out_dir: str | os.PathLike,
    *,
    rank_clean: int = 16,
    rank_unseen: int = 8,
    tau: float | str = "auto",
    overwrite: bool = False,
):
    """Fit adversarial-SVD bases from a clean-source view and a mixed view.

    The clean view holds one source, the mixed view that source and one more (the
    unseen source). Only cutouts without masked pixels are used: the bases are fitted
    to whole images. Returns the saved :class:`~galprism.asvd.ASVDModel`.
    """
    from .asvd import fit_asvd  # local: only this method needs it

    if fit.support:
        raise ConfigError(
            f"fit {fit.name!r}: `support` applies to diffusion and Gaussian priors, not to "
            "--method asvd"
        )
    data = [load_view(v, fit) for v in fit.views]
    clean = [d for d in data if len(d.spec.sources) == 1]
    mixed = [d for d in data if len(d.spec.sources) == 2]
    if len(clean) != 1 or len(mixed) != 1 or clean[0].spec.sources[0] not in mixed[0].spec.sources:
        raise ConfigError(
            "fit --method asvd: needs one view with a single (clean) source and one view with "
            "that source plus one more"
        )
    known = clean[0].spec.sources[0]
    unseen = next(s for s in mixed[0].spec.sources if s != known)

    def whole(d: ViewData) -> torch.Tensor:
        keep = d.valid.flatten(1).all(1)
        if not keep.any():
            raise InputError(
                f"view {d.spec.name!r}: every cutout has masked pixels; asvd needs whole cutouts"
            )
        return d.y[keep].to(torch.float64)

    zeropoint = fit.zeropoint if fit.zeropoint is not None else clean[0].zeropoint
    model = fit_asvd(
        whole(clean[0]),
        whole(mixed[0]),
        rank_clean,
        rank_unseen,
        tau,
        sources=(known, unseen),
        projection="none",
        split="components",
        pixel_scale=fit.pixel_scale or clean[0].pixel_scale,
        zeropoint=zeropoint,
        bunit=clean[0].bunit,
    )
    model.save(out_dir, overwrite=overwrite)
    return model

"""``galprism simulate``: a thin layer over :func:`galprism.simulate.simulate_batch`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from ..errors import ConfigError
from ..simulate.cosmos import SPLIT_FILE_FORMAT, SPLIT_SEED
from ..simulate.data import COSMOS_SOURCES, ENV_VAR, HSC_SOURCES
from ._errors import overwrite_hint

__all__ = ["simulate"]


class _Progress:
    """A rich progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        self.task = None
        if enabled and sys.stderr.isatty():
            from ._progress import stderr_bar

            self.bar = stderr_bar()
            self.task = self.bar.add_task("simulate", total=total)

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _check_data(catalog: Path | None, data_dir: Path | None, instrument: str) -> None:
    """Say which option is missing before any work, in the command line's own words."""
    if data_dir is not None or os.environ.get(ENV_VAR):
        return
    if catalog is None:
        raise ConfigError(
            f"no COSMOS catalogue given: pass --catalog FILE (a GalSim RealGalaxyCatalog) or "
            f"--data-dir DIR, or set ${ENV_VAR}; get a catalogue from {COSMOS_SOURCES}"
        )
    if instrument == "hsc":
        raise ConfigError(
            "--instrument hsc takes its PSF and noise from hsc/hsc_cosmos_35.npz and multiview/: "
            f"pass --data-dir DIR or set ${ENV_VAR} to their folder (from {HSC_SOURCES})"
        )


#: options of the cutout views only, and of the scenes view only (parameter -> flag)
_CUTOUT_ONLY = {
    "hdf5": "--hdf5",
    "no_fits": "--no-fits",
    "central_noise": "--central-noise",
    "center_exclusion": "--center-exclusion",
    "star_density": "--star-density",
    "bright_sersic": "--bright-sersic",
    "central_mag_max": "--central-mag-max",
}
_SCENES_ONLY = {
    "n_galaxies": "--galaxies",
    "galaxy_mags": "--galaxy-mags",
    "star_fraction": "--star-fraction",
    "inner_fraction": "--inner-fraction",
}


def _check_view_options(ctx: click.Context, view: str) -> None:
    """Refuse an option given on the command line that the chosen view would ignore."""
    ignored = _CUTOUT_ONLY if view == "scenes" else _SCENES_ONLY
    for name, flag in ignored.items():
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{flag} does not apply to --view {view}")


def _band_settings(kw: dict[str, object]) -> dict[str, object]:
    """The config fields of ``--bands`` / ``--colour-gradient``, checked in flag names."""
    if kw["bands"] is None:
        if kw["colour_gradient"] is not None:
            raise click.UsageError("--colour-gradient applies only with --bands")
        return {}
    from ..simulate.bands import parse_bands

    try:
        bands = parse_bands(str(kw["bands"]))
    except ConfigError as exc:
        raise click.UsageError(f"--bands {kw['bands']}: {exc}") from None
    if kw["instrument"] != "hsc":
        raise click.UsageError("--bands needs --instrument hsc (the real HSC PSFs and noise)")
    if kw["noise_sigma"] is not None:
        raise click.UsageError(
            "--noise-sigma does not apply with --bands: each band's noise is measured on the "
            "real HSC data"
        )
    gradient = 0.3 if kw["colour_gradient"] is None else float(kw["colour_gradient"])
    return {"bands": bands, "colour_gradient": gradient}


def _scenes(kw: dict[str, object]) -> None:
    """``--view scenes``: several galaxies and stars per image, per-source truth."""
    from dataclasses import replace

    from ..simulate import SceneConfig
    from ..simulate.fields import ScenesConfig
    from ..simulate.fields_batch import scene_summary, simulate_scenes

    lo, hi = kw["n_galaxies"]
    if lo > hi:
        raise click.UsageError(f"--galaxies {lo} {hi}: the first must not exceed the second")
    m_lo, m_hi = kw["galaxy_mags"]
    if not m_lo <= m_hi:
        raise click.UsageError(f"--galaxy-mags {m_lo} {m_hi}: give the brightest first")
    scene = replace(
        SceneConfig(),
        max_hst_noise_ratio=kw["max_hst_noise_ratio"],
        star_mag_range=tuple(kw["star_mags"]),
    )
    config = ScenesConfig(
        split=kw["split"],
        n=kw["n"],
        size=kw["size"],
        instrument=kw["instrument"],
        psf=kw["psf"],
        noise_sigma=kw["noise_sigma"],
        truth_fwhm=kw["truth_fwhm"],
        seed=kw["seed"],
        start=kw["start"],
        mask_fraction=0.0 if kw["mask_fraction"] is None else kw["mask_fraction"],
        scene=scene,
        data_dir=str(kw["data_dir"]) if kw["data_dir"] else None,
        catalog=str(kw["catalog"]) if kw["catalog"] else None,
        split_seed=kw["split_seed"],
        split_file=str(kw["split_file"]) if kw["split_file"] else None,
        n_galaxies=(int(lo), int(hi)),
        galaxy_mags=(float(m_lo), float(m_hi)),
        star_fraction=kw["star_fraction"],
        inner_fraction=kw["inner_fraction"],
        **_band_settings(kw),
    )
    progress = _Progress(not kw["quiet"], config.n)
    try:
        with overwrite_hint():
            result = simulate_scenes(
                config,
                kw["output_dir"],
                prefix=kw["prefix"],
                overwrite=kw["overwrite"],
                progress=progress,
            )
    finally:
        progress.stop()
    summary = scene_summary(result)
    if kw["as_json"]:
        click.echo(json.dumps(summary))
    if not kw["quiet"]:
        click.echo(
            f"galprism simulate: {result.n_written} scenes ({config.split} galaxies) in "
            f"{result.seconds:.1f} s ({summary['scenes_per_minute']}/min) -> "
            f"{summary['output_dir']}",
            err=True,
        )
    for index, error in result.failed:
        click.echo(f"galprism simulate: scene {index} failed: {error}", err=True)
    if result.failed:
        sys.exit(1)


@click.command("simulate")
@click.option(
    "--view",
    type=click.Choice(["sky", "galaxies", "scenes"]),
    required=True,
    help="sky: neighbours and background only; galaxies: plus a central galaxy; scenes: "
    "fields of several galaxies and stars with per-source truth.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "test"]),
    required=True,
    help="Which COSMOS galaxies (by object) may appear; test is for evaluation only.",
)
@click.option(
    "-n", "--n", "n", type=click.IntRange(min=1), required=True, help="Number of cutouts."
)
@click.option(
    "--size",
    type=click.IntRange(8, 4096),
    default=None,
    help="Cutout side in pixels [default: 48 for hsc, 256 for hst; scenes: 96 for hsc, "
    "512 for hst].",
)
@click.option(
    "--instrument",
    type=click.Choice(["hsc", "hst"]),
    default="hsc",
    show_default=True,
    help='HSC-like i band (0.168"/px) or HST ACS F814W (0.03"/px).',
)
@click.option(
    "--psf",
    "psf",
    type=click.Choice(["npz", "multiview"]),
    default="npz",
    show_default=True,
    help="HSC PSF: hsc_cosmos_35.npz i band (43x43) or multiview/PSF_HSC.fits i band (31x31); "
    "with --bands each band's kernel of that file.",
)
@click.option(
    "--bands",
    default=None,
    metavar="B,B,...",
    help="Simulate several HSC bands at once, e.g. g,r,i,z,y: each galaxy coloured by its "
    "catalogue magnitudes, each band with its real HSC PSF and noise; FITS cubes and "
    "(N, C, H, W) HDF5 [default: the single i-like band].",
)
@click.option(
    "--colour-gradient",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help='With --bands: fraction of the g-band light in a 0.5" smoothed copy (bluer outer '
    "light; r takes about half of it, i, z, y none) [default: 0.3].",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Batch seed; cutout i uses SeedSequence([seed, instrument, view, split, i]).",
)
@click.option(
    "--start",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Index of the first cutout (extend a batch without repeats).",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the FITS files (truth in its truth/ subfolder) and the default HDF5.",
)
@click.option(
    "--hdf5",
    "hdf5",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="HDF5 file of the batch [default: OUTPUT_DIR/<prefix>.h5]; truth goes to <stem>.truth.h5.",
)
@click.option("--no-hdf5", is_flag=True, help="Do not write the HDF5 files.")
@click.option(
    "--no-fits", is_flag=True, help="Write only the HDF5 files (faster for large training sets)."
)
@click.option(
    "--prefix", default=None, help="File name prefix [default: <instrument>_<view>_<split>]."
)
@click.option(
    "--mask-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Fraction of cutouts with bad columns, cosmic rays or edges (masked) "
    "[default: 0.3; scenes: 0].",
)
@click.option(
    "--noise-sigma",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Added noise std in counts (ZP 27) [default: measured on the real HSC i band]; "
    "not with --bands (each band's is measured).",
)
@click.option(
    "--max-hst-noise-ratio",
    type=click.FloatRange(min=0.0, min_open=True),
    default=0.2,
    show_default=True,
    help="Cap on (HST stamp noise)/(added noise) per galaxy; sets how bright each may be (hsc).",
)
@click.option(
    "--central-noise",
    type=click.Choice(["fixed", "raise"]),
    default="fixed",
    show_default=True,
    help="Keep the central's stamp noise low by capping its brightness (fixed) or by raising "
    "that cutout's noise (raise: bright centrals of every galaxy, noisier cutouts).",
)
@click.option(
    "--center-exclusion",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="No neighbour is centered within this many pixels of the cutout center.",
)
@click.option(
    "--star-density",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Stars per arcmin^2 per mag, magnitudes uniform in --star-mags (0: no stars).",
)
@click.option(
    "--star-mags",
    type=(float, float),
    default=(18.0, 26.0),
    show_default=True,
    help="Brightest and faintest star (AB mag).",
)
@click.option(
    "--bright-sersic",
    is_flag=True,
    help="Neighbours brighter than any COSMOS galaxy may be shown (stamp-noise cap) are "
    "GalSim Sersic profiles, so the counts reach their bright end.",
)
@click.option(
    "--central-mag-max",
    type=float,
    default=26.0,
    show_default=True,
    help="Faintest central galaxy (AB mag).",
)
@click.option(
    "--galaxies",
    "n_galaxies",
    type=(click.IntRange(min=1), click.IntRange(min=1)),
    default=(3, 6),
    show_default=True,
    help="scenes: fewest and most galaxies per scene (uniform).",
)
@click.option(
    "--galaxy-mags",
    type=(float, float),
    default=(19.0, 26.0),
    show_default=True,
    help="scenes: brightest and faintest galaxy (AB mag, uniform); brighter than a COSMOS "
    "galaxy may be shown, a galaxy is a Sersic profile.",
)
@click.option(
    "--star-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="scenes: fraction of scenes with one star (magnitude uniform in --star-mags).",
)
@click.option(
    "--inner-fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.6,
    show_default=True,
    help="scenes: sources are placed uniformly in the central square of this fraction of the side.",
)
@click.option(
    "--truth-fwhm",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="FWHM (arcsec) of the kernel that band-limits the truth [default: 0.2 hsc, 0.12 hst].",
)
@click.option(
    "--catalog",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="GalSim RealGalaxyCatalog FITS file, its image and PSF files beside it "
    "[default: the real_galaxy_catalog*.fits in DATA_DIR/cosmos].",
)
@click.option(
    "--split-seed",
    type=click.IntRange(0, 2**63 - 1),
    default=SPLIT_SEED,
    show_default=True,
    help="Seed of the catalogue's train/test split (by object, stratified by magnitude).",
)
@click.option(
    "--split-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Test split given instead of drawn: {SPLIT_FILE_FORMAT}.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Folder holding hsc/hsc_cosmos_35.npz and multiview/ (the HSC-like PSF and noise) "
    f"and, without --catalog, cosmos/ [default: ${ENV_VAR}].",
)
@click.option("--overwrite", is_flag=True, help="Replace existing files (never done otherwise).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object describing the batch on stdout."
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="No summary line on stderr (the progress bar appears only on a terminal).",
)
@click.pass_context
def simulate(ctx: click.Context, **kw: object) -> None:
    """Make realistic survey cutouts from the real HST COSMOS galaxies.

    Writes one FITS file per cutout in galprism separate's input convention (SCI, PSF,
    MASK, VARIANCE), its truth (TRUE_GALAXY, TRUE_SKY, ...) in OUTPUT_DIR/truth/, and
    the same batch as HDF5 for training. The galaxies come from --catalog (GalSim's
    COSMOS sample: galsim_download_cosmos, or BlendingToolKit's COSMOS example set);
    the HSC-like PSF and noise from --data-dir or $GALPRISM_DATA_DIR. See docs/simulate.md.

    --view scenes writes fields of several galaxies and stars instead, each with a
    per-source truth table and truth images in OUTPUT_DIR/truth/ (FITS only).
    """
    from dataclasses import replace

    from ..simulate import SceneConfig, SimulationConfig, simulate_batch

    _check_view_options(ctx, str(kw["view"]))
    if kw["view"] == "scenes":
        _check_data(kw["catalog"], kw["data_dir"], kw["instrument"])
        _scenes(kw)
        return
    if kw["no_hdf5"] and kw["no_fits"]:
        raise click.UsageError("--no-hdf5 and --no-fits together would write nothing")
    if kw["no_hdf5"] and kw["hdf5"] is not None:
        raise click.UsageError("--hdf5 and --no-hdf5 contradict each other")
    _check_data(kw["catalog"], kw["data_dir"], kw["instrument"])
    scene = replace(
        SceneConfig(),
        max_hst_noise_ratio=kw["max_hst_noise_ratio"],
        central_mag_max=kw["central_mag_max"],
        central_noise=kw["central_noise"],
        center_exclusion=kw["center_exclusion"],
        star_density=kw["star_density"],
        star_mag_range=tuple(kw["star_mags"]),
        bright_sersic=kw["bright_sersic"],
    )
    config = SimulationConfig(
        view=kw["view"],
        split=kw["split"],
        n=kw["n"],
        size=kw["size"],
        instrument=kw["instrument"],
        psf=kw["psf"],
        noise_sigma=kw["noise_sigma"],
        truth_fwhm=kw["truth_fwhm"],
        seed=kw["seed"],
        start=kw["start"],
        mask_fraction=0.3 if kw["mask_fraction"] is None else kw["mask_fraction"],
        scene=scene,
        data_dir=str(kw["data_dir"]) if kw["data_dir"] else None,
        catalog=str(kw["catalog"]) if kw["catalog"] else None,
        split_seed=kw["split_seed"],
        split_file=str(kw["split_file"]) if kw["split_file"] else None,
        **_band_settings(kw),
    )
    hdf5 = None if kw["no_hdf5"] else (kw["hdf5"] or "auto")
    progress = _Progress(not kw["quiet"], config.n)
    try:
        with overwrite_hint():
            result = simulate_batch(
                config,
                kw["output_dir"],
                prefix=kw["prefix"],
                write_fits=not kw["no_fits"],
                hdf5=hdf5,
                overwrite=kw["overwrite"],
                progress=progress,
            )
    finally:
        progress.stop()
    summary = result.to_dict()
    if kw["as_json"]:
        click.echo(json.dumps(summary))
    if not kw["quiet"]:
        where = summary["output_dir"] or summary["hdf5"]
        click.echo(
            f"galprism simulate: {result.n_written} {config.view} cutouts ({config.split} "
            f"galaxies) in {result.seconds:.1f} s "
            f"({summary['cutouts_per_minute']}/min) -> {where}",
            err=True,
        )
    for index, error in result.failed:
        click.echo(f"galprism simulate: cutout {index} failed: {error}", err=True)
    if result.failed:
        sys.exit(1)

"""``galprism separate``: a thin layer over :func:`galprism.separate.run_separate`."""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ..diffusion.samplers import METHODS as SAMPLERS
from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError, UsageError
from ..freeform import FreeformConfig
from ..separate import PRECISIONS, SeparateConfig
from ..support import Support
from ._errors import OVERWRITE_HINT, as_usage_error
from ._threads import device_option, set_threads, threads_option

__all__ = [
    "separate",
    "load_prior",
    "parse_support",
    "parse_freeform",
    "device_from_flag",
    "sampler_from_flags",
    "SAMPLER_DEFAULTS",
    "SAMPLER_FLAGS",
    "RUN_DEFAULTS",
]

#: The run defaults of ``galprism separate``: those of the library's :class:`SeparateConfig`.
RUN_DEFAULTS = SeparateConfig()
#: The sampler defaults of every command: those of the library's :class:`SamplerConfig`.
SAMPLER_DEFAULTS = SamplerConfig()
#: The flag of each :class:`SamplerConfig` field, for error messages.
SAMPLER_FLAGS = {
    "method": "--sampler",
    "steps": "--steps",
    "n_samples": "-n/--n-samples",
    "cg_iterations": "--cg-iterations",
    "particles": "--particles",
    "trust": "--trust",
    "jacobian": "--jacobian",
    "rho": "--rho",
}


def sampler_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The posterior-sampler flags shared by ``separate`` and ``evaluate`` (``--steps``,
    ``--cg-iterations``, ``--sampler``, ``--particles``), their defaults those of
    :class:`SamplerConfig`; :func:`sampler_from_flags` checks the values."""
    options = [
        click.option(
            "--steps",
            type=int,
            default=SAMPLER_DEFAULTS.steps,
            show_default=True,
            help="Sampler steps.",
        ),
        click.option(
            "--cg-iterations",
            type=int,
            default=SAMPLER_DEFAULTS.cg_iterations,
            show_default=True,
            help="Conjugate-gradient iterations per step.",
        ),
        click.option(
            "--sampler",
            type=click.Choice(SAMPLERS),
            default=SAMPLER_DEFAULTS.method,
            show_default=True,
            help="Posterior sampler; smc weighs the posterior's modes by their evidence at "
            "--particles times the cost.",
        ),
        click.option(
            "--particles",
            type=click.IntRange(min=1),
            default=SAMPLER_DEFAULTS.particles,
            show_default=True,
            help="Chains per posterior sample of --sampler smc.",
        ),
        click.option(
            "--jacobian",
            type=click.Choice(["vjp", "difference"]),
            default=SAMPLER_DEFAULTS.jacobian,
            show_default=True,
            help="MMPS covariance products of the networks: vjp (autograd, exact) or "
            "difference (a forward difference, two forwards without a graph: 1.1x cheaper "
            "on a CPU, less accurate on very bright galaxies).",
        ),
        click.option(
            "--rho",
            type=float,
            default=SAMPLER_DEFAULTS.rho,
            show_default=True,
            help="Step spacing: 0 uniform in log sigma; rho > 0 uniform in sigma^(1/rho) "
            "(Karras et al.; more steps at low noise).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def sampler_from_flags(**values: Any) -> SamplerConfig:
    """A :class:`SamplerConfig` from flag values, a bad one reported by its flag name.

    Raises
    ------
    UsageError
        Naming the first flag whose value the sampler refuses.
    """
    for key, value in values.items():
        try:
            SamplerConfig(**{key: value})
        except ConfigError as exc:
            reason = str(exc).partition(": ")[2] or str(exc)
            raise UsageError(f"{SAMPLER_FLAGS.get(key, key)} {value}: {reason}") from None
    return SamplerConfig(**values)


def parse_support(values: Sequence[str]) -> dict[str, float | str] | None:
    """``--support`` values (``SOURCE=RADIUS``, ``SOURCE=auto:RADIUS`` or ``none``) as a
    :attr:`~galprism.separate.SeparateConfig.support`.

    No values gives ``None`` (the prior's own supports); ``none`` gives ``{}``.
    """
    if not values:
        return None
    if any(v.strip().lower() == "none" for v in values):
        if len(values) > 1:
            raise UsageError(
                f"--support none excludes other --support values, got {', '.join(values)}"
            )
        return {}
    out: dict[str, float | str] = {}
    for v in values:
        name, sep, radius = v.partition("=")
        value: float | str = radius.strip()
        try:
            value = float(radius)
        except ValueError:
            pass
        if not sep or not name.strip():
            raise UsageError(
                f"--support {v!r}: expected SOURCE=RADIUS or SOURCE=auto:RADIUS (prior pixels), "
                "or 'none'"
            )
        try:
            Support.parse(value, f"--support {v!r}")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        out[name.strip()] = value
    return out


def parse_freeform(
    bright: str | float | None, edge: str | float | None, residual: str | float | None = None
) -> FreeformConfig:
    """``--freeform-bright`` / ``-edge`` / ``-residual`` values (a number or ``none``) as a
    :class:`FreeformConfig`."""
    values: dict[str, float | None] = {}
    for name, v in (("bright", bright), ("edge", edge), ("residual", residual)):
        if v is None or (isinstance(v, str) and v.strip().lower() == "none"):
            values[name] = None
            continue
        try:
            values[name] = float(v)
        except ValueError:
            raise UsageError(
                f"--freeform-{name} {v!r}: expected a positive number or 'none'"
            ) from None
    for name, v in values.items():
        if v is not None and not (math.isfinite(v) and v > 0):
            raise UsageError(f"--freeform-{name} {v:g}: expected a positive number or 'none'")
    return FreeformConfig(bright=values["bright"], edge=values["edge"], residual=values["residual"])


def device_from_flag(device: str) -> str:
    """``--device`` resolved (``auto``: CUDA when available); a bad one is a usage error."""
    from ..separate import resolve_device

    try:
        return resolve_device(device)
    except ConfigError as exc:
        raise UsageError(f"--device {device}: {str(exc).partition(': ')[2] or exc}") from None


def load_prior(spec: str) -> Any:
    """Load a prior by built-in name or folder path (tests replace this function)."""
    from ..priorset import load_priorset

    return load_priorset(spec)


def _pair(value: str | None, option: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        a, b = (float(t) for t in value.split(","))
    except ValueError as exc:
        raise click.BadParameter(
            f"expected two comma-separated numbers, got {value!r}", param_hint=option
        ) from exc
    return a, b


def command_line(ctx: click.Context) -> str:
    """The invocation as parsed: ``galprism <command>`` plus every option given explicitly.

    Rebuilt from click's parameters rather than ``sys.argv`` so that it is also right when
    the CLI is called from Python (``galprism.cli.main.main(argv)``).
    """
    from click.core import ParameterSource

    words = ["galprism", ctx.info_name or "separate"]
    for param in ctx.command.params:
        name = param.name or ""
        value = ctx.params.get(name)
        if ctx.get_parameter_source(name) not in (
            ParameterSource.COMMANDLINE,
            ParameterSource.ENVIRONMENT,
        ):
            continue
        if isinstance(param, click.Argument):
            words.extend(str(v) for v in (value if isinstance(value, tuple) else (value,)))
        elif getattr(param, "is_flag", False):
            if value:
                words.append(param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0])
        else:
            long = next((o for o in param.opts if o.startswith("--")), param.opts[0])
            for v in value if getattr(param, "multiple", False) else (value,):
                words.extend([long, str(v)])
    return shlex.join(words)


#: How the runners word an output that exists without --overwrite, and what the user can pass.
_EXISTS = "output exists and overwriting is not allowed"
_EXISTS_HINT = f"{OVERWRITE_HINT} or --skip-existing"


class _Output:
    """stderr for humans, stdout for JSON lines.

    stderr gets one line per input as soon as its record is final (written, skipped or
    failed) and a rich progress bar on a terminal, advanced per input. JSON lines are
    held back until every earlier input has its record, so that they come in input order
    although the runner groups cutouts by shape into batches. ``quiet`` keeps only the
    error lines.
    """

    def __init__(self, json_lines: bool, quiet: bool, total: int) -> None:
        self.json_lines = json_lines
        self.quiet = quiet
        self.progress = None
        self.held: dict[int, Any] = {}
        self.next_index = 0
        if not quiet and sys.stderr.isatty() and total > 1:
            from ._progress import stderr_bar

            self.progress = stderr_bar()
            self.task = self.progress.add_task("separate", total=total)

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text, err=True)

    def record(self, rec: Any) -> None:
        if rec.status == "error" and rec.error is not None and rec.error.endswith(_EXISTS):
            # The library names no flag; the same text goes to stderr and to the JSON line.
            rec = dataclasses.replace(rec, error=f"{rec.error}; {_EXISTS_HINT}")
        if rec.status == "error":
            self.message(f"galprism: error: {rec.error}")
        elif not self.quiet:
            self.message(_record_line(rec))
        if self.progress is not None:
            self.progress.advance(self.task)
        if self.json_lines:
            self.held[rec.index] = rec
            self._emit()

    def _emit(self) -> None:
        while self.next_index in self.held:
            click.echo(self.held.pop(self.next_index).to_json())
            self.next_index += 1
        sys.stdout.flush()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        for index in sorted(self.held):  # only if a record never came (not expected)
            click.echo(self.held.pop(index).to_json())


def _record_line(rec: Any) -> str:
    """``galprism: wrote OUT (input IN, chi2 1.02, 3.1 s)`` or the skip line."""
    if rec.status == "skipped":
        return f"galprism: skipped {rec.input}: {rec.output} exists"
    details = [f"input {rec.input}"]
    if rec.modelled:
        details.append(rec.modelled.replace("modelled input pixels", "modelled", 1))
    if rec.chi2 is not None:
        details.append(f"chi2 {rec.chi2:.2f}")
    details.append(f"{rec.seconds:.1f} s")
    return f"galprism: wrote {rec.output} ({', '.join(details)})"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--prior",
    "prior_spec",
    default="default",
    show_default=True,
    help="Built-in prior name or prior folder.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file (one input only).",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder for <stem>.galprism.fits files.",
)
@click.option(
    "-n",
    "--n-samples",
    type=int,
    default=SAMPLER_DEFAULTS.n_samples,
    show_default=True,
    help="Posterior samples per cutout.",
)
@sampler_options
@click.option(
    "--trust",
    type=float,
    default=SAMPLER_DEFAULTS.trust,
    show_default=True,
    help="Trust radius of diffusion-prior MMPS corrections (0 = off).",
)
@click.option(
    "--support",
    "support",
    multiple=True,
    metavar="SOURCE=[auto:]RADIUS|none",
    help="Confine SOURCE to a disk of RADIUS prior pixels around the cutout center, or "
    "auto:RADIUS for "
    "a disk fitted per cutout up to RADIUS (repeatable); 'none' drops the prior's own supports "
    "(default: the prior's, see `galprism priors`).",
)
@click.option(
    "--freeform-bright",
    default="5",
    show_default=True,
    metavar="PEAK|none",
    help="Give a peak brighter than PEAK (units of the prior's flux_scale) a free-form component "
    "integrated out of the likelihood: stars and sources too bright for the priors.",
)
@click.option(
    "--freeform-edge",
    default="30",
    show_default=True,
    metavar="SNR|none",
    help="Give a peak on the cutout's outermost pixels above this signal-to-noise a free-form "
    "component reaching beyond the grid (light from sources centered outside it).",
)
@click.option(
    "--freeform-residual",
    default="none",
    show_default=True,
    metavar="SNR|none",
    help="After a first draw, give each point-source peak of its residual above this "
    "matched-filter signal-to-noise a free-form component and draw that cutout again (light the "
    "priors draw too faint).",
)
@click.option(
    "--batch-size",
    type=int,
    default=RUN_DEFAULTS.batch_size,
    show_default=True,
    help="Cutouts per sampler call.",
)
@device_option()
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Arithmetic of the prior networks: float32; bf16 (autocast); tf32 (CUDA only). "
    "The likelihood and its solve stay float32. [default: bf16 on CUDA, else float32]",
)
@click.option(
    "--flat-memory",
    is_flag=True,
    help="Keep the peak memory flat over any number of inputs (large tensors get their own "
    "mappings; costs CPU time, see the user guide).",
)
@threads_option(default_one=True)
@click.option(
    "--seed",
    type=int,
    default=RUN_DEFAULTS.seed,
    show_default=True,
    help="Run seed; each cutout's derives from it and its file name.",
)
@click.option("--center", help="Crop center X,Y in 0-based pixels (default: image center).")
@click.option("--center-radec", help="Crop center RA,DEC in degrees, through the WCS.")
@click.option("--image-hdu", help="Image HDU name or index (default: SCI, IMAGE, else primary).")
@click.option(
    "--psf",
    "psf_file",
    help="PSF FITS file for every input ({stem}, {name}, {dir} templates allowed).",
)
@click.option(
    "--mask", "mask_file", help="Mask FITS file ({stem}, {name}, {dir} templates allowed)."
)
@click.option(
    "--mask-bits", help="Bad-pixel bits: MP_* plane names and/or bit values, 'all' or 'none'."
)
@click.option(
    "--noise-sigma", help="Noise standard deviation (one, or one per band comma separated)."
)
@click.option(
    "--band",
    metavar="NAME|INDEX",
    help="Model one band of a cube: a name from --bands or the BANDS, FILTERn or FILTER header "
    "keywords, or a 0-based index.",
)
@click.option(
    "--bands",
    metavar="NAMES",
    help="Names of the inputs' bands in cube order, comma separated (e.g. g,r,i), instead of "
    "the BANDS/FILTERn/FILTER header keywords; matched to the prior's bands by name.",
)
@click.option("--pixel-scale", type=float, help="Cutout pixel scale in arcsec (overrides the WCS).")
@click.option("--zeropoint", type=float, help="AB zero point of the inputs (overrides the header).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option(
    "--skip-existing", is_flag=True, help="Skip inputs whose output exists (resume a run)."
)
@click.option(
    "--shard", help="Process shard I/N (0 <= I < N); default from SLURM_ARRAY_TASK_ID/COUNT."
)
@click.option("--json", "json_lines", is_flag=True, help="One JSON line per input on stdout.")
@click.option(
    "--scene",
    is_flag=True,
    help="Model every source of the image, blend by blend: detected sources (or --catalog), "
    "galaxies drawn from the prior's galaxy source, stars and a background fitted with them.",
)
@click.option(
    "--catalog",
    "catalog",
    metavar="FILE",
    help="With --scene: ECSV or FITS source list (x/y or ra/dec; a kind column of galaxy/star, "
    "else each source is classified) instead of detection ({stem}, {name}, {dir} allowed).",
)
@click.option(
    "--with",
    "views",
    multiple=True,
    metavar="FILE",
    help="With --scene and one input: a further image of the same sky (another band or "
    "instrument, with its own WCS, PSF, noise and zero point), modelled jointly with the input "
    "(repeatable); it must be sharper than the prior's resolution. Each gets DATA_n, MODEL_n "
    "and RESID_n in the output.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["fits", "hdf5"]),
    default="fits",
    show_default=True,
    help="Output file format; hdf5 (with --scene) writes <stem>.galprism.h5 with the same "
    "content, for fields of thousands of sources.",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "diffusion", "gaussian", "asvd"]),
    default="auto",
    show_default=True,
    help="Separation method; must match the prior (auto: the prior's own).",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="No progress bar, per-output lines, warnings or summary on stderr; errors are always "
    "printed.",
)
@click.pass_context
def separate(
    ctx: click.Context,
    inputs: tuple[str, ...],
    prior_spec: str,
    output: Path | None,
    output_dir: Path,
    **kw: Any,
) -> None:
    """Sample the posterior of each source of a prior for FITS cutouts.

    INPUTS are FITS files, or '-' to read one path per line from stdin. Each input
    gives <stem>.galprism.fits in --output-dir. An image larger than the prior's
    footprint is refused unless --center or --center-radec asks for a cutout of it.
    stderr gets one line per output and a summary line (--quiet: errors only); --json
    lines on stdout come in input order. With --scene every source of an image is modelled
    blend by blend and <stem>.galprism.fits holds a catalogue, stamps, MODEL, BACKGROUND,
    RESID and CHILDREN, with <stem>.galprism.catalog.ecsv beside it; --with FILE adds views
    of the same sky to one posterior. Exit status: 0 when
    every input succeeded (or was skipped, or the shard holds none), 1 when any failed, 2 for
    usage errors.
    """
    from ..io.inputs import expand_inputs, in_shard, parse_shard, shard_from_env
    from ..io.read import ReadOptions
    from ..separate import RunWarnings, effective_support, resolve_precision, run_separate

    set_threads(kw["threads"], default_one=True)
    if kw["shard"] is not None:
        with as_usage_error("--shard"):
            shard = parse_shard(kw["shard"])
    else:
        try:
            shard = shard_from_env(os.environ)
        except ConfigError as exc:
            raise UsageError(f"{exc}; use a contiguous --array range or pass --shard I/N") from exc
    stdin = sys.stdin if "-" in inputs else None
    try:
        paths = list(expand_inputs(inputs, stdin))
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    if not paths:
        raise UsageError("no input files given (an empty list on stdin?)")
    if output is not None and len(paths) > 1:
        raise UsageError(
            f"-o/--output names one file but {len(paths)} inputs were given; use --output-dir"
        )
    with as_usage_error("--bands"):
        read = ReadOptions(
            image_hdu=kw["image_hdu"],
            psf=kw["psf_file"],
            mask=kw["mask_file"],
            mask_bits=kw["mask_bits"],
            noise_sigma=kw["noise_sigma"],
            pixel_scale=kw["pixel_scale"],
            zeropoint=kw["zeropoint"],
            band=kw["band"],
            bands=kw["bands"],
        )
    if kw["overwrite"] and kw["skip_existing"]:
        raise UsageError("--overwrite and --skip-existing exclude each other")
    if kw["center"] is not None and kw["center_radec"] is not None:
        raise UsageError("--center and --center-radec exclude each other")
    if kw["catalog"] is not None and not kw["scene"]:
        raise UsageError("--catalog lists the sources of --scene; add --scene")
    if kw["views"] and not kw["scene"]:
        raise UsageError("--with adds views of a scene; add --scene")
    if kw["output_format"] == "hdf5" and not kw["scene"]:
        raise UsageError("--format hdf5 writes the outputs of --scene; add --scene")
    if kw["views"] and len(paths) > 1:
        raise UsageError(
            f"--with gives further views of one image, but {len(paths)} inputs were given"
        )
    if kw["scene"] and (kw["center"] is not None or kw["center_radec"] is not None):
        raise UsageError("--scene models the whole image; --center/--center-radec do not apply")
    sampler = sampler_from_flags(
        method=kw["sampler"],
        steps=kw["steps"],
        n_samples=kw["n_samples"],
        cg_iterations=kw["cg_iterations"],
        particles=kw["particles"],
        trust=kw["trust"],
        jacobian=kw["jacobian"],
        rho=kw["rho"],
    )
    config = SeparateConfig(
        sampler=sampler,
        batch_size=kw["batch_size"],
        device=kw["device"],
        precision=kw["precision"],
        flat_memory=kw["flat_memory"],
        output_format=kw["output_format"],
        seed=kw["seed"],
        center=_pair(kw["center"], "--center"),
        center_radec=_pair(kw["center_radec"], "--center-radec"),
        read=read,
        output_dir=output_dir,
        output=output,
        overwrite=kw["overwrite"],
        skip_existing=kw["skip_existing"],
        shard=shard,
        command_line=command_line(ctx),
        support=parse_support(kw["support"]),
        freeform=parse_freeform(
            kw["freeform_bright"], kw["freeform_edge"], kw["freeform_residual"]
        ),
    )
    total = sum(1 for p in paths if shard is None or in_shard(p, *shard))
    if shard is not None and total == 0:
        if not kw["quiet"]:
            click.echo(
                f"galprism: shard {shard[0]}/{shard[1]} holds none of the {len(paths)} inputs",
                err=True,
            )
        return
    prior = load_prior(prior_spec)
    if kw["method"] != "auto" and prior.method != kw["method"]:
        raise UsageError(f"--method {kw['method']}: prior {prior_spec!r} is a {prior.method} prior")
    device = device_from_flag(config.device)
    try:
        resolve_precision(config.precision, device, config.sampler.jacobian)
    except ConfigError as exc:
        raise UsageError(
            f"--precision {config.precision}: {str(exc).partition(': ')[2] or exc}"
        ) from None
    try:
        effective_support(prior, config)
    except ConfigError as exc:
        raise UsageError(f"--support: {exc}") from None
    if kw["scene"]:
        from ..scene.run import galaxy_prior

        try:
            galaxy_prior(prior)
        except ConfigError as exc:
            raise UsageError(f"--scene: {exc}") from None
    out = _Output(kw["json_lines"], kw["quiet"], total)
    warnings = RunWarnings(None if not kw["quiet"] else (lambda msg: None))
    if not kw["quiet"]:
        warnings.emit = lambda msg: out.message(f"galprism: warning: {msg}")
    try:
        if kw["scene"]:
            from ..scene.run import run_scene

            summary = run_scene(
                paths,
                prior,
                config,
                catalog=kw["catalog"],
                on_record=out.record,
                warnings=warnings,
                log=None if kw["quiet"] else (lambda msg: out.message(f"galprism: {msg}")),
                views=kw["views"],
            )
        else:
            summary = run_separate(paths, prior, config, on_record=out.record, warnings=warnings)
    finally:
        out.close()
    if not kw["quiet"]:
        click.echo(
            f"galprism: {summary.ok} written, {summary.skipped} skipped, {summary.errors} failed "
            f"in {summary.seconds:.1f} s",
            err=True,
        )
    if summary.exit_code:
        raise SystemExit(summary.exit_code)

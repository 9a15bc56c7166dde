"""``galprism sample``: prior samples of a source as a FITS cube."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from . import separate as _separate_cli
from ._threads import device_option
from .separate import RUN_DEFAULTS, SAMPLER_DEFAULTS, SAMPLERS, command_line

__all__ = ["sample"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--prior",
    "prior_spec",
    default="default",
    show_default=True,
    help="Built-in prior name or prior folder.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="Source to sample (repeatable; default: every source).",
)
@click.option(
    "-n",
    "--n-samples",
    type=click.IntRange(min=1),
    default=SAMPLER_DEFAULTS.n_samples,
    show_default=True,
    help="Samples per source.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output FITS file.",
)
@click.option(
    "--steps", type=int, default=SAMPLER_DEFAULTS.steps, show_default=True, help="Sampler steps."
)
@click.option(
    "--sampler",
    type=click.Choice([m for m in SAMPLERS if m != "smc"]),
    default=SAMPLER_DEFAULTS.method,
    show_default=True,
    help="Prior sampler (smc needs an observation to weigh its particles; use separate).",
)
@click.option(
    "--seed",
    type=int,
    default=RUN_DEFAULTS.seed,
    show_default=True,
    help="Run seed; each source's derives from it and its name.",
)
@device_option()
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.pass_context
def sample(
    ctx: click.Context,
    prior_spec: str,
    sources: tuple[str, ...],
    n_samples: int,
    output: Path,
    steps: int,
    sampler: str,
    seed: int,
    device: str,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Draw N samples of a prior's sources and write them as FITS cubes.

    One HDU per source, named after it, holding (N, ny, nx) (or (N, bands, ny, nx)) in
    the prior's flux units; the primary header records the prior, seeds and settings.
    """
    from ..errors import OutputExistsError
    from ..io.prior_samples import prior_samples_hdulist, select_sources
    from ..io.write import write_atomic
    from ._errors import OVERWRITE_HINT, as_usage_error, overwrite_hint

    # Checked before sampling too, so that a refused output costs no sampling time.
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: output exists; {OVERWRITE_HINT}")
    dev = _separate_cli.device_from_flag(device)
    prior = _separate_cli.load_prior(prior_spec)
    with as_usage_error("--source"):
        select_sources(prior, sources)
    t0 = time.perf_counter()
    hdul, summary = prior_samples_hdulist(
        prior,
        n=n_samples,
        steps=steps,
        seed=seed,
        sources=sources,
        sampler=sampler,
        device=dev,
        command_line=command_line(ctx),
    )
    with overwrite_hint():
        write_atomic(hdul, output, overwrite=overwrite)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "output": str(output),
                    "prior": prior.name,
                    "n_samples": n_samples,
                    "seconds": round(time.perf_counter() - t0, 3),
                    "sources": summary,
                }
            )
        )
    else:
        click.echo(
            f"galprism: wrote {n_samples} sample(s) of {', '.join(summary)} to {output}", err=True
        )

"""``galprism fit``: a thin layer over :mod:`galprism.fitting`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ._threads import device_option, set_threads, threads_option

__all__ = ["fit"]


def _tau(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError as exc:
        raise click.BadParameter(
            f"expected a number in [0, 1] or 'auto', got {value!r}", param_hint="--tau"
        ) from exc


def _view_option(spec: str) -> dict[str, Any]:
    """``NAME:SOURCE[,SOURCE...]:PATH`` -> a [[views]] table (PATH: .h5 file or FITS glob)."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise click.BadParameter(f"expected NAME:SOURCES:PATH, got {spec!r}", param_hint="--view")
    name, sources, path = parts
    key = "data" if path.endswith((".h5", ".hdf5")) else "files"
    return {"name": name, "sources": sources.split(","), key: path if key == "data" else [path]}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (default: runs/<name>).",
)
@click.option(
    "--method", type=click.Choice(["diffusion", "asvd"]), help="Override the fit file's method."
)
@click.option(
    "--view",
    "views",
    multiple=True,
    help="NAME:SOURCES:PATH view (instead of a fit file); repeatable.",
)
@click.option("--sources", help="Comma-separated source names (instead of a fit file).")
@click.option("--size", type=int, help="Prior image side in pixels (instead of a fit file).")
@click.option("--pixel-scale", type=float, help="Prior pixel scale in arcsec.")
@click.option("--name", help="Prior name.")
@click.option(
    "--arrangement",
    type=click.Choice(["stagewise", "joint"]),
    help="How views are used (default stagewise).",
)
@device_option("auto, cpu, cuda or cuda:N (auto under torchrun: cuda:LOCAL_RANK).")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue a run found in the run folder.",
)
@click.option(
    "--rank-clean",
    type=int,
    default=16,
    show_default=True,
    help="asvd: rank of the clean source's basis.",
)
@click.option(
    "--rank-unseen",
    type=int,
    default=8,
    show_default=True,
    help="asvd: rank of the unseen source's basis.",
)
@click.option(
    "--tau", default="auto", show_default=True, help="asvd: adversarial weight in [0, 1] or 'auto'."
)
@click.option("--overwrite", is_flag=True, help="asvd: replace an existing prior folder.")
@threads_option(default_one=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
def fit(
    config: Path | None, run_dir: Path | None, method: str | None, views: tuple[str, ...], **kw: Any
) -> None:
    """Learn priors from observations: diffusion priors by EM, or asvd bases.

    CONFIG is a TOML fit file (see docs/user-guide.md); without it, give --view (one per
    view), --sources and --size. The result is a prior folder that
    `galprism separate --prior PATH` loads (RUN_DIR/prior for diffusion).
    """
    from ..fitting import FitSpec, ViewSpec, fit_asvd_prior, fit_priors, load_fit_spec

    set_threads(kw["threads"], default_one=False)
    overrides = {
        "name": kw["name"],
        "pixel_scale": kw["pixel_scale"],
        "arrangement": kw["arrangement"],
        "method": method,
    }
    if config is not None:
        if views:
            raise UsageError("give either a fit file or --view options, not both")
        spec = load_fit_spec(config, overrides)
    else:
        if not views or not kw["sources"] or not kw["size"]:
            raise UsageError("without a fit file, give --view (one per view), --sources and --size")
        tables = [_view_option(v) for v in views]
        spec = FitSpec(
            name=kw["name"] or "prior",
            sources=kw["sources"].split(","),
            size=kw["size"],
            views=[
                ViewSpec(
                    t["name"],
                    t["sources"],
                    Path(t["data"]) if "data" in t else None,
                    [Path(p) for pat in t.get("files", []) for p in sorted(Path().glob(pat))],
                )
                for t in tables
            ],
            pixel_scale=kw["pixel_scale"],
            arrangement=kw["arrangement"] or "stagewise",
            method=method or "diffusion",
        )
    run_dir = run_dir or Path("runs") / spec.name
    t0 = time.perf_counter()
    if spec.method == "asvd":
        model = fit_asvd_prior(
            spec,
            run_dir,
            rank_clean=kw["rank_clean"],
            rank_unseen=kw["rank_unseen"],
            tau=_tau(kw["tau"]),
            overwrite=kw["overwrite"],
        )
        summary = {
            "method": "asvd",
            "prior": str(run_dir),
            "sources": list(model.sources),
            "tau": model.tau,
            "ranks": list(model.ranks),
            "tau_selection": model.info.get("tau_selection"),
            "seconds": time.perf_counter() - t0,
        }
        if summary["tau_selection"] and not kw["as_json"] and not kw["quiet"]:
            for point in summary["tau_selection"]["curve"]:
                click.echo(f"galprism: tau curve: {json.dumps(point)}", err=True)
    else:
        from ..em.distributed import auto_device, env_rank
        from .separate import device_from_flag

        # auto under torchrun: the process's own GPU (cuda:LOCAL_RANK).
        device = device_from_flag(auto_device() if kw["device"] == "auto" else kw["device"])
        # Under torchrun every process runs the fit; rank 0 writes and reports.
        silent = (env_rank() or (0, 1, 0))[0] != 0
        result = fit_priors(
            spec,
            run_dir,
            device=device,
            resume=kw["resume"],
            progress=None if not kw["quiet"] and not silent else False,
        )
        if silent:
            return
        summary = {
            "method": "diffusion",
            "prior": str(result.priors.path),
            "gaussian_prior": str(result.gaussian_priors.path),
            "sources": result.priors.sources,
            "laps": len(result.history),
            "last_lap": result.history[-1] if result.history else None,
            "seconds": time.perf_counter() - t0,
        }
    if kw["as_json"]:
        click.echo(json.dumps(summary))
    elif not kw["quiet"]:
        click.echo(f"galprism: prior written to {summary['prior']}", err=True)

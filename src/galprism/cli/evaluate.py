"""``galprism evaluate``: a thin layer over :func:`galprism.evaluate.pipeline.run_evaluation`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ._threads import device_option, set_threads, threads_option
from .separate import SAMPLER_DEFAULTS, sampler_from_flags, sampler_options

__all__ = ["evaluate"]


class _Progress:
    """One rich progress bar per method on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None
        if self.enabled:
            from ._progress import stderr_bar

            self.bar = stderr_bar()

    def __call__(self, label: str, total: int):
        if self.bar is None:
            return None
        task = self.bar.add_task(label, total=total)
        return lambda n: self.bar.advance(task, n)

    def log(self, message: str) -> None:
        if self.enabled:
            if self.bar is not None:
                self.bar.console.print(f"galprism evaluate: {message}")
            else:
                click.echo(f"galprism evaluate: {message}", err=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _ranks(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        d0, d1 = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two integers D0,D1, got {value!r}") from None
    if d0 < 1 or d1 < 1:
        raise click.BadParameter(f"ranks must be positive, got {value!r}")
    return d0, d1


def _methods(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, ...] | None:
    from ..evaluate.pipeline import ALL_METHODS
    from ..evaluate.scenes import SCENE_METHODS

    if value is None:
        return None
    known = ALL_METHODS + tuple(m for m in SCENE_METHODS if m not in ALL_METHODS)
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise click.BadParameter(
            f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(known)}"
        )
    return names


def _tau(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value != "auto":
        try:
            t = float(value)
        except ValueError:
            raise click.BadParameter(
                f"expected 'auto' or a number in [0, 1], got {value!r}"
            ) from None
        if not 0.0 <= t <= 1.0:
            raise click.BadParameter(f"tau must lie in [0, 1], got {value!r}")
    return value


@click.command("evaluate")
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Report folder.",
)
@click.option(
    "--test-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Existing test set (galprism simulate --view galaxies --split test); default: simulate "
    "one into OUTPUT_DIR/testset. With --scenes: the scenes folder (--view scenes), required.",
)
@click.option(
    "--scenes",
    is_flag=True,
    help="Evaluate every source of the scenes in --test-dir (galprism's scene mode, photutils, "
    "SEP, scarlet2) against their truth tables, per band for scenes of several bands; see "
    "docs/evaluation.md.",
)
@click.option(
    "--match-radius",
    type=click.FloatRange(min=0.0, min_open=True),
    default=3.0,
    show_default=True,
    help="With --scenes: largest distance in pixels of a detection matched to a true source.",
)
@click.option(
    "-n",
    "--n",
    "n",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Test cutouts to simulate.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N cutouts of --test-dir.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the test set, ASVD training sets and sampling.",
)
@click.option(
    "--methods",
    callback=_methods,
    default=None,
    help="Comma-separated methods to compare [default: galprism,gaussian,asvd,photutils,scarlet2;"
    " with --scenes: galprism,photutils,sep,scarlet2, and galprism_1band (galprism on the "
    "reference band alone) on scenes of several bands].",
)
@click.option(
    "--prior",
    default="default",
    show_default=True,
    help="Prior of galprism: built-in name or prior folder.",
)
@click.option(
    "--gaussian-prior",
    default="auto",
    show_default=True,
    help="Gaussian (PPCA) prior folder or name; auto: the one from the same EM run as --prior.",
)
@click.option(
    "--n-samples",
    type=click.IntRange(min=2),
    default=SAMPLER_DEFAULTS.n_samples,
    show_default=True,
    help="Posterior samples per cutout.",
)
@sampler_options
@click.option(
    "--support",
    multiple=True,
    metavar="SOURCE=[auto:]RADIUS|none",
    help="Source supports of the probabilistic methods, as for `galprism separate` (default: each "
    "prior's own).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Cutouts per sampler call.",
)
@device_option()
@click.option(
    "--interval",
    type=click.Choice(["auto", "quantile", "student"]),
    default="auto",
    show_default=True,
    help="Credible intervals: sample quantiles or Student-t prediction intervals (auto: quantiles "
    "when resolved).",
)
@click.option(
    "--asvd-train",
    type=click.IntRange(min=20),
    default=400,
    show_default=True,
    help="ASVD training cutouts per view.",
)
@click.option(
    "--asvd-ranks",
    callback=_ranks,
    default="32,16",
    show_default=True,
    help="ASVD ranks of the sky and galaxy bases.",
)
@click.option(
    "--asvd-tau",
    callback=_tau,
    default="auto",
    show_default=True,
    help="ASVD adversarial weight, or auto.",
)
@click.option(
    "--real/--no-real",
    default=True,
    show_default=True,
    help="Compare on the real HSC cutout against HST.",
)
@click.option(
    "--two-view/--no-two-view",
    default=True,
    show_default=True,
    help="Also separate the real cutout with the HST view added.",
)
@click.option(
    "--data-dir",
    default=None,
    help="Folder with cosmos/ (a GalSim RealGalaxyCatalog), hsc/, multiview/ "
    "[default: $GALPRISM_DATA_DIR].",
)
@click.option(
    "--scarlet2-python",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    envvar="GALPRISM_SCARLET2_PYTHON",
    help="Python of an environment with scarlet2 installed [$GALPRISM_SCARLET2_PYTHON].",
)
@click.option(
    "--scarlet2-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Run scarlet2 on the first N cutouts only.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing report (and simulated test set)."
)
@threads_option(default_one=False)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress or log lines on stderr.")
def evaluate(**opts) -> None:
    """Compare deblenders on a simulated test set with truth and on real HSC data against HST.

    Writes OUTPUT_DIR/summary.md, summary.json, results.csv, results.jsonl and eval_*.png.
    One command reproduces the whole report from a clean checkout (docs/evaluation.md).
    """

    from ..evaluate.pipeline import EvaluateConfig, run_evaluation
    from ._errors import overwrite_hint
    from .separate import device_from_flag, parse_support

    set_threads(opts.pop("threads"), default_one=False)
    as_json = opts.pop("as_json")
    quiet = opts.pop("quiet")
    scenes = opts.pop("scenes")
    radius = opts.pop("match_radius")
    if scenes:
        _evaluate_scenes(opts, radius, as_json, quiet)
        return
    source = click.get_current_context().get_parameter_source("match_radius")
    if source is not None and source.name != "DEFAULT":
        raise click.UsageError("--match-radius: only with --scenes")
    if opts["methods"] is None:
        from ..evaluate.pipeline import ALL_METHODS

        opts["methods"] = ALL_METHODS
    _only_for_scenes(opts["methods"])
    opts["support"] = parse_support(opts["support"])
    opts["device"] = device_from_flag(opts["device"])
    opts["sampler"] = sampler_from_flags(
        method=opts.pop("sampler"),
        steps=opts.pop("steps"),
        n_samples=opts.pop("n_samples"),
        cg_iterations=opts.pop("cg_iterations"),
        particles=opts.pop("particles"),
        jacobian=opts.pop("jacobian"),
        rho=opts.pop("rho"),
    )
    cfg = EvaluateConfig(**opts)
    if cfg.support:
        _check_support(cfg)
    progress = _Progress(not quiet)
    try:
        with overwrite_hint():
            out = run_evaluation(
                cfg,
                log=progress.log,
                warn=lambda msg: click.echo(f"galprism: warning: {msg}", err=True),
                progress=progress if progress.bar is not None else None,
            )
    finally:
        progress.stop()
    if as_json:
        click.echo(json.dumps(out.summary, default=str))
    if not quiet:
        click.echo(
            f"galprism evaluate: report in {cfg.output_dir}/summary.md ({out.seconds:.0f} s)",
            err=True,
        )


def _check_support(cfg: Any) -> None:
    """A --support naming a source the prior lacks is a usage error before any sampling."""
    from ..priorset import load_priorset
    from ..separate import SeparateConfig, effective_support
    from ._errors import as_usage_error

    prior = load_priorset(cfg.prior)
    with as_usage_error("--support"):
        effective_support(prior, SeparateConfig(support=cfg.support))


def _only_for_scenes(methods: tuple[str, ...]) -> None:
    from ..evaluate.pipeline import ALL_METHODS

    extra = [m for m in methods if m not in ALL_METHODS]
    if extra:
        raise click.UsageError(f"--methods {','.join(extra)}: only with --scenes")


def _evaluate_scenes(opts: dict[str, Any], radius: float, as_json: bool, quiet: bool) -> None:
    """``--scenes``: per-source evaluation of the scenes in --test-dir."""
    from ..evaluate.scenes import SCENE_METHODS, SceneEvalConfig, run_scene_evaluation
    from ._errors import overwrite_hint
    from .separate import device_from_flag

    if opts["test_dir"] is None:
        raise click.UsageError(
            "--scenes needs --test-dir (galprism simulate --view scenes --split test)"
        )
    methods = opts["methods"]  # None: chosen by the scenes' bands
    wrong = [m for m in methods or () if m not in SCENE_METHODS]
    if wrong:
        raise click.UsageError(
            f"--methods {','.join(wrong)}: not with --scenes; choose from {','.join(SCENE_METHODS)}"
        )
    sampler = sampler_from_flags(
        method=opts["sampler"],
        steps=opts["steps"],
        n_samples=opts["n_samples"],
        cg_iterations=opts["cg_iterations"],
        particles=opts["particles"],
        jacobian=opts["jacobian"],
        rho=opts["rho"],
    )
    cfg = SceneEvalConfig(
        output_dir=opts["output_dir"],
        test_dir=opts["test_dir"],
        limit=opts["limit"],
        seed=opts["seed"],
        methods=None if methods is None else tuple(methods),
        prior=opts["prior"],
        sampler=sampler,
        device=device_from_flag(opts["device"]),
        radius=radius,
        scarlet2_python=opts["scarlet2_python"],
        scarlet2_limit=opts["scarlet2_limit"],
        overwrite=opts["overwrite"],
    )

    def log(message: str) -> None:
        if not quiet and sys.stderr.isatty():
            click.echo(f"galprism evaluate: {message}", err=True)

    with overwrite_hint():
        out = run_scene_evaluation(
            cfg, log=log, warn=lambda msg: click.echo(f"galprism: warning: {msg}", err=True)
        )
    if as_json:
        click.echo(json.dumps(out.summary, default=str))
    if not quiet:
        click.echo(
            f"galprism evaluate: report in {cfg.output_dir}/summary.md ({out.seconds:.0f} s)",
            err=True,
        )

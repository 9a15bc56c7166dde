"""The whole evaluation as one call: test set, methods, real data, report (``galprism
evaluate``)."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError, GalprismError, OutputExistsError
from ..priorset import PriorSet, list_builtin_priors, load_priorset
from .methods import GalprismMethod, Method, PhotutilsMethod
from .report import write_report
from .run import EvalResult, evaluate_methods
from .testset import find_testset_files, load_testset, make_testset

__all__ = [
    "EvaluateConfig",
    "ALL_METHODS",
    "run_evaluation",
    "find_gaussian_prior",
    "EvaluationOutput",
]

ALL_METHODS: tuple[str, ...] = ("galprism", "gaussian", "asvd", "photutils", "scarlet2")

Log = Callable[[str], None]
ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class EvaluateConfig:
    """Options of an evaluation (the CLI's flags; defaults fit 200 cutouts in 30 min on 2 CPU
    cores).

    Attributes
    ----------
    output_dir
        Report folder.
    test_dir
        Existing test set (``galprism simulate --view galaxies --split test``); None to
        simulate ``n`` cutouts with ``seed`` into ``output_dir/testset``.
    n, limit
        Cutouts to simulate; use only the first ``limit`` of an existing test set.
    seed
        One seed for everything: test set, ASVD training sets (seed + 1, + 2), posterior
        sampling (per cutout, derived from it and the file name).
    methods
        Which of :data:`ALL_METHODS` to run.
    prior, gaussian_prior
        Prior of ``galprism`` (name or folder) and of ``gaussian`` (``"auto"``: the
        Gaussian PPCA prior from the same EM run, see :func:`find_gaussian_prior`).
    sampler, batch_size, device
        Posterior sampling of the probabilistic methods (defaults: ``galprism separate``'s).
    support
        Source supports of the probabilistic methods (``None``: each prior's own, ``{}``:
        none; see :attr:`galprism.separate.SeparateConfig.support`).
    interval
        Credible-interval kind (see :mod:`galprism.evaluate.calibration`).
    asvd_train, asvd_ranks, asvd_tau
        ASVD: training cutouts per view, ranks (clean, unseen), adversarial weight.
    real, two_view
        Run the HST/HSC real-data comparison, and the two-view separation.
    data_dir
        Folder with ``cosmos/``, ``hsc/``, ``multiview/``.
    scarlet2_python
        Python of an environment where scarlet2 is installed (None: scarlet2 is skipped).
    overwrite
        Replace an existing report.
    """

    output_dir: Path
    test_dir: Path | None = None
    n: int = 200
    limit: int | None = None
    seed: int = 0
    methods: tuple[str, ...] = ALL_METHODS
    prior: str = "default"
    gaussian_prior: str = "auto"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    support: dict[str, float | str] | None = None
    batch_size: int = 8
    device: str = "cpu"
    interval: str = "auto"
    asvd_train: int = 400
    asvd_ranks: tuple[int, int] = (32, 16)
    asvd_tau: str = "auto"
    real: bool = True
    two_view: bool = True
    two_view_samples: int = 16
    data_dir: str | None = None
    scarlet2_python: str | None = None
    scarlet2_limit: int | None = None
    overwrite: bool = False
    command: str = field(default_factory=lambda: shlex.join(["galprism", *sys.argv[1:]]))

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise ConfigError(
                f"evaluation methods: unknown method(s) {', '.join(unknown)}; "
                f"choose from {', '.join(ALL_METHODS)}"
            )
        if not self.methods:
            raise ConfigError("evaluation methods: no method selected")


@dataclass
class EvaluationOutput:
    """What :func:`run_evaluation` returns."""

    result: EvalResult
    real: EvalResult | None
    paths: dict[str, Path]
    summary: dict[str, Any]
    seconds: float


def _settings_record(cfg: EvaluateConfig) -> dict[str, Any]:
    """The run's settings for the summary, the sampler's flattened (``sampler`` its method)."""
    out = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in asdict(cfg).items()
        if k not in ("command", "sampler")
    }
    sampler = cfg.sampler.to_dict()
    out["sampler"] = sampler.pop("method")
    return {**out, **sampler}


def find_gaussian_prior(prior: PriorSet) -> Path | str | None:
    """The Gaussian (PPCA) prior learned by the same EM run as ``prior``, if one can be found.

    ``galprism fit`` writes ``prior/`` and ``prior-gaussian/`` side by side; a built-in
    prior ``NAME`` may ship ``NAME-gaussian``. Otherwise any built-in prior with method
    ``gaussian`` and the same sources and shape.
    """
    if prior.path is not None:
        sibling = Path(f"{prior.path}-gaussian")
        if (sibling / "prior.json").is_file():
            return sibling
    names = list_builtin_priors()
    if f"{prior.name}-gaussian" in names:
        return f"{prior.name}-gaussian"
    for name in names:
        try:
            other = load_priorset(name)
        except GalprismError:
            continue
        if (
            other.method == "gaussian"
            and other.sources == prior.sources
            and tuple(other.frame.shape) == tuple(prior.frame.shape)
        ):
            return name
    return None


def _load_priors(cfg: EvaluateConfig) -> tuple[PriorSet | None, PriorSet | None, dict[str, str]]:
    """The priors of ``galprism`` and ``gaussian`` (loaded first, so a bad prior fails fast)."""
    skipped: dict[str, str] = {}
    main: PriorSet | None = None
    gauss: PriorSet | None = None
    if "galprism" in cfg.methods or ("gaussian" in cfg.methods and cfg.gaussian_prior == "auto"):
        main = load_priorset(cfg.prior)
    if "gaussian" in cfg.methods:
        target = (
            find_gaussian_prior(main)
            if cfg.gaussian_prior == "auto" and main is not None
            else cfg.gaussian_prior
        )
        if target is None:
            skipped["gaussian"] = (
                f"no Gaussian (PPCA) prior found beside prior {cfg.prior!r}; give one explicitly"
            )
        else:
            gauss = load_priorset(target)
    return (main if "galprism" in cfg.methods else None), gauss, skipped


def _build_methods(
    cfg: EvaluateConfig, main: PriorSet | None, gauss: PriorSet | None, log: Log
) -> tuple[list[Method], dict[str, str]]:
    """The method adapters to run, and the reason for each requested method that cannot run."""
    methods: list[Method] = []
    skipped: dict[str, str] = {}
    sampling = dict(
        sampler=cfg.sampler,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=cfg.device,
        support=cfg.support,
    )
    if main is not None:
        methods.append(GalprismMethod(main, "galprism", f"galprism ({main.name})", **sampling))
    if gauss is not None:
        methods.append(
            GalprismMethod(gauss, "gaussian", f"Gaussian PPCA ({gauss.name})", **sampling)
        )
    if "asvd" in cfg.methods:
        from .asvd_fit import fit_asvd_method

        log(f"fitting the adversarial SVD on {cfg.asvd_train} + {cfg.asvd_train} training cutouts")
        tau: float | str = cfg.asvd_tau if cfg.asvd_tau == "auto" else float(cfg.asvd_tau)
        methods.append(
            fit_asvd_method(
                cfg.asvd_train, cfg.seed, ranks=cfg.asvd_ranks, tau=tau, data_dir=cfg.data_dir
            )
        )
    if "photutils" in cfg.methods:
        methods.append(PhotutilsMethod())
    if "scarlet2" in cfg.methods:
        if cfg.scarlet2_python is None:
            skipped["scarlet2"] = (
                "no scarlet2 environment (its Python) given; see docs/evaluation.md"
            )
        else:
            from .scarlet import Scarlet2Method

            methods.append(Scarlet2Method(cfg.scarlet2_python, limit=cfg.scarlet2_limit))
    return methods, skipped


def _real_section(
    real: EvalResult | None, info: dict[str, Any], two_view: list[dict[str, Any]], error: str | None
) -> str:
    from .report import HEADLINE, INTRINSIC, _fmt

    lines = ["## Real data (HSC i band against HST)", ""]
    if error is not None:
        return "\n".join([*lines, f"Not run: {error}", ""])
    if real is None:
        return "\n".join([*lines, "Not run (real-data comparison not requested).", ""])
    lines += [
        "`multiview/Cut_HSC.fits` i band, cropped around the central galaxy, through every method; "
        "truth: "
        "the HST image of that galaxy (its deblended HST segment) on the HSC grid through the two "
        "WCS "
        "(GalSim, flux-conserving), HST PSF replaced by the HSC PSF (convolved truth) or by the "
        '0.2" truth '
        "kernel (intrinsic truth), one flux scale fitted on the whole scene. One cutout, so one "
        "value per method.",
        "",
        f"- HSC noise σ = {info['hsc_noise_sigma']:.4g} (cube units, source-free pixels); the cube "
        "has no zero point: "
        f"ZP {info['zeropoint_assumed']:.3f} assumed (noise matched to the simulations' "
        f"{info['sim_noise_sigma']:.4g} counts at ZP 27).",
        f"- WCS: affine HST→HSC map residual {info['wcs_affine_residual_px']:.1e} px, pixel ratio "
        f"{info['hst_to_hsc_pixel_ratio']:.4f}; "
        f"astrometric shift refined to ({info['astrometric_shift_px'][0]:+.2f}, "
        f"{info['astrometric_shift_px'][1]:+.2f}) HSC px.",
        f"- Scene fit: scale {info['flux_scale_hst_to_hsc']:.4g} HSC/HST units, sky offset "
        f"{info['sky_offset']:+.3g}, "
        f"residual RMS {info['scene_fit_rms_sigma']:.2f} σ over {info['scene_fit_pixels']} px. A "
        "scale fitted to the central "
        f"galaxy alone would be {info['central_own_scale_ratio']:.3f} times the scene's: the truth "
        "flux is uncertain at that level.",
        f"- The HST image's own noise in the truth: {info['truth_conv_noise_sigma']:.2f} σ per "
        "pixel (convolved), "
        f"{info['truth_intrinsic_noise_sigma']:.2f} σ (intrinsic); a perfect method would show "
        f"RMSE ≈ {info['truth_rmse_floor_sigma']:.2f} σ "
        f"(convolved) against this truth. Blendedness {info['blendedness']:.3f}.",
        "",
    ]
    cols = [c for c in HEADLINE if c[0] != "flux_err"]
    head = (
        "| method | "
        + " | ".join(t for _, t, _ in cols)
        + " | intrinsic RMSE | intrinsic abs flux err |"
    )
    lines += [head, "|---|" + "---:|" * (len(cols) + 2)]
    labels = {m.name: m.label for m in real.methods}
    for r in real.rows:
        cells = [_fmt(float(r.get(k, math.nan)), f) for k, _, f in cols]
        cells += [
            _fmt(float(r.get(k, math.nan)), f)
            for k, _, f in INTRINSIC
            if k in ("int_rmse", "int_abs_flux_err")
        ]
        lines.append(f"| {labels[r['method']]} | " + " | ".join(cells) + " |")
    for m in real.methods:
        if m.error is not None:
            lines.append(f"\n{m.label} failed on the real cutout: {m.error}")
    lines.append("")
    if two_view:
        lines += [
            "### HSC + HST views together",
            "",
            "The HST view enters on the prior's grid (see `galprism/evaluate/multiview.py` for why "
            "native "
            "resolution is not possible with integer-factor operators, and what would be needed). "
            "Posterior "
            "standard deviation of the central galaxy's flux and mean per-pixel standard deviation "
            "in its footprint:",
            "",
            "| prior | flux std, HSC | flux std, HSC+HST | ratio | pixel std, HSC | pixel std, "
            "HSC+HST | ratio | S |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for tv in two_view:
            if "error" in tv:
                lines.append(f"| {tv['prior']} | failed: {tv['error']} |||||||")
                continue
            lines.append(
                f"| {tv['prior']} | {tv['flux_std_hsc']:.3g} | {tv['flux_std_both']:.3g} | "
                f"{tv['flux_std_both'] / tv['flux_std_hsc']:.2f} | "
                f"{tv['pixel_std_hsc']:.3g} | {tv['pixel_std_both']:.3g} | "
                f"{tv['pixel_std_both'] / tv['pixel_std_hsc']:.2f} | {tv['n_samples']} |"
            )
        lines.append("")
    return "\n".join(lines)


def run_evaluation(
    cfg: EvaluateConfig,
    *,
    log: Log | None = None,
    warn: Log | None = None,
    progress: ProgressFactory | None = None,
) -> EvaluationOutput:
    """Make or load the test set, run every method, the real-data comparison, write the report.

    ``log`` receives progress messages, ``warn`` failures and skipped methods (the CLI
    shows the latter even with ``-q``).
    """
    t_start = time.perf_counter()
    log = log or (lambda msg: None)
    warn = warn or log
    out = Path(cfg.output_dir)
    if (out / "summary.md").exists() and not cfg.overwrite:
        raise OutputExistsError(f"{out}: already holds a report and overwriting is not allowed")
    torch.manual_seed(cfg.seed)
    main, gauss, skipped = _load_priors(cfg)
    if cfg.test_dir is None:
        test_dir = out / "testset"
        existing = list(test_dir.glob("*.fits")) if test_dir.is_dir() else []
        if existing and not cfg.overwrite:
            raise OutputExistsError(
                f"{test_dir}: test set exists and overwriting is not allowed "
                f"(it can be reused as the test set folder {test_dir})"
            )
        log(f"simulating {cfg.n} test cutouts (seed {cfg.seed}) into {test_dir}")
        make_testset(test_dir, cfg.n, cfg.seed, data_dir=cfg.data_dir, overwrite=cfg.overwrite)
        testset_seed: Any = cfg.seed
    else:
        test_dir = Path(cfg.test_dir)
        find_testset_files(test_dir)
        testset_seed = "given"
    cutouts = load_testset(test_dir, cfg.limit)
    log(f"{len(cutouts)} test cutouts loaded from {test_dir}")
    methods, more = _build_methods(cfg, main, gauss, log)
    skipped.update(more)
    for name, why in skipped.items():
        warn(f"{name}: skipped ({why})")

    def on_error(name: str, exc: BaseException) -> None:
        warn(f"{name}: failed: {' '.join(str(exc).split())}")

    result = evaluate_methods(
        cutouts, methods, interval=cfg.interval, seed=cfg.seed, progress=progress, on_error=on_error
    )
    real_result, info, two_view, real_error = None, {}, [], None
    if cfg.real:
        from .real import build_real_case

        log("real data: HSC i band against HST")
        try:
            case = build_real_case(cfg.data_dir)
            info = case.info
            real_methods = [m for m in methods if m.name != "scarlet2" or cfg.scarlet2_python]
            real_result = evaluate_methods(
                [case.cutout], real_methods, interval="student", seed=cfg.seed, on_error=on_error
            )
            if cfg.two_view:
                from .multiview import two_view_separation

                for m in real_methods:
                    if isinstance(m, GalprismMethod):
                        try:
                            tv = two_view_separation(
                                m.prior,
                                case,
                                sampler=replace(cfg.sampler, n_samples=cfg.two_view_samples),
                                seed=cfg.seed,
                                support=m.config.support,
                            )
                            two_view.append(tv.as_dict())
                        except Exception as exc:  # noqa: BLE001 - report, keep the rest
                            two_view.append(
                                {"prior": m.prior.name, "error": " ".join(str(exc).split())}
                            )
                            warn(
                                f"two-view separation with {m.prior.name}: failed: "
                                f"{two_view[-1]['error']}"
                            )
        except GalprismError as exc:
            real_error = str(exc)
            warn(f"real data: not run: {real_error}")
    seconds = time.perf_counter() - t_start
    meta = {
        "command": cfg.command,
        "version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": (
            f"{platform.machine()}, {os.cpu_count()} CPU, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {cfg.device}"
        ),
        "seconds": seconds,
        "testset": str(test_dir),
        "testset_seed": testset_seed,
        "skipped": skipped,
        "settings": _settings_record(cfg),
    }
    sections = [_real_section(real_result, info, two_view, real_error)]
    if skipped:
        sections.append(
            "## Methods not run\n\n" + "\n".join(f"- {k}: {v}" for k, v in skipped.items()) + "\n"
        )
    extra_json = {"real": _real_json(real_result, info, two_view, real_error)}
    figures = {}
    if real_result is not None:
        from .figures import real_figure

        out.mkdir(parents=True, exist_ok=True)
        figures["eval_real"] = real_figure(
            real_result, out / "eval_real.png", overwrite=cfg.overwrite
        )
    paths = write_report(
        result,
        out,
        meta,
        overwrite=cfg.overwrite,
        extra_sections=sections,
        extra_json=extra_json,
        extra_figures=figures,
    )
    from .report import summary_json

    summary = summary_json(result, meta, extra_json)
    return EvaluationOutput(result, real_result, paths, summary, time.perf_counter() - t_start)


def _real_json(
    real: EvalResult | None,
    info: dict[str, Any],
    two_view: Sequence[dict[str, Any]],
    error: str | None,
) -> dict[str, Any]:
    if error is not None:
        return {"status": "failed", "error": error}
    if real is None:
        return {"status": "not run"}
    return {"status": "ok", "info": info, "rows": real.rows, "two_view": list(two_view)}

"""The streaming run over input files: :func:`run_separate` and its records."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._memory import keep_large_allocations_mapped, trim_freed_memory
from ..errors import GalprismError, InputError
from ..io.inputs import cutout_seed, in_shard, output_path
from ..io.write import OutputExistsError, StaleTemps, check_writable
from ..observation import NoteKind, Observation
from .config import SeparateConfig, resolve_device, resolve_precision
from .inference import modelled_region, prepare_observation, separate_observations
from .output import write_result
from .prior import Separator, effective_support, prior_zeropoint

#: Notes the run warns about, once per kind (the kind's value names the warning).
WARNED_NOTES = (NoteKind.NOISE_ESTIMATED, NoteKind.PSF_RENORMALISED, NoteKind.PSF_RECENTERED)

__all__ = ["InputRecord", "RunSummary", "RunWarnings", "run_separate"]


@dataclass
class InputRecord:
    """Outcome of one input: one JSON line of ``--json``."""

    input: str
    output: str | None
    status: str  # "ok" | "error" | "skipped"
    seconds: float = 0.0
    seed: int | None = None
    sources: dict[str, dict[str, list[float]]] | None = None
    chi2: float | None = None
    error: str | None = None
    index: int = -1  # position among the inputs of this run (shard), in input order
    modelled: str | None = None  # the input pixels modelled, when a center was given

    def to_json(self) -> str:
        data = {
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "seconds": round(self.seconds, 4),
            "seed": self.seed,
        }
        if self.sources is not None:
            data["sources"] = self.sources
        if self.chi2 is not None:
            data["chi2"] = round(self.chi2, 4)
        if self.error is not None:
            data["error"] = self.error
        if self.modelled is not None:
            data["modelled"] = self.modelled
        return json.dumps(data)


@dataclass
class RunSummary:
    """Counts of a run; ``exit_code`` is 1 when any input failed, else 0."""

    ok: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


class RunWarnings:
    """Warnings shown once per kind and run, with a count of the repeats at the end."""

    def __init__(self, emit: Callable[[str], None] | None = None) -> None:
        self.emit = emit or (lambda msg: print(f"galprism: warning: {msg}", file=sys.stderr))
        self.counts: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        """Show ``message`` if ``kind`` was not reported yet in this run; count it."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] == 1:
            self.emit(message)

    def finish(self) -> None:
        """Report how many more inputs each shown warning applied to."""
        for kind, n in self.counts.items():
            if n > 1:
                self.emit(f"{kind}: applied to {n - 1} more input(s)")


@dataclass
class _Pending:
    path: str
    output: Path
    obs: Observation
    seed: int
    seconds: float
    index: int


def _error_text(exc: BaseException, path: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, GalprismError):
        text = f"{type(exc).__name__}: {text}"
    return text if path in text else f"{path}: {text}"


def run_separate(
    inputs: Iterable[str],
    prior: Separator,
    config: SeparateConfig,
    *,
    on_record: Callable[[InputRecord], None] | None = None,
    warnings: RunWarnings | None = None,
) -> RunSummary:
    """Separate every input file, streaming: read a batch, sample, write, drop.

    Parameters
    ----------
    inputs
        Paths (any iterable; consumed lazily). Inputs outside ``config.shard`` are
        ignored.
    prior
        The prior (see :class:`Separator`).
    config
        Run options.
    on_record
        Called with each input's :class:`InputRecord` as soon as it is final.
    warnings
        Collector for once-per-run warnings (default: printed to stderr).

    Returns
    -------
    RunSummary
        ``exit_code`` 1 when any input failed.
    """
    t_run = time.perf_counter()
    if config.flat_memory:
        # Batch after batch, large tensors would otherwise fragment the heap and the peak
        # resident memory would creep up with the number of inputs (see galprism._memory).
        keep_large_allocations_mapped()
    warn = warnings or RunWarnings()
    device = resolve_device(config.device)
    # tf32 on a CPU, or bf16 with a difference Jacobian, is an error before any work
    resolve_precision(config.precision, device, config.sampler.jacobian)
    effective_support(prior, config)  # a bad support is an error before any work
    summary = RunSummary()
    if config.output is None:
        try:
            Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"{config.output_dir}: cannot create the output folder ({exc.strerror})"
            ) from exc
    out_folder = Path(config.output_dir) if config.output is None else Path(config.output).parent
    check_writable(out_folder)  # before any sampling, not after it
    stale = StaleTemps()
    seen: dict[str, str] = {}
    position = 0
    pending: dict[tuple, list[_Pending]] = {}

    def report(rec: InputRecord) -> None:
        if rec.status == "ok":
            summary.ok += 1
        elif rec.status == "skipped":
            summary.skipped += 1
        else:
            summary.errors += 1
        if on_record is not None:
            on_record(rec)

    def flush(key: tuple) -> None:
        process(pending.pop(key, []))
        trim_freed_memory()  # keeps a long run's resident memory flat (see galprism._memory)

    def process(group: list[_Pending]) -> None:
        if not group:
            return
        t0 = time.perf_counter()
        try:
            results: list[Any] = separate_observations(
                [p.obs for p in group], prior, config, [p.seed for p in group], device=device
            )
        except Exception as exc:  # noqa: BLE001 - isolate the failing cutout below
            if len(group) == 1:
                results = [exc]
            else:
                for p in group:  # retry alone: same per-cutout generators, same results
                    process([p])
                return
        share = (time.perf_counter() - t0) / len(group)

        def failed(p: _Pending, exc: BaseException) -> None:
            report(
                InputRecord(
                    p.path,
                    str(p.output),
                    "error",
                    p.seconds + share,
                    p.seed,
                    error=_error_text(exc, p.path),
                    index=p.index,
                    modelled=modelled_region(p.obs),
                )
            )

        for p, res in zip(group, results, strict=True):
            where = {"index": p.index, "modelled": modelled_region(p.obs)}
            if isinstance(res, BaseException):
                failed(p, res)
                continue
            t1 = time.perf_counter()
            try:
                write_result(res, p.output, prior, config, device=device)
            except Exception as exc:  # noqa: BLE001 - one unwritable output must not stop the run
                failed(p, exc)
                continue
            seconds = p.seconds + share + time.perf_counter() - t1
            report(
                InputRecord(
                    p.path,
                    str(p.output),
                    "ok",
                    seconds,
                    p.seed,
                    sources=res.flux_summary(),
                    chi2=float(np.mean(res.chi2_samples)),
                    **where,
                )
            )

    for path in inputs:
        path = str(path)
        if config.shard is not None and not in_shard(path, *config.shard):
            continue
        t0 = time.perf_counter()
        out = (
            Path(config.output)
            if config.output is not None
            else output_path(path, config.output_dir)
        )
        seed = cutout_seed(config.seed, path)
        index, position = position, position + 1
        key = os.path.abspath(out)
        if key in seen:
            report(
                InputRecord(
                    path,
                    str(out),
                    "error",
                    0.0,
                    seed,
                    error=f"{path}: writes the same output {out} as {seen[key]}",
                    index=index,
                )
            )
            continue
        seen[key] = path
        for tmp in stale.remove(out):
            warn.warn(
                "stale temporary removed",
                f"{tmp}: removed, a temporary file of {out.name} left by an interrupted run",
            )
        if out.exists():
            if config.skip_existing:
                report(InputRecord(path, str(out), "skipped", 0.0, seed, index=index))
                continue
            if not config.overwrite:
                exc = OutputExistsError(f"{out}: output exists and overwriting is not allowed")
                report(
                    InputRecord(
                        path,
                        str(out),
                        "error",
                        0.0,
                        seed,
                        error=_error_text(exc, path),
                        index=index,
                    )
                )
                continue
        try:
            obs, grid_factor = prepare_observation(path, prior, config, warn)
        except Exception as exc:  # noqa: BLE001 - a bad file never stops the batch
            report(
                InputRecord(
                    path,
                    str(out),
                    "error",
                    time.perf_counter() - t0,
                    seed,
                    error=_error_text(exc, path),
                    index=index,
                )
            )
            continue
        _warn_notes(obs, prior, warn)
        # A batch shares one operator: the same shape, grid factor and observed bands.
        group_key = (obs.shape, grid_factor, obs.band_index(prior.frame))
        pending.setdefault(group_key, []).append(
            _Pending(path, out, obs, seed, time.perf_counter() - t0, index)
        )
        if len(pending[group_key]) >= config.batch_size:
            flush(group_key)
    for key in list(pending):
        flush(key)
    warn.finish()
    summary.seconds = time.perf_counter() - t_run
    return summary


def _warn_notes(obs: Observation, prior: Separator, warn: RunWarnings) -> None:
    for note in obs.notes:
        if note.kind in WARNED_NOTES:
            warn.warn(note.kind.value, f"{obs.name}: {note.text}")
    zp = prior_zeropoint(prior)
    if obs.zeropoints is None and zp is not None:
        warn.warn(
            "zero point assumed",
            f"{obs.name}: no zero point in the header (MAGZERO/MAGZPT/ZP or flux BUNIT) or "
            f"read options; assuming the prior's AB zero point {zp:.4g}",
        )
    elif obs.zeropoints is not None and zp is None:
        warn.warn(
            "prior zero point unknown",
            f"prior {prior.name!r} records no zero point; fluxes of {obs.name} used as they are",
        )

"""``galprism evaluate`` end to end on a few cutouts with a small stand-in prior, and its error
handling.

The stand-in is a Gaussian (PPCA) prior set fitted on simulated *training* cutouts'
truths: enough to exercise every stage (sampling, measures, calibration, report) in
seconds. Tests needing the real COSMOS data (ASVD's training cutouts) carry the
``needs_data`` marker of conftest.py and skip without it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fits_factory import run_cli, spy_smc_particles

from galprism.frame import Frame
from galprism.gaussian import GaussianPrior
from galprism.priorset import PriorSet

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_fits"


needs_data = pytest.mark.needs_data


def copy_testset(dest: Path) -> Path:
    """The four simulated test-split cutouts of sample_fits, with their truth files."""
    (dest / "truth").mkdir(parents=True)
    for p in sorted(SAMPLES.glob("sim_hsc_galaxies_test_*.fits")):
        shutil.copy(p, dest / p.name)
        t = SAMPLES / "truth" / p.name.replace(".fits", ".truth.fits")
        shutil.copy(t, dest / "truth" / t.name)
    return dest


def standin_prior(folder: Path) -> Path:
    """A rank-8 Gaussian prior of galaxy and sky fitted on 24 training-split truths."""
    from galprism.simulate import SimulationConfig, Simulator

    sim = Simulator(
        SimulationConfig(view="galaxies", split="train", n=24, seed=11, mask_fraction=0.0)
    )
    cuts = [sim.cutout(i) for i in range(24)]
    truths = {k: np.stack([c.truth[k] for c in cuts]) for k in ("galaxy", "sky")}
    return gaussian_priorset("standin", truths, 8, folder)


def gaussian_priorset(name: str, truths: dict[str, np.ndarray], rank: int, folder: Path) -> Path:
    """Save a Gaussian prior set of galaxy and sky of the given ``rank``, fitted on ``truths``
    (``(n, 48, 48)`` per
    source, in counts), with the test set's pixel scale and zeropoint."""
    scale = 0.05
    stack = {k: torch.from_numpy(truths[k][:, None] / scale).float() for k in ("galaxy", "sky")}
    ps = PriorSet(
        name,
        "gaussian",
        ["galaxy", "sky"],
        [GaussianPrior.fit(stack[k], rank) for k in ("galaxy", "sky")],
        Frame((1, 48, 48), pixel_scale=0.168, zeropoint=27.0, bunit="count", flux_scale=scale),
    )
    return ps.save(folder)


@needs_data
def test_evaluate_end_to_end_and_reproducible(tmp_path, capsys, monkeypatch):
    """One command writes summary.md, results.csv/.jsonl, summary.json and the figures; the same
    seed gives the
    same per-cutout numbers; an existing report is not overwritten without --overwrite."""
    ts = copy_testset(tmp_path / "ts")
    prior = standin_prior(tmp_path / "prior")
    out = tmp_path / "report"
    argv = [
        "evaluate",
        "-o",
        out,
        "--test-dir",
        ts,
        "--prior",
        prior,
        "--gaussian-prior",
        prior,
        "--methods",
        "galprism,gaussian,asvd,photutils",
        "--n-samples",
        "4",
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--asvd-train",
        "20",
        "--asvd-ranks",
        "4,2",
        "--asvd-tau",
        "0.5",
        "--no-real",
        "--json",
        "-q",
    ]
    code, recs, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 0, err
    assert len(recs) == 1, "--json prints one summary object"
    summary = recs[0]
    assert summary["n_cutouts"] == 4
    assert {m: v["status"] for m, v in summary["methods"].items()} == {
        k: "ok" for k in ("galprism", "gaussian", "asvd", "photutils")
    }
    cal = summary["methods"]["galprism"]["calibration"]
    assert cal["interval"] == "student" and cal["n_samples"] == 4 and sum(cal["flux_sbc_hist"]) == 4
    for name in (
        "summary.md",
        "summary.json",
        "results.csv",
        "results.jsonl",
        "eval_gallery.png",
        "eval_metric_vs_blendedness.png",
        "eval_calibration.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "eval_gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 16 and {r["method"] for r in rows} == {
        "galprism",
        "gaussian",
        "asvd",
        "photutils",
    }
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 16 and all(
        json.loads(line)["cutout"].startswith("sim_hsc_galaxies_test_") for line in lines
    )
    text = (out / "summary.md").read_text()
    for heading in (
        "## Verdict",
        "## All cutouts",
        "most blended third",
        "## Calibration",
        "photutils deblend",
        "adversarial SVD",
    ):
        assert heading in text, heading
    first = {(r["cutout"], r["method"]): r for r in rows}

    code, _, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 1 and any("--overwrite" in line for line in err), err

    code, _, _, err = run_cli([*argv, "--overwrite"], capsys, monkeypatch)
    assert code == 0, err
    again = {(r["cutout"], r["method"]): r for r in csv.DictReader((out / "results.csv").open())}
    for key, row in first.items():
        for col in ("rmse", "flux_err", "flux_mean", "g_err"):
            assert again[key].get(col) == row.get(col), (key, col)


def test_evaluate_rejects_train_split_and_bad_options(tmp_path, capsys, monkeypatch):
    """A training-split file in the test set is a one-line error naming it; unknown methods exit
    2."""
    ts = copy_testset(tmp_path / "ts")
    from astropy.io import fits

    bad = ts / "sim_hsc_galaxies_test_000001.fits"
    with fits.open(bad, mode="update") as hdul:
        hdul[0].header["SPLIT"] = "train"
    code, _, _, err = run_cli(
        [
            "evaluate",
            "-o",
            tmp_path / "r",
            "--test-dir",
            ts,
            "--methods",
            "photutils",
            "--no-real",
            "-q",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 1 and len(err) == 1 and str(bad) in err[0] and "test-split" in err[0], err
    code, _, _, err = run_cli(
        ["evaluate", "-o", tmp_path / "r", "--test-dir", ts, "--methods", "photutils,magic"],
        capsys,
        monkeypatch,
    )
    assert code == 2 and any("magic" in line for line in err), err
    code, _, _, err = run_cli(
        [
            "evaluate",
            "-o",
            tmp_path / "r",
            "--test-dir",
            tmp_path / "nothing",
            "--methods",
            "photutils",
            "-q",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 1 and len(err) == 1 and "not found" in err[0], err
    # a support naming a source the prior lacks is a usage error before any sampling, not a
    # method that "failed" inside a written report
    bad.unlink()
    code, _, _, err = run_cli(
        [
            "evaluate",
            "-o",
            tmp_path / "s",
            "--test-dir",
            ts,
            "--prior",
            "default",
            "--methods",
            "galprism",
            "--no-real",
            "--support",
            "star=3",
            "-q",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and len(err) == 1 and "'star'" in err[0], err
    assert not (tmp_path / "s").exists(), "a usage error still wrote a report"


def truth_prior(testset: Path, folder: Path) -> Path:
    """A rank-2 Gaussian prior of galaxy and sky fitted on the test set's own four truths: no real
    data needed,
    enough to drive the sampler (the scores are not the point)."""
    from astropy.io import fits

    files = sorted((testset / "truth").glob("*.truth.fits"))
    truths = {
        k: np.stack([fits.getdata(t, f"TRUE_{k.upper()}") for t in files])
        for k in ("galaxy", "sky")
    }
    return gaussian_priorset("truthfit", truths, 2, folder)


def test_evaluate_smc_runs_with_the_particles_asked_for(tmp_path, capsys, monkeypatch):
    """--sampler smc --particles P reaches the SMC sampler with P chains and is recorded in
    summary.json; if the
    pipeline dropped the setting, SMC would silently run with the default 16 (or another sampler
    would run)."""
    used = spy_smc_particles(monkeypatch)
    ts = copy_testset(tmp_path / "ts")
    prior = truth_prior(ts, tmp_path / "prior")
    out = tmp_path / "report"
    code, recs, _, err = run_cli(
        [
            "evaluate",
            "-o",
            out,
            "--test-dir",
            ts,
            "--prior",
            prior,
            "--methods",
            "galprism",
            "--n-samples",
            "2",
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--sampler",
            "smc",
            "--particles",
            "3",
            "--no-real",
            "--json",
            "-q",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert recs[0]["methods"]["galprism"]["status"] == "ok", recs[0]["methods"]["galprism"]
    assert used and set(used) == {3}, f"SMC ran with particles {used}, not the 3 asked for"
    summary = json.loads((out / "summary.json").read_text())
    run = summary["meta"]["settings"]
    assert run["sampler"] == "smc" and run["particles"] == 3, run
    assert '"particles": 3' in (out / "summary.md").read_text(), (
        "the method's settings in the report omit particles"
    )
    code, _, _, err = run_cli(
        [
            "evaluate",
            "-o",
            tmp_path / "r2",
            "--test-dir",
            ts,
            "--methods",
            "galprism",
            "--particles",
            "0",
            "--no-real",
            "-q",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and any("particles" in line for line in err), err

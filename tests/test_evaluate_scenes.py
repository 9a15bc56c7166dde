"""``galprism evaluate --scenes``: matching, per-source measures, summary logic and the CLI.

The scenes are two 48 px scenes of ``galprism simulate --view scenes`` written into a
temporary folder (real COSMOS/HSC data: the ``shared_data`` fixture of conftest.py; the
tests that need them skip without it). galprism runs with a small Gaussian prior so that
the end-to-end test takes seconds.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits
from fits_factory import run_cli

from galprism.errors import InputError
from galprism.evaluate.scene_peers import QUANTILE_LEVELS, SceneDetections
from galprism.evaluate.scenes import (
    SceneEvalResult,
    load_scene,
    load_scene_set,
    match_sources,
    measure_scene,
    scene_summary,
)

SIZE = 48


@pytest.fixture(scope="module")
def scene_dir(shared_data, tmp_path_factory) -> Path:
    from galprism.simulate.fields import ScenesConfig
    from galprism.simulate.fields_batch import simulate_scenes

    folder = tmp_path_factory.mktemp("scenes")
    simulate_scenes(ScenesConfig(n=2, size=SIZE, seed=5, inner_fraction=0.7), folder)
    return folder


def _perfect(case) -> SceneDetections:
    """Detections that are exactly the truth: positions, fluxes, images, kinds."""
    t = case.truth
    flux = np.asarray(t["flux"], dtype=np.float64)
    return SceneDetections(
        x=np.asarray(t["x"], dtype=np.float64),
        y=np.asarray(t["y"], dtype=np.float64),
        flux=flux.copy(),
        images=case.images.copy(),
        kind=np.asarray(t["kind"]).astype(str),
        quantiles={k: flux * (1 + (lv - 0.5) * 0.1) for k, lv in QUANTILE_LEVELS.items()},
    )


# ---------------------------------------------------------------- matching


def test_matching_takes_nearest_pairs_first_and_is_one_to_one():
    """Truth A(10,10), B(13,10), C(30,30); detections at 11 and 12.5 px, and one far away.
    B-d1 (0.5 px) is taken before A-d0 (1 px), so A gets d0 and B d1; C has none within
    3 px. Fails if one detection can serve two true sources, or if truth rows take their
    nearest detection in row order (the last case: row 0 would take the detection that is
    row 1's at 0.1 px, leaving row 1 unmatched)."""
    truth = np.array([[10.0, 10.0], [13.0, 10.0], [30.0, 30.0]])
    det = np.array([[11.0, 10.0], [12.5, 10.0], [50.0, 50.0]])
    assert match_sources(truth, det, 3.0).tolist() == [0, 1, -1]
    # One detection between two true sources goes to the nearer one only.
    m = match_sources(np.array([[0.0, 0.0], [2.0, 0.0]]), np.array([[1.2, 0.0]]), 3.0)
    assert m.tolist() == [-1, 0]
    # Row-order greedy matching would give truth 0 the detection its neighbour is closer to.
    m = match_sources(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[0.9, 0.0], [-2.5, 0]]), 3.0)
    assert m.tolist() == [1, 0]


def test_matching_respects_the_radius_and_empty_inputs():
    """A detection farther than the radius is never matched; no truth or no detection gives
    all -1. Fails if the radius is ignored or an empty input raises."""
    assert match_sources(np.array([[0.0, 0.0]]), np.array([[3.01, 0.0]]), 3.0).tolist() == [-1]
    assert match_sources(np.array([[0.0, 0.0]]), np.array([[3.0, 0.0]]), 3.0).tolist() == [0]
    assert match_sources(np.zeros((0, 2)), np.ones((2, 2)), 3.0).tolist() == []
    assert match_sources(np.ones((2, 2)), np.zeros((0, 2)), 3.0).tolist() == [-1, -1]
    rng = np.random.default_rng(0)
    truth, det = rng.uniform(0, 20, (30, 2)), rng.uniform(0, 20, (25, 2))
    m = match_sources(truth, det, 2.0)
    used = m[m >= 0]
    assert used.size == np.unique(used).size, "a detection matched twice"
    d = np.hypot(*(truth[m >= 0] - det[used]).T)
    assert (d <= 2.0).all()


# ---------------------------------------------------------------- measures


@pytest.mark.needs_data
def test_perfect_recovery_has_zero_errors_and_full_coverage(scene_dir):
    """Detections equal to the truth give zero flux, RMSE, centroid and shape errors, every
    kind right, every interval covering, the scene total exact. Fails if a measure compares
    the wrong planes/rows, or the windows of truth and estimate differ."""
    cases = load_scene_set(scene_dir)
    assert len(cases) == 2
    for case in cases:
        rows, scene = measure_scene(case, _perfect(case), "perfect")
        assert len(rows) == len(case.truth) >= 3
        assert scene["n_matched"] == scene["n_detected"] == len(case.truth)
        assert scene["total_flux_err"] == pytest.approx(0.0, abs=1e-12)
        for r in rows:
            assert r["matched"] and r["flux_err"] == 0.0 and r["abs_flux_err"] == 0.0
            assert r["rmse"] == 0.0 and r["centroid_err"] == 0.0
            assert r["kind_ok"] is True and r["flux_in68"] and r["flux_in95"]
        g = [r["g_err"] for r in rows if not math.isnan(r["g_err"])]
        assert g and max(g) == 0.0


@pytest.mark.needs_data
def test_flux_z_is_the_error_over_the_68_percent_half_width(scene_dir):
    """Fluxes and intervals shifted 6.8 % of the flux high, the 68 % interval +-3.4 % wide:
    every source's ``flux_z`` is +2 and the truth is outside its 68 % interval. Fails if z
    divides by the full width, takes the spread from the wrong quantiles or has the
    wrong sign."""
    case = load_scene_set(scene_dir)[0]
    det = _perfect(case)
    shift = 0.068 * det.flux
    det.flux = det.flux + shift
    det.quantiles = {k: v + shift for k, v in det.quantiles.items()}
    rows, _ = measure_scene(case, det, "high")
    for r in rows:
        assert r["flux_z"] == pytest.approx(2.0, rel=1e-9)
        assert r["flux_in68"] is False


@pytest.mark.needs_data
def test_summary_counts_completeness_purity_kinds_and_coverage(scene_dir):
    """One true source missed, one spurious detection, one wrong kind, one flux inside the
    95% but not the 68% interval, one flux 10% high: completeness, purity, accuracy and
    coverage are the fractions these imply. Fails if unmatched sources enter accuracy or
    coverage, or purity counts the wrong denominator."""
    case = load_scene(sorted(scene_dir.glob("*.fits"))[0])
    n = len(case.truth)
    det = _perfect(case)
    keep = np.arange(n - 1)  # the last true source is missed
    far = np.array([-50.0])  # a spurious detection far from every source
    q = {k: np.concatenate([v[keep], [1.0]]) for k, v in det.quantiles.items()}
    f0 = det.flux[0]
    q["q16"][0], q["q84"][0] = 1.02 * f0, 1.05 * f0  # truth outside 68%...
    q["q025"][0], q["q975"][0] = 0.9 * f0, 1.1 * f0  # ...inside 95%
    kinds = det.kind[keep].copy()
    kinds[1] = "star" if kinds[1] == "galaxy" else "galaxy"
    flux = det.flux[keep].copy()
    flux[2] *= 1.1
    d = SceneDetections(
        x=np.concatenate([det.x[keep], far]),
        y=np.concatenate([det.y[keep], far]),
        flux=np.concatenate([flux, [5.0]]),
        images=np.concatenate([det.images[keep], np.zeros((1, SIZE, SIZE))]),
        kind=np.concatenate([kinds, ["galaxy"]]),
        quantiles=q,
    )
    rows, scene = measure_scene(case, d, "m")
    assert rows[-1]["matched"] is False and math.isnan(rows[-1]["abs_flux_err"])
    assert rows[2]["flux_err"] == pytest.approx(0.1)
    res = SceneEvalResult(
        [case],
        rows,
        [scene],
        {"m": {"label": "m", "settings": {}, "seconds": 1.0, "failed_scenes": 0}},
    )
    s = scene_summary(res, {"command": "x"})["methods"]["m"]
    m = n - 1
    assert s["all"]["completeness"] == pytest.approx(m / n)
    assert s["purity"] == pytest.approx(m / n)  # n detections, n - 1 real
    assert s["star_galaxy_accuracy"] == pytest.approx((m - 1) / m)
    assert s["coverage68"] == pytest.approx((m - 1) / m)
    assert s["coverage95"] == pytest.approx(1.0)
    assert s["n_intervals"] == m
    true_total = float(np.sum(case.truth["flux"]))
    expect = (flux.sum() + 5.0 - true_total) / true_total
    assert s["total_flux_err"] == pytest.approx(expect)
    assert s["all"]["abs_flux_err"] == 0.0  # the median of m values of which one is 0.1


@pytest.mark.needs_data
def test_scene_loader_refuses_other_views_and_missing_truth(scene_dir, tmp_path):
    """A galaxies-view file and a scene without its truth file are refused with one line
    naming the file. Fails if a wrong folder is evaluated against nothing."""
    src = sorted(scene_dir.glob("*.fits"))[0]
    other = tmp_path / src.name
    shutil.copy(src, other)
    with pytest.raises(InputError, match="truth file"):
        load_scene(other)
    with fits.open(other, mode="update") as h:
        h[0].header["VIEW"] = "galaxies"
    with pytest.raises(InputError, match=f"{other.name}.*VIEW = 'galaxies'"):
        load_scene(other)


# ---------------------------------------------------------------- CLI


@pytest.mark.needs_data
def test_cli_scenes_photutils_and_sep_end_to_end(scene_dir, tmp_path, capsys, monkeypatch):
    """``evaluate --scenes --methods photutils,sep`` on one scene writes the report, one CSV
    row per true source and method, prints the summary with --json and refuses to
    overwrite; wrong flag combinations are usage errors (exit 2). (sep is in the test extra.)"""
    out = tmp_path / "report"
    argv = ["evaluate", "--scenes", "--test-dir", scene_dir, "--limit", "1", "-o", out]
    argv += ["--methods", "photutils,sep", "--json", "-q"]
    code, recs, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 0, err
    summary = recs[0]
    n_truth = len(load_scene_set(scene_dir, 1)[0].truth)
    assert summary["n_scenes"] == 1 and summary["n_sources"] == n_truth
    assert set(summary["methods"]) == {"photutils", "sep"}
    for m in summary["methods"].values():
        assert 0 < m["all"]["completeness"] <= 1 and m["n_detected"] > 0
    for name in ("summary.md", "summary.json", "results.csv", "scenes.csv"):
        assert (out / name).is_file(), name
    assert (out / "scene_flux_err.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 * n_truth
    assert {r["method"] for r in rows} == {"photutils", "sep"}
    text = (out / "summary.md").read_text()
    assert "most blended third" in text and "brightest fifth" in text

    code, _, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 1 and any("--overwrite" in line for line in err), err
    bad = [
        ["evaluate", "--scenes", "-o", tmp_path / "r2"],
        [
            "evaluate",
            "--scenes",
            "--test-dir",
            scene_dir,
            "-o",
            tmp_path / "r3",
            "--methods",
            "asvd",
        ],
        ["evaluate", "--test-dir", scene_dir, "-o", tmp_path / "r4", "--methods", "sep"],
        ["evaluate", "--test-dir", scene_dir, "-o", tmp_path / "r5", "--match-radius", "2"],
    ]
    for b in bad:
        code, _, _, err = run_cli(b, capsys, monkeypatch)
        assert code == 2, (b, err)


def _small_prior(folder: Path) -> Path:
    """A smooth 12 x 12 Gaussian galaxy prior on HSC's pixels, saved as a prior folder."""
    from galprism.frame import Frame
    from galprism.gaussian import GaussianPrior
    from galprism.priorset import PriorSet

    size = 12
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1).to(torch.float64)
    cov = 20.0 * torch.exp(-(torch.cdist(p, p) ** 2) / 4.0) + 1e-2 * torch.eye(size * size)
    r2 = ((p - (size - 1) / 2) ** 2).sum(1)
    mean = (10.0 * torch.exp(-r2 / 4.0)).reshape(1, size, size)
    prior = GaussianPrior.from_covariance(mean, cov)
    frame = Frame((1, size, size), pixel_scale=0.168, zeropoint=27.0, bunit="count")
    return PriorSet("small", "gaussian", ["galaxy"], [prior], frame).save(folder)


@pytest.mark.needs_data
def test_cli_scenes_galprism_records_seed_kinds_and_intervals(
    scene_dir, tmp_path, capsys, monkeypatch
):
    """galprism's scene mode through ``evaluate --scenes``: the scene's seed is the one
    ``galprism separate`` would use, matched sources carry a kind and interval flags, and
    the summary has star/galaxy accuracy and coverage. Fails if the seed is not derived
    from the file name or the catalogue's quantiles are not read."""
    from galprism.io.inputs import cutout_seed

    prior = _small_prior(tmp_path / "prior")
    out = tmp_path / "report"
    argv = ["evaluate", "--scenes", "--test-dir", scene_dir, "--limit", "1", "-o", out]
    argv += ["--methods", "galprism", "--prior", prior, "--steps", "4", "--n-samples", "4"]
    argv += ["--seed", "3", "--device", "cpu", "--rho", "7", "--json", "-q"]
    code, recs, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 0, err
    g = recs[0]["methods"]["galprism"]
    assert g["n_matched"] > 0 and g["n_intervals"] == g["n_matched"]
    assert 0 <= g["star_galaxy_accuracy"] <= 1 and 0 <= g["coverage95"] <= 1
    assert g["settings"]["steps"] == 4 and g["settings"]["n_samples"] == 4
    assert g["settings"]["rho"] == 7  # every sampler flag reaches the scene sampler
    (scene,) = list(csv.DictReader((out / "scenes.csv").open()))
    assert int(scene["seed"]) == cutout_seed(3, scene["scene"])
    rows = [r for r in csv.DictReader((out / "results.csv").open()) if r["matched"] == "True"]
    assert rows and all(r["kind_est"] in ("galaxy", "star") for r in rows)
    assert all(r["flux_in95"] in ("True", "False") for r in rows)
    assert all(float(r["rmse"]) >= 0 for r in rows)


# ---------------------------------------------------------------- scarlet2 plumbing

FAKE_WORKER = """#!{python}
import sys
import numpy as np
_, worker, inp, out = sys.argv
d = np.load(inp)
mode = {mode!r}
if mode == "crash":
    sys.exit("boom")
h, w = d["image"].shape
models = np.zeros((len(d["centers"]), h, w))
for k, (y, x) in enumerate(d["centers"]):
    models[k, int(y), int(x)] = 100.0 + k  # a point of known flux at each detection
    models[k, int(y), int(x) + 1] = 100.0 + k
status = "ok" if mode == "ok" else "ValueError: no fit"
np.savez(out, models=models, seconds=np.array(0.1), status=np.array(status),
         version=np.array("fake"))
"""


def _fake_python(tmp_path: Path, mode: str) -> str:
    import sys

    path = tmp_path / f"python-{mode}"
    path.write_text(FAKE_WORKER.format(python=sys.executable, mode=mode))
    path.chmod(0o755)
    return str(path)


@pytest.mark.needs_data
def test_scarlet2_scene_reads_every_rendering_and_reports_worker_failures(scene_dir, tmp_path):
    """The scarlet2 adapter gets one rendering per photutils detection back: flux is the sum
    of the rendering, position its centroid; a fit that fails in the worker or a crashed
    worker is an error naming the scene, counted as a failed scene by the evaluation,
    which goes on. Fails if renderings are paired with the wrong detections or
    a worker failure stops the run."""
    from galprism.errors import GalprismError
    from galprism.evaluate.scene_peers import PhotutilsScene, Scarlet2Scene
    from galprism.evaluate.scenes import evaluate_scenes

    case = load_scene_set(scene_dir, 1)[0]
    det = Scarlet2Scene(_fake_python(tmp_path, "ok")).detect(case)
    n_phot = len(PhotutilsScene().detect(case))
    assert len(det) == n_phot > 0
    assert det.flux.tolist() == [2 * (100.0 + k) for k in range(n_phot)]
    assert det.images is not None and det.images.sum(axis=(1, 2)).tolist() == det.flux.tolist()
    iy, ix = np.unravel_index(det.images[0].argmax(), det.images[0].shape)
    assert (det.x[0], det.y[0]) == (ix + 0.5, iy)

    with pytest.raises(GalprismError, match=f"{case.name}: fit failed: ValueError: no fit"):
        Scarlet2Scene(_fake_python(tmp_path, "fail")).detect(case)
    crash = Scarlet2Scene(_fake_python(tmp_path, "crash"))
    with pytest.raises(GalprismError, match="worker failed"):
        crash.detect(case)
    warnings: list[str] = []
    res = evaluate_scenes([case], [crash, PhotutilsScene()], warn=warnings.append)
    assert res.methods["scarlet2"]["failed_scenes"] == 1 and "boom" in warnings[0]
    assert any(s["method"] == "photutils" and s["n_matched"] > 0 for s in res.scenes)

"""What a new user meets in the first hour: each test names the mistake it guards against."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from fits_factory import FakePrior, galaxy_image, gaussian_psf, make_cutout, run_cli

from galprism.notes import Note, NoteKind


def test_logprob_scores_sample_and_separate_outputs_of_the_builtin_prior(
    tmp_path, capsys, monkeypatch
):
    """`galprism logprob` on `sample`'s and on `separate`'s FITS output gives finite log p with the
    float32 built-in network (it crashed: float64 FITS pixels met float32 weights)."""
    drawn = tmp_path / "drawn.fits"
    code, _, _, err = run_cli(
        ["sample", "-n", "1", "--steps", "2", "--source", "galaxy", "-o", drawn, "--device", "cpu"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    cut = make_cutout(
        tmp_path / "cut.fits", shape=(48, 48), scale=0.168, sigma=0.5, header={"MAGZERO": 27.0}
    )
    separated = tmp_path / "cut.galprism.fits"
    code, _, _, err = run_cli(
        ["separate", cut, "-o", separated, "-n", "1", "--steps", "2", "--device", "cpu", "-q"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    for path in (drawn, separated):
        code, recs, _, err = run_cli(
            ["logprob", "--source", "galaxy", "--steps", "2", "--probes", "1", "--json", path],
            capsys,
            monkeypatch,
        )
        assert code == 0, f"{path.name}: {err}"
        assert len(recs) == 1 and math.isfinite(recs[0]["log_prob"]), recs


@pytest.fixture
def data_dir() -> Path:
    """The shared real-data folder, or a skip naming what is missing."""
    from galprism.errors import ConfigError
    from galprism.simulate.data import find_data_dir

    try:
        return Path(find_data_dir())
    except ConfigError:
        pytest.skip("shared COSMOS/HSC data (../shared/data or $GALPRISM_DATA_DIR) not found")


def _lines(err: list[str], start: str) -> list[str]:
    return [line for line in err if line.startswith(start)]


def test_separate_reports_each_output_and_a_summary_off_a_terminal(tmp_path, capsys, monkeypatch):
    """Off a terminal each output, error and skip gets one stderr line plus a final summary;
    --quiet leaves only the errors (before, a run off a terminal printed nothing)."""
    good = [make_cutout(tmp_path / f"c{i}.fits", seed=i, header={"MAGZERO": 27.0}) for i in (0, 1)]
    bad = tmp_path / "broken.fits"
    bad.write_text("not a FITS file")
    argv = ["separate", good[0], bad, good[1], "--output-dir", tmp_path / "o", "-n", "2"]
    code, _, _, err = run_cli(argv, capsys, monkeypatch, prior=FakePrior())
    assert code == 1, err
    wrote = _lines(err, "galprism: wrote ")
    assert len(wrote) == 2, err
    for path in good:
        out = tmp_path / "o" / f"{path.stem}.galprism.fits"
        line = next(x for x in wrote if f"wrote {out} (input {path}, chi2 " in x)
        assert line.endswith(" s)"), line
    errors = _lines(err, "galprism: error: ")
    assert len(errors) == 1 and str(bad) in errors[0], err
    assert err[-1].startswith("galprism: 2 written, 0 skipped, 1 failed in "), err[-1]

    code, _, _, err = run_cli([*argv, "--skip-existing"], capsys, monkeypatch, prior=FakePrior())
    assert len(_lines(err, "galprism: skipped ")) == 2, err
    assert err[-1].startswith("galprism: 0 written, 2 skipped, 1 failed"), err

    code, _, _, err = run_cli([*argv, "--overwrite", "-q"], capsys, monkeypatch, prior=FakePrior())
    assert code == 1 and len(err) == 1 and err[0].startswith("galprism: error: "), err


def test_json_lines_keep_input_order_across_shape_batches(tmp_path, capsys, monkeypatch):
    """Cutouts of two grids are batched apart (A, C first); --json still lists A, B, C, D, E."""
    coarse = {"shape": (8, 8), "scale": 0.4, "psf": gaussian_psf(5, 0.8)}  # grid factor 2
    paths = [
        make_cutout(tmp_path / f"{name}.fits", seed=i, **({} if name in "ace" else coarse))
        for i, name in enumerate("abcde")
    ]
    code, recs, _, err = run_cli(
        ["separate", *paths, "--output-dir", tmp_path / "o", "--json", "--batch-size", "2"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
    )
    assert code == 0, err
    assert [r["input"] for r in recs] == [str(p) for p in paths]
    finished = [line.split("(input ")[1].split(",")[0] for line in _lines(err, "galprism: wrote")]
    assert finished[:2] == [str(paths[0]), str(paths[2])], "the batches did not reorder: no test"


class _Bar:
    """Records what the progress bar was told."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.console = self

    def add_task(self, description: str, total: int) -> int:
        self.events.append(f"total {total}")
        return 0

    def advance(self, task: int) -> None:
        self.events.append("advance")

    def print(self, text: str, **kw: object) -> None:
        self.events.append(text)

    def stop(self) -> None:
        self.events.append("stop")


def test_progress_bar_advances_once_per_cutout(tmp_path, capsys, monkeypatch):
    """On a terminal the bar advances after each cutout's line, not once per batch of 4."""
    import sys

    bar = _Bar()
    monkeypatch.setattr("galprism.cli._progress.stderr_bar", lambda: bar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    paths = [make_cutout(tmp_path / f"c{i}.fits", seed=i) for i in range(5)]
    code, _, _, err = run_cli(
        ["separate", *paths, "--output-dir", tmp_path / "o"], capsys, monkeypatch, prior=FakePrior()
    )
    assert code == 0, err
    assert bar.events[0] == "total 5" and bar.events.count("advance") == 5, bar.events
    for i, event in enumerate(bar.events):
        if event == "advance":
            assert bar.events[i - 1].startswith("galprism: wrote "), bar.events


def test_larger_image_is_refused_unless_a_cutout_is_asked_for(tmp_path, capsys, monkeypatch):
    """A 40x40 image is not cropped silently to a 16x16 prior; with --center the header and the
    stderr line say which input pixels were modelled."""
    big = make_cutout(tmp_path / "big.fits", shape=(40, 40))
    out = tmp_path / "big.galprism.fits"
    code, _, _, err = run_cli(["separate", big, "-o", out], capsys, monkeypatch, prior=FakePrior())
    assert code == 1 and not out.exists(), err
    assert str(big) in err[0] and "40x40 pixels is larger than the 16x16-pixel footprint" in err[0]

    code, recs, _, err = run_cli(
        ["separate", big, "-o", out, "--center", "20,20", "--json"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
    )
    assert code == 0, err
    region = "x 12-27, y 12-27 (0-based) of the 40x40 image"
    assert f"modelled {region}" in _lines(err, "galprism: wrote")[0], err
    assert recs[0]["modelled"] == f"modelled input pixels {region}"
    header = fits.getheader(out)
    assert header["MODELLED"] == "x 12-27, y 12-27 of 40x40 image"
    assert (header["CROPX0"], header["CROPY0"]) == (12, 12)
    assert any(region in str(c) for c in header["COMMENT"])


def _five_band_cube(path: Path, header: dict) -> Path:
    """Band b holds the galaxy at (b + 1) times its flux, so the band modelled can be told."""
    image = np.stack([galaxy_image((16, 16), flux=100.0 * (b + 1), seed=b)[0] for b in range(5)])
    return make_cutout(
        path,
        shape=(5, 16, 16),
        image=image,
        psf=gaussian_psf(9, 1.0, n_bands=5),
        header={"MAGZERO": 27.0, **header},
    )


def test_band_picks_one_band_of_a_cube_by_name_or_index(tmp_path, capsys, monkeypatch):
    """--band i and --band 2 model the same (third) band of a 5-band cube for a 1-band prior;
    an unknown name or index is one error naming the file and its bands."""
    cube = _five_band_cube(tmp_path / "cube.fits", {"BANDS": "g,r,i,z,y"})
    flux = {}
    for band in ("i", "2", "0"):
        out = tmp_path / f"band{band}.fits"
        code, recs, _, err = run_cli(
            ["separate", cube, "-o", out, "--band", band, "--json", "-q"],
            capsys,
            monkeypatch,
            prior=FakePrior(jitter=0.0),
        )
        assert code == 0, err
        flux[band] = recs[0]["sources"]["galaxy"]["flux_mean"]
        assert any("band" in str(c) for c in fits.getheader(out)["COMMENT"])
    assert flux["i"] == flux["2"] and len(flux["i"]) == 1
    assert flux["i"][0] / flux["0"][0] == pytest.approx(3.0, rel=0.05), flux
    for band, why in (("q", "no band named 'q'"), ("7", "no band 7")):
        code, recs, _, err = run_cli(
            ["separate", cube, "-o", tmp_path / "x.fits", "--band", band, "--json"],
            capsys,
            monkeypatch,
            prior=FakePrior(),
        )
        assert code == 1 and len(_lines(err, "galprism: error:")) == 1, err
        line = _lines(err, "galprism: error:")[0]
        assert str(cube) in line and why in line and "0=g, 1=r, 2=i, 3=z, 4=y" in line, line
    code, _, _, err = run_cli(
        ["separate", cube, "-o", tmp_path / "x.fits"], capsys, monkeypatch, prior=FakePrior()
    )
    assert code == 1 and "5 band(s)" in err[0], "a cube without --band must still be refused"


def test_band_names_from_filter_keywords():
    """FILTER1..FILTERn name the bands of a cube when BANDS is absent; FILTER a single band."""
    from galprism.io.read import band_names

    h = fits.Header({f"FILTER{i + 1}": f"HSC-{b}" for i, b in enumerate("GRIZY")})
    assert band_names(5, h) == ["HSC-G", "HSC-R", "HSC-I", "HSC-Z", "HSC-Y"]
    assert band_names(1, fits.Header({"FILTER": "F814W"})) == ["F814W"]
    assert band_names(3, fits.Header({"FILTER": "F814W"})) is None


def _shifted_psf(size: int, dx: float, dy: float, total: float = 1.0) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    k = np.exp(-((r[None, :] - dx) ** 2 + (r[:, None] - dy) ** 2) / (2 * 1.3**2))
    return k / k.sum() * total


def test_off_center_psf_is_recentered_with_its_flux():
    """A PSF 1.6 px off-center comes back centered to 0.01 px with its sum kept
    and a note saying by how much it was moved."""
    from galprism.io.psf import recenter_psf

    psf = _shifted_psf(15, 1.4, -0.8, total=2.5)
    out, notes = recenter_psf(psf, "p.fits")
    r = np.arange(out.shape[-1]) - (out.shape[-1] - 1) / 2
    cx = (out.sum(0) * r).sum() / out.sum()
    cy = (out.sum(1) * r).sum() / out.sum()
    assert abs(cx) < 0.01 and abs(cy) < 0.01, (cx, cy)
    assert out.sum() == pytest.approx(2.5, rel=1e-12)
    assert out.shape[0] % 2 == 1 and notes == [
        Note(NoteKind.PSF_RECENTERED, "PSF p.fits re-centered by (-1.40, +0.80) px")
    ]
    kept, notes = recenter_psf(_shifted_psf(15, 0.5, 0.3), "p.fits")
    assert notes == [] and kept.shape == (15, 15), "a PSF within tolerance must stay as it is"


def test_even_sized_psf_is_padded_and_recentered(tmp_path, capsys, monkeypatch):
    """A 10x10 PSF (no central pixel) is padded to 11x11 and re-centered with
    its flux kept; the output header says so."""
    from galprism.io.psf import recenter_psf

    r = np.arange(10) - 4.5
    psf = np.exp(-(r[None, :] ** 2 + r[:, None] ** 2) / (2 * 1.2**2))
    psf /= psf.sum()
    out, notes = recenter_psf(psf, "p.fits")
    c = np.arange(out.shape[-1]) - (out.shape[-1] - 1) / 2
    assert out.shape[0] % 2 == 1 and out.shape[0] == out.shape[1]
    assert abs((out.sum(0) * c).sum()) < 0.01 and abs((out.sum(1) * c).sum()) < 0.01
    assert out.sum() == pytest.approx(1.0, rel=1e-12)
    assert notes == [
        Note(
            NoteKind.PSF_RECENTERED,
            "PSF p.fits padded from 10x10 to 11x11 and re-centered by (+0.50, +0.50) px",
        )
    ]

    cut = make_cutout(tmp_path / "c.fits", psf=psf)
    code, _, _, err = run_cli(
        ["separate", cut, "-o", tmp_path / "o.fits"], capsys, monkeypatch, prior=FakePrior()
    )
    assert code == 0, err
    comments = "".join(str(c) for c in fits.getheader(tmp_path / "o.fits")["COMMENT"])
    assert "padded from 10x10 to 11x11 and re-centered by (+0.50, +0.50) px" in comments


def test_real_hst_psf_is_recentered_and_recorded(tmp_path, capsys, monkeypatch, data_dir):
    """The real HST PSF, 0.74, 0.98 px off-center, is accepted with a re-centering note in the
    output header and a warning, instead of being refused."""
    psf = data_dir / "multiview" / "PSF_HST.fits"
    cut = make_cutout(tmp_path / "hst.fits", shape=(200, 200), scale=0.03, psf=None)
    out = tmp_path / "hst.galprism.fits"
    code, _, _, err = run_cli(
        ["separate", cut, "--psf", psf, "-o", out, "-n", "1", "--center", "100,100"],
        capsys,
        monkeypatch,
        prior=FakePrior(pixel_scale=0.03, shape=(1, 16, 16)),
    )
    assert code == 0, err
    note = f"PSF {psf} re-centered by (-0.74, -0.98) px"
    assert any(note in line for line in err), err
    assert note in "".join(str(c) for c in fits.getheader(out)["COMMENT"])  # long cards wrap


def test_psf_with_another_pixel_scale_is_refused(tmp_path, capsys, monkeypatch):
    """A PSF file whose header says 0.1"/px (PIXSCALE, or CDELT in degrees) for a 0.2"/px image is
    one error naming both scales; the same scale is accepted."""
    cut = make_cutout(tmp_path / "c.fits", psf=None)
    for name, cards in (
        ("pix", {"PIXSCALE": 0.1}),
        ("cdelt", {"CDELT1": 0.1 / 3600, "CDELT2": 0.1 / 3600, "CUNIT1": "deg"}),
        ("same", {"PIXSCALE": 0.2}),
    ):
        psf = tmp_path / f"psf_{name}.fits"
        fits.PrimaryHDU(gaussian_psf(9, 1.0), header=fits.Header(cards)).writeto(psf)
        code, _, _, err = run_cli(
            ["separate", cut, "--psf", psf, "-o", tmp_path / f"{name}.out.fits"],
            capsys,
            monkeypatch,
            prior=FakePrior(),
        )
        if name == "same":
            assert code == 0, err
            continue
        assert code == 1, err
        assert str(psf) in err[0] and "0.1 arcsec" in err[0] and "0.2 arcsec" in err[0], err


def test_unwritable_output_folder_fails_before_any_sampling(tmp_path, capsys, monkeypatch):
    """An output path under a file (not a folder) is one error naming the folder, and the
    sampler never ran (before, the error came after all the sampling)."""
    cut = make_cutout(tmp_path / "c.fits")
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    prior = FakePrior()
    code, _, _, err = run_cli(
        ["separate", cut, "-o", blocker / "out.fits"], capsys, monkeypatch, prior=prior
    )
    assert code == 1 and prior.calls == [], err
    assert err == [f"galprism: error: {blocker}: output folder is not writable (Not a directory)"]


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions"
)
def test_read_only_output_folder_fails_before_any_sampling(tmp_path, capsys, monkeypatch):
    """A read-only --output-dir is one error naming it, before the sampler runs."""
    cut = make_cutout(tmp_path / "c.fits")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    prior = FakePrior()
    try:
        code, _, _, err = run_cli(
            ["separate", cut, "--output-dir", folder], capsys, monkeypatch, prior=prior
        )
    finally:
        folder.chmod(0o755)
    assert code == 1 and prior.calls == [] and str(folder) in err[0], err


def test_stale_temporaries_of_an_output_are_removed_on_the_next_run(tmp_path, capsys, monkeypatch):
    """A killed writer's 0-byte temporary of an output is removed when that output is written
    again; live writers' temporaries and other files' temporaries are left alone."""
    from galprism.atomic import atomic_path

    folder = tmp_path / "o"
    folder.mkdir()
    dead = 2**22 + 12345  # above Linux's largest pid: no process has it
    stale = folder / f".c.galprism.fits.{dead}.0badc0de.tmp"
    live = folder / f".c.galprism.fits.{os.getpid()}.0badc0de.tmp"
    other = folder / f".other.galprism.fits.{dead}.0badc0de.tmp"
    unrelated = folder / ".c.galprism.fits.notes.tmp"
    for p in (stale, live, other, unrelated):
        p.touch()
    cut = make_cutout(tmp_path / "c.fits")
    code, _, _, err = run_cli(
        ["separate", cut, "--output-dir", folder], capsys, monkeypatch, prior=FakePrior()
    )
    assert code == 0, err
    assert not stale.exists() and live.exists() and other.exists() and unrelated.exists()
    assert any(str(stale) in line and "interrupted" in line for line in err), err

    target = tmp_path / "prior.json"
    leftover = tmp_path / f".prior.json.{dead}.abc123xy.tmp"
    leftover.touch()
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
    assert target.read_text() == "{}" and not leftover.exists()


def test_a_shard_without_inputs_says_so(tmp_path, capsys, monkeypatch):
    """--shard I/16 holding none of the inputs prints one line saying so and exits 0."""
    from galprism.io.inputs import in_shard

    paths = [make_cutout(tmp_path / f"c{i}.fits", seed=i) for i in range(2)]
    empty = next(i for i in range(16) if not any(in_shard(p, i, 16) for p in paths))
    prior = FakePrior()
    code, recs, _, err = run_cli(
        ["separate", *paths, "--shard", f"{empty}/16", "--json"], capsys, monkeypatch, prior=prior
    )
    assert code == 0 and recs == [] and prior.calls == []
    assert err == [f"galprism: shard {empty}/16 holds none of the 2 inputs"]


def test_priors_listing_does_not_import_torch():
    """`galprism priors` (text and --json) reads prior.json only: torch is never imported, which
    made listing take seconds."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from galprism.cli.main import main\n"
        "for argv in (['priors'], ['priors', '--json'], ['priors', 'default']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (argv, exc.code)\n"
        "assert 'torch' not in sys.modules, 'galprism priors imported torch'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "hsc-galaxy" in done.stdout

"""`galprism fit` end to end: simulate a few cutouts, learn tiny priors, separate with them."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from galprism.cli.main import main
from galprism.errors import ConfigError
from galprism.fitting import load_fit_spec
from galprism.simulate import SimulationConfig, simulate_batch

SIZE = 32


@pytest.fixture(scope="module")
def sims(tmp_path_factory, shared_data):
    """24 sky and 24 galaxy cutouts of 32x32 pixels (train split), FITS + HDF5."""
    root = tmp_path_factory.mktemp("sims")
    out = {}
    for view, seed in (("sky", 1), ("galaxies", 2)):
        cfg = SimulationConfig(
            view=view,
            split="train",
            n=24,
            size=SIZE,
            seed=seed,
            psf="multiview",
            data_dir=str(shared_data),
        )
        res = simulate_batch(cfg, root / view)
        out[view] = res
    return root, out


def _run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def _fit_file(root, name="tiny", extra=""):
    h5 = {v: next((root / v).glob("*.h5")).name for v in ("sky", "galaxies")}
    h5 = {v: n for v, n in h5.items()}
    text = f"""
name = "{name}"
sources = ["galaxy", "sky"]
size = {SIZE}
pixel_scale = 0.168
{extra}

[[views]]
name = "sky"
sources = ["sky"]
data = "sky/{[n for n in (root / "sky").glob("*.h5") if "truth" not in n.name][0].name}"

[[views]]
name = "galaxies"
sources = ["galaxy", "sky"]
data = "galaxies/{[n for n in (root / "galaxies").glob("*.h5") if "truth" not in n.name][0].name}"

[em]
gaussian_laps = 1
diffusion_laps = 1
gaussian_rank = 4
estep_batch = 24
sampler = "ddim"
steps = 4
train_steps = 10
train_batch = 8
grid_samples = 4
grid_steps = 2

[network]
widths = [8, 16]
"""
    path = root / f"{name}.toml"
    path.write_text(text)
    return path


def test_fit_then_separate_with_the_learned_prior(sims, tmp_path, capsys):
    """A tiny prior trained with `galprism fit` must load in `galprism separate` and
    produce per-source sample cubes for a simulated cutout; the run folder must hold
    the per-lap history, checkpoints and PNG grids."""
    root, _ = sims
    fit_file = _fit_file(root, extra="support = {galaxy = 5}")
    code, out, err = _run(
        ["fit", str(fit_file), "-o", str(tmp_path / "run"), "--json", "-q"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["laps"] == 4  # (1 gaussian + 1 diffusion) x 2 stages
    history = [
        json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    ]
    assert [h["learning"] for h in history] == [["sky"], ["sky"], ["galaxy"], ["galaxy"]]
    assert all("chi2" in h and h["seconds"] > 0 for h in history)
    assert len(list((tmp_path / "run" / "checkpoints").glob("lap-*.pt"))) == 4
    assert list((tmp_path / "run" / "grids").glob("*-galaxy-prior.png"))

    cutout = sorted((root / "galaxies").glob("*.fits"))[0]
    code, out, err = _run(
        [
            "separate",
            str(cutout),
            "--prior",
            summary["prior"],
            "--output-dir",
            str(tmp_path / "sep"),
            "-n",
            "2",
            "--steps",
            "3",
            "--json",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    record = json.loads(out.splitlines()[0])
    with fits.open(record["output"]) as hdul:
        assert hdul["GALAXY"].data.shape == (2, SIZE, SIZE)
        assert hdul["SKY_MEAN"].data.shape == (SIZE, SIZE)
        assert hdul[0].header["PRIOR"] == "tiny"
        # the fit file's support reaches prior.json and confines the galaxy at separation
        assert json.loads((Path(summary["prior"]) / "prior.json").read_text())["support"] == {
            "galaxy": 5.0
        }
        assert hdul[0].header["SUPPORT"] == "galaxy=5"
        yy, xx = np.mgrid[:SIZE, :SIZE]
        outside = np.hypot(yy - (SIZE - 1) / 2, xx - (SIZE - 1) / 2) > 5
        assert np.all(hdul["GALAXY"].data[:, outside] == 0) and np.any(
            hdul["SKY"].data[:, outside] != 0
        )


def test_fit_asvd_then_separate_asvd(sims, tmp_path, capsys):
    """`fit --method asvd` writes a prior folder that `separate --method asvd` uses with
    the same inputs and outputs: one point-estimate 'sample' flagged in the header."""
    root, _ = sims
    fit_file = _fit_file(root, "tiny-asvd")
    code, out, err = _run(
        [
            "fit",
            str(fit_file),
            "--method",
            "asvd",
            "-o",
            str(tmp_path / "asvd"),
            "--rank-clean",
            "4",
            "--rank-unseen",
            "2",
            "--tau",
            "0.2",
            "--json",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["sources"] == ["sky", "galaxy"]
    cutout = sorted((root / "galaxies").glob("*.fits"))[0]
    code, out, err = _run(
        [
            "separate",
            str(cutout),
            "--prior",
            str(tmp_path / "asvd"),
            "--method",
            "asvd",
            "--output-dir",
            str(tmp_path / "sep"),
            "--json",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    with fits.open(json.loads(out)["output"]) as hdul:
        assert hdul["GALAXY"].data.shape == (1, SIZE, SIZE)
        assert hdul[0].header["POINTEST"] is True and hdul[0].header["PSFINCL"] is True
    code, out, err = _run(
        [
            "separate",
            str(cutout),
            "--prior",
            str(tmp_path / "asvd"),
            "--method",
            "diffusion",
            "--output-dir",
            str(tmp_path / "sep2"),
            "-q",
        ],
        capsys,
    )
    assert code == 2 and "asvd prior" in err
    code, out, err = _run(
        [
            "separate",
            str(cutout),
            "--prior",
            str(tmp_path / "asvd"),
            "--support",
            "galaxy=5",
            "--output-dir",
            str(tmp_path / "sep3"),
            "-q",
        ],
        capsys,
    )
    assert code == 2 and "asvd prior" in err and not (tmp_path / "sep3").exists()


def test_fit_file_errors_name_the_problem(tmp_path):
    """Unknown sources, unknown settings and missing files are one-line config errors."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'sources = ["galaxy"]\nsize = 8\n[[views]]\nname = "v"\nsources = ["star"]\ndata = "x.h5"\n'
    )
    with pytest.raises(ConfigError, match="unknown source 'star'"):
        load_fit_spec(bad)
    bad.write_text('sources = ["galaxy"]\nsize = 8\ncolour = 3\nviews = []\n')
    with pytest.raises(ConfigError, match="unknown settings"):
        load_fit_spec(bad)
    bad.write_text(
        'sources = ["galaxy"]\nsize = 8\nsupport = {star = 3}\n[[views]]\nname = "v"\nsources = ["galaxy"]\ndata = "x.h5"\n'
    )
    with pytest.raises(ConfigError, match="support names source 'star'"):
        load_fit_spec(bad)
    with pytest.raises(ConfigError, match="no such fit file"):
        load_fit_spec(tmp_path / "missing.toml")

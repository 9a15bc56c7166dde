"""`galprism fit` end to end: simulate a few cutouts, learn tiny priors, separate with them."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from galprism.cli.main import main
from galprism.diffusion import SamplerConfig
from galprism.em.config import ESTEP_SAMPLER
from galprism.errors import ConfigError
from galprism.fitting import em_config, load_fit_spec
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
train_steps = 10
train_batch = 8
grid_samples = 4
grid_steps = 2

[em.sampler]
method = "ddim"
steps = 4

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
    # the fit file's [em.sampler] is the sampler stored with the run and in its prior
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["sampler"]
    assert (stored["method"], stored["steps"], stored["trust"]) == ("ddim", 4, 4.0)
    training = json.loads((Path(summary["prior"]) / "prior.json").read_text())["training"]
    assert training["em"]["sampler"] == stored
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
        'sources = ["galaxy"]\nsize = 8\nsupport = {star = 3}\n[[views]]\nname = "v"\n'
        'sources = ["galaxy"]\ndata = "x.h5"\n'
    )
    with pytest.raises(ConfigError, match="support names source 'star'"):
        load_fit_spec(bad)
    with pytest.raises(ConfigError, match="no such fit file"):
        load_fit_spec(tmp_path / "missing.toml")


def _em_table_file(tmp_path, em: str) -> Path:
    path = tmp_path / "fit.toml"
    path.write_text(
        'sources = ["galaxy"]\nsize = 8\n[[views]]\nname = "v"\nsources = ["galaxy"]\n'
        f'data = "x.h5"\n{em}'
    )
    return path


def test_fit_file_em_sampler_table_and_schedules(tmp_path):
    """``[em.sampler]`` sets the E-step sampler over EM's defaults (not a separation's), and a
    list ``steps``/``corrections`` is a schedule whose last entry is the sampler's own value.
    Fails if a table key is dropped, EM's defaults (trust 4, one sample, exact VJPs) are
    replaced by SamplerConfig's, or a list is taken whole as the schedule."""
    em = '[em]\ndiffusion_laps = 3\n[em.sampler]\nmethod = "smc"\nsteps = [16, 32, 64]\n'
    em += "corrections = [2, 1]\nparticles = 4\ntau = 0.2\n"
    config = em_config(load_fit_spec(_em_table_file(tmp_path, em)), 1.0, None)
    assert config.sampler == SamplerConfig(
        "smc",
        64,
        corrections=1,
        tau=0.2,
        particles=4,
        n_samples=1,
        cg_iterations=1,
        trust=4.0,
        jacobian="vjp",
    )
    assert config.step_schedule == (16, 32) and config.correction_schedule == (2,)
    assert [(config.sampler_of(i).steps, config.sampler_of(i).corrections) for i in range(4)] == [
        (16, 2),
        (32, 1),
        (64, 1),
        (64, 1),
    ]
    plain = em_config(
        load_fit_spec(_em_table_file(tmp_path, "[em.sampler]\nsteps = [8]\n")), 1, None
    )
    assert plain.sampler == SamplerConfig(**{**ESTEP_SAMPLER.to_dict(), "steps": 8})
    assert plain.step_schedule == ()
    assert (
        em_config(load_fit_spec(_em_table_file(tmp_path, "")), 1.0, None).sampler == ESTEP_SAMPLER
    )


def test_fit_file_sampler_keys_in_the_older_layout_say_where_they_moved(tmp_path, capsys):
    """A fit file giving E-step sampler settings directly in ``[em]`` (the older layout) must
    be refused with a one-line ConfigError naming the file, the key and ``[em.sampler]``, as
    must unknown or invalid ``[em.sampler]`` settings; none may be silently ignored or read
    under the old name. ``galprism fit`` says so (exit 1) before reading the views' data (here
    missing), and writes no run folder."""
    cases = (
        (
            '[em]\nsampler = "ddim"\n',
            r"\[em\] sampler has moved to the \[em.sampler\] table \(as method\)",
        ),
        ("[em]\nsteps = 16\n", r"\[em\] steps has moved to the \[em.sampler\] table"),
        ("[em]\ntrust = 0.0\n", r"\[em\] trust has moved"),
        ("[em]\neta = 0.5\n", r"\[em\] eta belongs in the \[em.sampler\] table"),
        ("[em]\nstep_schedule = [4]\n", r"\[em.sampler\] \(steps = \[...\]\)"),
        ("[em.sampler]\nsteps = []\n", r"\[em.sampler\]: steps is an empty list"),
        ("[em.sampler]\nstep = 4\n", r"\[em.sampler\]: unknown sampler settings \['step'\]"),
        ('[em.sampler]\nmethod = "euler"\n', r"\[em.sampler\]: sampler: unknown method 'euler'"),
        ("[em.sampler]\nn_samples = 4\n", r"n_samples must be 1"),
    )
    for em, message in cases:
        path = _em_table_file(tmp_path, em)
        with pytest.raises(ConfigError, match=message) as info:
            em_config(load_fit_spec(path), 1.0, None)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    path = _em_table_file(tmp_path, "[em]\ncg_iterations = 3\n")
    code, _, err = _run(["fit", str(path), "-o", str(tmp_path / "run"), "-q"], capsys)
    assert code == 1 and "[em] cg_iterations has moved to the [em.sampler] table" in err, err
    assert not (tmp_path / "run").exists()

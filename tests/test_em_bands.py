"""`galprism fit` on multi-band simulated data: C-channel priors that know their bands."""

import json

import pytest
import torch
from astropy.io import fits

from galprism.cli.main import main
from galprism.errors import ConfigError
from galprism.fitting import data_bands, load_fit_spec, load_view
from galprism.priorset import load_priorset
from galprism.simulate import SimulationConfig, simulate_batch

SIZE = 32
BANDS = ("g", "r", "i")


@pytest.fixture(scope="module")
def band_sims(tmp_path_factory, shared_data):
    """16 sky and 16 galaxy cutouts of 32x32 pixels in g, r, i (galaxies also as FITS),
    and a single-band sky batch."""
    root = tmp_path_factory.mktemp("band_sims")
    for view, seed, bands in (("sky", 1, BANDS), ("galaxies", 2, BANDS), ("sky1", 3, None)):
        cfg = SimulationConfig(
            view=view.rstrip("1"),
            split="train",
            n=16,
            size=SIZE,
            seed=seed,
            psf="multiview",
            bands=bands,
            data_dir=str(shared_data),
        )
        simulate_batch(cfg, root / view, write_fits=view == "galaxies")
    return root


def _fit_file(root, sky="sky"):
    text = f"""
name = "tiny-gri"
sources = ["galaxy", "sky"]
size = {SIZE}
pixel_scale = 0.168

[[views]]
name = "sky"
sources = ["sky"]
data = "{sky}/hsc_sky_train.h5"

[[views]]
name = "galaxies"
sources = ["galaxy", "sky"]
data = "galaxies/hsc_galaxies_train.h5"

[em]
gaussian_laps = 1
diffusion_laps = 1
gaussian_rank = 4
estep_batch = 16
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
    path = root / f"fit-{sky}.toml"
    path.write_text(text)
    return path


def _run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_three_band_fit_gives_a_three_band_prior(band_sims, tmp_path, capsys):
    """A tiny g,r,i fit must run end to end and give priors whose frame names the bands
    and whose networks take and return 3 channels; `galprism sample` on it must write
    (N, 3, H, W) cubes. A 1-channel prior here means the bands were dropped."""
    code, out, err = _run(
        ["fit", str(_fit_file(band_sims)), "-o", str(tmp_path / "run"), "--json", "-q"],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    prior = load_priorset(summary["prior"])
    assert prior.frame.bands == BANDS
    assert prior.frame.shape == (3, SIZE, SIZE)
    for p in prior.priors:
        assert p.shape == (3, SIZE, SIZE)
        assert p.net.inp.in_channels == 3
        x = torch.zeros(2, 3, SIZE, SIZE)
        assert p.denoise(x, torch.full((2,), 0.5)).shape == (2, 3, SIZE, SIZE)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["shape"] == [3, SIZE, SIZE]
    assert stored["metadata"]["bands"] == list(BANDS)

    code, out, err = _run(
        [
            "sample", "--prior", summary["prior"], "-n", "2", "--steps", "4",
            "-o", str(tmp_path / "s.fits"), "--device", "cpu",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    with fits.open(tmp_path / "s.fits") as h:
        assert h["GALAXY"].data.shape == (2, 3, SIZE, SIZE)
        assert h["GALAXY"].header["BANDS"] == "g,r,i"
        assert torch.isfinite(torch.from_numpy(h["SKY"].data.astype("f4"))).all()


def test_views_with_different_bands_are_refused(band_sims):
    """A 3-band view and a 1-band view cannot train one prior: a ConfigError naming both."""
    fit = load_fit_spec(_fit_file(band_sims, sky="sky1"))
    data = [load_view(v, fit) for v in fit.views]
    assert data[0].bands is None and data[1].bands == BANDS
    with pytest.raises(ConfigError, match="different numbers of bands"):
        data_bands(data)


def test_fits_view_reads_band_names(band_sims):
    """A view of multi-band FITS cubes gets its band names from BANDS, as an HDF5 view
    does from its attribute; without them the prior's frame would lose the bands."""
    path = _fit_file(band_sims)
    path.write_text(
        path.read_text().replace(
            'data = "galaxies/hsc_galaxies_train.h5"', 'files = ["galaxies/*.fits"]'
        )
    )
    fit = load_fit_spec(path)
    data = [load_view(v, fit) for v in fit.views]
    assert data[1].y.shape[1:] == (3, SIZE, SIZE)
    assert data_bands(data) == (3, BANDS)

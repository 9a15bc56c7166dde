"""`galprism simulate --bands`: catalogue colours, per-band HSC PSFs and noise, file layout."""

import math

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from galprism.cli.main import main
from galprism.io.read import ReadOptions, read_cutout
from galprism.simulate import (
    SceneConfig,
    ScenesConfig,
    SceneSimulator,
    SimulationConfig,
    Simulator,
    simulate_batch,
    simulate_scenes,
)
from galprism.simulate.bands import STELLAR_LOCUS, gradient_weights, measure_band_noise
from galprism.simulate.fields import half_light_radius
from galprism.simulate.instrument import check_psf

GRIZY = ("g", "r", "i", "z", "y")


@pytest.fixture(scope="module")
def grizy(shared_data):
    """A prepared five-band galaxies-view simulator (train split, default gradient)."""
    return Simulator(
        SimulationConfig(
            view="galaxies", split="train", n=4, bands=GRIZY, data_dir=str(shared_data)
        )
    )


def _central_colours(sim, cutout):
    rec = sim.catalog.by_ident[cutout.central_ident]
    return np.array(rec.hsc_mags) - rec.hsc_mags[2]


def test_galaxy_colours_match_catalogue_magnitudes(grizy):
    """The central galaxy's intrinsic image in each band must have the catalogue's
    HSC colour relative to i (to 0.01 mag); otherwise galaxies are not coloured by their
    own magnitudes."""
    for index in range(3):
        c = grizy.cutout(index)
        flux = c.truth["galaxy"].astype(np.float64).sum(axis=(1, 2))
        colours = -2.5 * np.log10(flux / flux[2])
        np.testing.assert_allclose(colours, _central_colours(grizy, c), atol=0.01)
        # The recorded per-band fluxes are the i flux times the same colours.
        row = c.sources[0]
        assert row.role == "central"
        np.testing.assert_allclose(
            -2.5 * np.log10(c.source_fluxes[0] / c.source_fluxes[0][2]),
            _central_colours(grizy, c),
            atol=1e-9,
        )


def test_i_band_is_the_single_band_simulation(grizy, shared_data):
    """With the same seed the i plane holds exactly the single-band batch's galaxy (same
    layout, i keeps the F814W morphology); a difference means the band option changed
    what is placed."""
    single = Simulator(
        SimulationConfig(view="galaxies", split="train", n=4, data_dir=str(shared_data))
    )
    for index in range(2):
        a, b = grizy.cutout(index), single.cutout(index)
        assert [s.ident for s in a.sources] == [s.ident for s in b.sources]
        np.testing.assert_array_equal(a.truth["galaxy"][2], b.truth["galaxy"])


def test_colour_gradient_makes_blue_light_more_extended(shared_data):
    """With the gradient the g-band galaxy is larger than its i-band image (bluer outer
    light); without it every band is a scaled copy of i."""

    def radii(gradient):
        sim = Simulator(
            SimulationConfig(
                view="galaxies",
                split="train",
                n=1,
                bands=GRIZY,
                colour_gradient=gradient,
                mask_fraction=0.0,
                data_dir=str(shared_data),
            )
        )
        c = sim.cutout(1)
        gal = c.truth["galaxy"].astype(np.float64)
        x, y = c.sources[0].placement.x, c.sources[0].placement.y
        return gal, [half_light_radius(g, x, y) for g in gal]

    gal0, r0 = radii(0.0)
    np.testing.assert_allclose(gal0[0] / gal0[0].sum(), gal0[2] / gal0[2].sum(), atol=1e-6)
    _, r3 = radii(0.3)
    assert r3[0] > 1.05 * r3[2]
    assert r3[2] == pytest.approx(r0[2], rel=1e-5)
    np.testing.assert_allclose(gradient_weights(GRIZY, 0.3)[2:], 0.0)


def test_per_band_psfs_and_noise_are_the_real_hsc_ones(grizy, shared_data):
    """Each band's PSF is that band of hsc_cosmos_35.npz (unit sum), its noise sigma the
    sqrt(median variance) of that band (the documented 0.0127, 0.0141, 0.0203, 0.0333,
    0.0666 counts), and the drawn noise has that std."""
    with np.load(shared_data / "hsc" / "hsc_cosmos_35.npz") as npz:
        for b in range(5):
            np.testing.assert_allclose(grizy.bandset.psfs[b], check_psf(npz["psfs"][b], "psf"))
            expected = math.sqrt(np.median(npz["variance"][b].astype(np.float64)))
            assert grizy.bandset.sigmas[b] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(
        grizy.bandset.sigmas, [0.0127, 0.0141, 0.0203, 0.0333, 0.0666], atol=6e-5
    )
    measured = measure_band_noise(shared_data)
    for b, name in enumerate(GRIZY):
        # the clipped std of the source-masked real pixels agrees to 10%
        assert measured[name]["sigma_clipped"] == pytest.approx(grizy.bandset.sigmas[b], rel=0.1)
    noise = np.concatenate([grizy.cutout(i).truth["noise"] for i in range(3)], axis=1)
    np.testing.assert_allclose(noise.std(axis=(1, 2)), grizy.bandset.sigmas, rtol=0.04)
    c = grizy.cutout(0)
    np.testing.assert_allclose(c.variance[:, 0, 0], grizy.bandset.sigmas**2, rtol=1e-6)


def test_multiview_psfs_per_band(shared_data):
    """--psf multiview takes each band's kernel from PSF_HSC.fits."""
    sim = Simulator(
        SimulationConfig(
            view="sky", split="train", n=1, bands=("r", "y"), psf="multiview",
            data_dir=str(shared_data),
        )
    )  # fmt: skip
    cube = fits.getdata(shared_data / "multiview" / "PSF_HSC.fits")
    np.testing.assert_allclose(sim.bandset.psfs[0], check_psf(cube[1], "r"))
    np.testing.assert_allclose(sim.bandset.psfs[1], check_psf(cube[4], "y"))


def test_stars_are_on_the_stellar_locus(shared_data):
    """Stars get colours inside the stellar locus' range (g-i from its bluest to its
    reddest node)."""
    sim = Simulator(
        SimulationConfig(
            view="sky", split="train", n=1, bands=GRIZY, data_dir=str(shared_data),
            scene=SceneConfig(
                star_density=20.0
            ),
        )
    )  # fmt: skip
    gi = []
    for i in range(3):
        c = sim.cutout(i)
        for s, f in zip(c.sources, c.source_fluxes, strict=True):
            if s.role == "star":
                gi.append(-2.5 * math.log10(f[0] / f[2]))
    assert len(gi) > 5
    lo, hi = STELLAR_LOCUS[0, :2].sum(), STELLAR_LOCUS[-1, :2].sum()
    assert lo - 1e-9 <= min(gi) and max(gi) <= hi + 1e-9
    assert np.std(gi) > 0.1


def test_fits_and_hdf5_round_trip_of_bands(grizy, shared_data, tmp_path):
    """A five-band batch writes FITS cubes (bands first, BANDS/FILTERn/MAGZEROn, a PSF and
    VARIANCE cube, a mask per band) and an (N, C, H, W) HDF5 with the band names; reading
    them back gives the bands in order, and SCI = truth + noise off the mask, per band."""
    res = simulate_batch(grizy.config, tmp_path, simulator=grizy)
    assert res.n_written == 4 and not res.failed
    obs = sorted(tmp_path.glob("*.fits"))[0]
    with fits.open(obs) as h:
        sci = h["SCI"]
        assert sci.data.shape == (5, 48, 48)
        assert sci.header["BANDS"] == "g,r,i,z,y"
        assert [sci.header[f"FILTER{k}"] for k in range(1, 6)] == [
            "HSC-G", "HSC-R", "HSC-I", "HSC-Z", "HSC-Y"
        ]  # fmt: skip
        assert all(sci.header[f"MAGZERO{k}"] == 27.0 for k in range(1, 6))
        assert h["PSF"].data.shape == (5, 43, 43)
        assert h["VARIANCE"].data.shape == h["MASK"].data.shape == (5, 48, 48)
        np.testing.assert_allclose(
            [h[0].header[f"NOISESI{k}"] for k in range(1, 6)], grizy.bandset.sigmas
        )
        image, mask = sci.data, h["MASK"].data
    with fits.open(tmp_path / "truth" / obs.name.replace(".fits", ".truth.fits")) as t:
        total = t["TRUE_GALAXY_CONV"].data + t["TRUE_SKY_CONV"].data + t["TRUE_NOISE"].data
        table = Table(t["SOURCES"].data)
    good = mask == 0
    np.testing.assert_allclose(image[good], total[good], atol=1e-5)
    assert {f"FLUX_{b.upper()}" for b in GRIZY} <= set(table.colnames)
    z = read_cutout(obs, ReadOptions(band="z"))
    np.testing.assert_array_equal(np.asarray(z.image)[0], image[3])
    with h5py.File(res.hdf5) as f:
        assert f.attrs["bands"] == "g,r,i,z,y"
        assert f["images"].shape == f["mask"].shape == (4, 5, 48, 48)
        assert f["psf"].shape == (1, 5, 43, 43)
        np.testing.assert_array_equal(f["images"][0], image)
    with h5py.File(res.hdf5_truth) as f:
        assert f["galaxy"].shape == (4, 5, 48, 48)
        assert {f"flux_{b}" for b in GRIZY} <= set(f["sources"].dtype.names)


def test_scenes_in_several_bands(shared_data, tmp_path):
    """Multi-band scenes: per-band truth cubes that add up to SCI, and flux_<b>/mag_<b>
    columns equal to each source's summed noiseless image in that band."""
    cfg = ScenesConfig(n=2, bands=("g", "i", "y"), data_dir=str(shared_data))
    sim = SceneSimulator(cfg)
    field = sim.scene(1)
    assert field.images.shape[1:] == (3, 96, 96)
    np.testing.assert_allclose(
        field.images.sum(0) + field.background + field.noise, field.image, atol=2e-5
    )
    for k, b in enumerate(("g", "i", "y")):
        np.testing.assert_allclose(field.truth[f"flux_{b}"], field.images[:, k].sum(axis=(1, 2)))
    np.testing.assert_allclose(field.truth["flux"], field.truth["flux_i"])
    simulate_scenes(cfg, tmp_path, simulator=sim)
    ecsv = Table.read(sorted((tmp_path / "truth").glob("*.ecsv"))[0])
    assert {"flux_g", "flux_i", "flux_y", "mag_g"} <= set(ecsv.colnames)
    with fits.open(sorted(tmp_path.glob("*.fits"))[0]) as h:
        assert h["SCI"].header["BANDS"] == "g,i,y" and h["PSF"].data.shape[0] == 3


def test_single_band_config_records_nothing_new(shared_data):
    """Without --bands a batch's recorded configuration has no band keys (its files stay
    byte-identical to those written before bands existed)."""
    cfg = SimulationConfig(view="sky", split="train", n=1, data_dir=str(shared_data))
    assert not {"bands", "colour_gradient", "gradient_fwhm"} & set(cfg.to_dict())
    assert "bands" not in Simulator(cfg).meta()


@pytest.mark.parametrize(
    "extra",
    [
        ["--bands", "g,x"],
        ["--bands", "g,g"],
        ["--bands", "g,r", "--instrument", "hst"],
        ["--bands", "g,r", "--noise-sigma", "0.1"],
        ["--colour-gradient", "0.2"],
    ],
)
def test_cli_refuses_bad_band_options(extra, tmp_path, shared_data, capsys):
    """Unknown or repeated bands, bands with the HST instrument or a single noise level,
    and a gradient without bands are usage errors (exit 2) naming the flag."""
    with pytest.raises(SystemExit) as info:
        main(
            ["simulate", "--view", "sky", "--split", "train", "-n", "1", "-o", str(tmp_path)]
            + ["--data-dir", str(shared_data), *extra]
        )
    assert info.value.code == 2
    assert "--" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

"""``galprism simulate --view scenes``: per-source truth, stars, reproducibility, files, CLI.

The scenes use the real COSMOS/HSC data (the ``shared_data`` fixture of conftest.py);
without it the data-dependent tests are skipped with that reason. Images are small (48 px)
to keep the tests fast; the default is 96 px.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from galprism.errors import ConfigError, OutputExistsError
from galprism.simulate.cosmos import CosmosCatalog
from galprism.simulate.fields import (
    ScenesConfig,
    SceneSimulator,
    blendedness,
    half_light_radius,
    has_star,
)
from galprism.simulate.fields_batch import simulate_scenes

needs_data = pytest.mark.needs_data
SIZE = 48


@pytest.fixture(scope="module")
def catalog(shared_data) -> CosmosCatalog:
    return CosmosCatalog(data_dir=shared_data)


@pytest.fixture(scope="module")
def sim(catalog) -> SceneSimulator:
    return SceneSimulator(ScenesConfig(n=4, size=SIZE, seed=7, inner_fraction=0.7), catalog)


@pytest.fixture(scope="module")
def fields(sim):
    return [sim.scene(i) for i in range(6)]


# ---------------------------------------------------------------- pure functions


def test_has_star_gives_the_fraction_in_every_window():
    """Any run of consecutive scenes has round(k f) stars to within one; f = 0.5 is the odd
    indices. Fails if the rule drifts (a batch of 10 without 5 stars)."""
    assert [has_star(i, 0.5) for i in range(6)] == [False, True, False, True, False, True]
    for f in (0.0, 0.25, 0.5, 0.7, 1.0):
        for start in (0, 3, 11):
            k = sum(has_star(i, f) for i in range(start, start + 10))
            assert abs(k - 10 * f) <= 1, (f, start, k)


def test_half_light_radius_of_a_gaussian():
    """The half-light radius of a well-sampled round Gaussian is sigma * sqrt(2 ln 2).

    Fails if the radius is measured around the wrong center or the interpolation is off.
    """
    sigma = 3.0
    img = galsim.Gaussian(sigma=sigma).drawImage(nx=61, ny=61, scale=1.0, offset=(0.3, -0.2))
    r = half_light_radius(img.array, 30.3, 29.8)
    assert r == pytest.approx(sigma * math.sqrt(2 * math.log(2)), rel=0.03)
    assert math.isnan(half_light_radius(np.zeros((5, 5)), 2.0, 2.0))


def test_blendedness_zero_alone_and_half_under_a_twin():
    """An isolated source has blendedness 0; two identical sources on the same spot 0.5 each;
    a faint source under a bright one is near 1 and the bright one near 0. Fails if the
    footprint or the ratio is taken the wrong way round."""
    g = galsim.Gaussian(sigma=2.0)

    def img(x, y, flux):
        return g.withFlux(flux).drawImage(nx=60, ny=60, scale=1.0, offset=(x, y)).array

    apart = np.stack([img(-20, 0, 10), img(20, 0, 10)])
    b, area = blendedness(apart, 1e-3)
    np.testing.assert_allclose(b, 0.0, atol=1e-6)
    assert (area > 0).all()
    twin = np.stack([img(0, 0, 10), img(0, 0, 10)])
    np.testing.assert_allclose(blendedness(twin, 1e-3)[0], 0.5, atol=1e-12)
    buried = np.stack([img(0, 0, 1000), img(1, 0, 1)])
    b, _ = blendedness(buried, 1e-2)
    assert b[0] < 0.01 and b[1] > 0.99


def test_bad_scene_settings_are_refused():
    """Inverted or empty ranges and fractions outside [0, 1] are one-line ConfigErrors naming
    the field, before any data is read."""
    for bad, word in (
        ({"n_galaxies": (4, 2)}, "galaxy count"),
        ({"n_galaxies": (0, 2)}, "galaxy count"),
        ({"galaxy_mags": (26.0, 19.0)}, "galaxy magnitudes"),
        ({"star_fraction": 1.5}, "star fraction"),
        ({"inner_fraction": 0.0}, "inner fraction"),
        ({"footprint_sigma": 0.0}, "footprint"),
        ({"split": "dev"}, "split"),
    ):
        with pytest.raises(ConfigError, match=word) as exc:
            ScenesConfig(**bad).validate()
        assert "\n" not in str(exc.value)


# ---------------------------------------------------------------- truth


@needs_data
def test_truth_images_add_up_to_the_noiseless_image(fields):
    """Per-source truth images + residual = the image of all sources convolved together, and
    the truth fluxes add up to the noiseless image's flux (less the residual).

    Fails if a source is missing from the truth, counted twice, misplaced, or its truth image
    was convolved differently from the observation.
    """
    for f in fields:
        peak = np.abs(f.noiseless).max()
        diff = np.abs(f.images.sum(0) + f.background - f.noiseless).max()
        assert diff <= 1e-10 * peak, f"scene {f.index}: {diff:.3g} off (peak {peak:.3g})"
        total = float((f.noiseless - f.background).sum())
        assert float(f.truth["flux"].sum()) == pytest.approx(total, rel=1e-10)
        np.testing.assert_allclose(f.truth["flux"], f.images.sum(axis=(1, 2)), rtol=1e-12)
        # Sources sit inside the image: only far wings (of large Sersic galaxies in
        # these small test images) fall off it.
        assert (f.truth["flux"] <= f.truth["flux_placed"] * (1 + 1e-9)).all()
        assert (f.truth["flux"] >= 0.75 * f.truth["flux_placed"]).all()
        np.testing.assert_allclose(f.image, f.noiseless + f.noise, rtol=1e-6, atol=1e-6)


@needs_data
def test_scene_contents_follow_the_configuration(sim, catalog):
    """Over 10 consecutive scenes: 3-6 galaxies, exactly 5 with one star, magnitudes in range,
    COSMOS galaxies only from the test split, Sersic galaxies only where no COSMOS galaxy
    may be that bright, sources in the inner square, and some pairs closer than the sum of
    their half-light radii (blends). Fails if any of these drifts."""
    cfg = sim.config
    test_ids = set(catalog.split["test"])
    n_star, counts, pairs_close, models = 0, set(), 0, set()
    half = 0.5 * cfg.inner_fraction * SIZE
    c = 0.5 * (SIZE - 1)
    for i in range(3, 13):
        specs = sim.plan(i)[2]
        gal = [s for s in specs if s.role != "star"]
        stars = [s for s in specs if s.role == "star"]
        assert 3 <= len(gal) <= 6 and len(stars) <= 1
        counts.add(len(gal))
        n_star += len(stars)
        if stars:
            assert specs[-1].role == "star", "the star comes after the galaxies"
        for s in gal:
            assert cfg.galaxy_mags[0] <= s.mag <= cfg.galaxy_mags[1]
            models.add(s.role)
            if s.role == "neighbour":
                assert s.ident in test_ids
            else:
                assert all(p.m_min > s.mag for p in sim.base.pool), "Sersic where COSMOS fits"
        for s in specs:
            assert abs(s.placement.x - c) <= half and abs(s.placement.y - c) <= half
    assert n_star == 5
    assert len(counts) >= 2 and models == {"neighbour", "sersic"}
    for i in range(3, 13):
        t = sim.scene(i).truth
        g = t[t["kind"] == "galaxy"]
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                d = math.hypot(g["x"][a] - g["x"][b], g["y"][a] - g["y"][b])
                pairs_close += d < g["hlr"][a] + g["hlr"][b]
    assert pairs_close >= 1, "no blended pair in 10 scenes"


@needs_data
def test_star_rows_are_point_sources(fields, sim):
    """A star row has kind star, zero half-light radius, and its truth image is the PSF at its
    position: same adaptive-moments size as the PSF and centroid at (x, y). Galaxies are
    resolved (half-light radius > 0). Fails if a star is drawn as an extended source or
    placed off its catalogued position."""
    psf = sim.instrument.psfs[0]
    psf_sigma = galsim.hsm.FindAdaptiveMom(galsim.Image(psf, scale=1.0)).moments_sigma
    seen = 0
    for f in fields:
        t = f.truth
        for row in t:
            if row["kind"] == "star":
                seen += 1
                assert row["hlr"] == 0.0 and row["model"] == "point" and row["ident"] == -1
                img = f.images[row["plane"]]
                m = galsim.hsm.FindAdaptiveMom(
                    galsim.Image(img, scale=1.0),
                    guess_centroid=galsim.PositionD(row["x"] + 1, row["y"] + 1),
                )
                assert m.moments_sigma == pytest.approx(psf_sigma, rel=0.02)
                # GalSim's centroid is 1-based (the first pixel's center is 1).
                assert abs(m.moments_centroid.x - 1 - row["x"]) < 0.05
                assert abs(m.moments_centroid.y - 1 - row["y"]) < 0.05
            else:
                assert row["hlr"] > 0
    assert seen == 3, "scenes 1, 3 and 5 should each hold one star"


# ---------------------------------------------------------------- files


@needs_data
def test_files_explain_the_observation_and_read_back(sim, tmp_path):
    """The written files: SCI = sum(TRUTH_IMAGES) + TRUE_BACKGROUND + TRUE_NOISE (float32),
    TRUTH and its ECSV copy agree, x/y and ra/dec agree through SCI's WCS in the 0-based
    convention, the truth table passes galprism's catalogue reader for that image, and the
    observation passes separate's reader with its zero point and pixel scale."""
    from galprism.io.read import read_cutout
    from galprism.scene.catalog import read_catalog

    result = simulate_scenes(sim.config, tmp_path, simulator=sim)
    assert result.n_written == 4 and not result.failed
    for i in range(4):
        obs_path = tmp_path / f"hsc_scenes_test_{i:06d}.fits"
        truth_path = tmp_path / "truth" / f"hsc_scenes_test_{i:06d}.truth.fits"
        ecsv = tmp_path / "truth" / f"hsc_scenes_test_{i:06d}.truth.ecsv"
        with fits.open(obs_path) as obs, fits.open(truth_path) as tru:
            assert [h.name for h in obs] == ["PRIMARY", "SCI", "PSF", "MASK", "VARIANCE"]
            assert obs[0].header["VIEW"] == "scenes" and obs[0].header["GPSEED"] == 7
            cube = tru["TRUTH_IMAGES"].data.astype(np.float64)
            model = cube.sum(0) + tru["TRUE_BACKGROUND"].data + tru["TRUE_NOISE"].data
            np.testing.assert_allclose(obs["SCI"].data, model, atol=2e-6 * np.abs(model).max())
            table = Table.read(tru["TRUTH"])
            assert len(table) == cube.shape[0] == tru[0].header["NSOURCE"]
            np.testing.assert_allclose(table["flux"], cube.sum(axis=(1, 2)), rtol=1e-5, atol=1e-6)
            wcs = WCS(obs["SCI"].header)
            ra, dec = wcs.pixel_to_world_values(table["x"], table["y"])
            np.testing.assert_allclose(ra, table["ra"], atol=1e-9)
            np.testing.assert_allclose(dec, table["dec"], atol=1e-9)
            shape = obs["SCI"].data.shape
        from_ecsv = Table.read(ecsv, format="ascii.ecsv")
        assert from_ecsv.colnames == table.colnames
        for col in ("id", "x", "y", "flux", "blendedness", "kind"):
            np.testing.assert_array_equal(np.asarray(from_ecsv[col]), np.asarray(table[col]))
        cat = read_catalog(ecsv, shape=shape, wcs=wcs, match_tolerance=1e-6)
        assert list(cat["kind"]) == list(table["kind"])
        read = read_cutout(obs_path)
        assert read.zeropoint == 27.0 and abs(read.pixel_scale - 0.168) < 1e-9


@needs_data
def test_same_seed_same_files_and_no_clobber(sim, catalog, tmp_path):
    """Same seed -> byte-identical files (seed recorded in the headers); another seed differs;
    a second run refuses to overwrite and changes nothing; --overwrite replaces."""
    config = replace(sim.config, n=2)
    a, b = tmp_path / "a", tmp_path / "b"
    simulate_scenes(config, a, simulator=sim)
    simulate_scenes(config, b, simulator=SceneSimulator(config, catalog))
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(names) == 6
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"
    with fits.open(a / "hsc_scenes_test_000001.fits") as h:
        assert h[0].header["GPSEED"] == 7 and h[0].header["GPINDEX"] == 1
        assert json.loads(h[0].header["SEEDKEY"]) == sim.seed_key
    other = SceneSimulator(replace(config, seed=8), catalog).scene(0)
    assert not np.array_equal(other.image, sim.scene(0).image)
    before = {p: p.read_bytes() for p in a.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError, match="overwriting is not allowed"):
        simulate_scenes(config, a, simulator=sim)
    assert {p: p.read_bytes() for p in a.rglob("*") if p.is_file()} == before
    (a / "truth" / "hsc_scenes_test_000001.truth.ecsv").unlink()
    with pytest.raises(OutputExistsError):  # one file of the batch left is enough to stop
        simulate_scenes(config, a, simulator=sim)
    assert not (a / "truth" / "hsc_scenes_test_000001.truth.ecsv").exists()
    simulate_scenes(config, a, simulator=sim, overwrite=True)
    assert sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()) == names
    assert not list(a.rglob(".*.tmp")), "temporary files were left behind"


@needs_data
def test_cli_scenes(tmp_path, capsys):
    """The command writes the scenes, prints one JSON object and one summary line, refuses to
    clobber (exit 1, one line naming --overwrite), and refuses options of the other views
    (exit 2)."""
    from galprism.cli.main import main

    argv = ["simulate", "--view", "scenes", "--split", "test", "-n", "2", "--size", "40"]
    argv += ["--seed", "3", "--galaxies", "2", "3", "-o", str(tmp_path), "--json"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    summary = json.loads(out)
    assert summary["n_written"] == 2 and summary["view"] == "scenes" and summary["size"] == 40
    assert summary["scenes_per_minute"] > 0
    (line,) = err.strip().splitlines()
    assert line.startswith("galprism simulate: 2 scenes") and str(tmp_path) in line
    for i in range(2):
        t = Table.read(tmp_path / "truth" / f"hsc_scenes_test_{i:06d}.truth.ecsv")
        assert 2 <= int((t["kind"] == "galaxy").sum()) <= 3
        with fits.open(tmp_path / f"hsc_scenes_test_{i:06d}.fits") as h:
            assert h["SCI"].data.shape == (40, 40) and not h["MASK"].data.any()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "pass --overwrite to replace it" in err
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--overwrite", "--quiet"])
    out, err = capsys.readouterr()
    assert exc.value.code == 0 and err == ""
    for extra, flag in ((["--bright-sersic"], "--bright-sersic"), (["--no-fits"], "--no-fits")):
        with pytest.raises(SystemExit) as exc:
            main([*argv, *extra])
        out, err = capsys.readouterr()
        assert exc.value.code == 2 and flag in err
    sky = ["simulate", "--view", "sky", "--split", "test", "-n", "1", "-o", str(tmp_path / "s")]
    with pytest.raises(SystemExit) as exc:
        main([*sky, "--star-fraction", "0.2"])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and "--star-fraction does not apply to --view sky" in err
    assert not (tmp_path / "s").exists()


def test_docs_describe_the_scenes_view():
    """docs/simulate.md documents the scenes view, its options and its truth columns."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "simulate.md").read_text()
    for word in ("--view scenes", "--galaxies", "--star-fraction", "TRUTH_IMAGES", "blendedness"):
        assert word in text, word

"""``galprism simulate`` and ``sample_fits/``: split, conventions, flux, noise, reproducibility.

The simulator reads the real COSMOS/HSC data (the ``shared_data`` fixture of conftest.py);
without it the data-dependent tests are skipped with that reason (the ``sample_fits``
checks still run).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import galsim
import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from galprism.errors import ConfigError, InputError, OutputExistsError
from galprism.operators import Convolve
from galprism.simulate import SceneConfig, SimulationConfig, Simulator, simulate_batch
from galprism.simulate.cosmos import SPLIT_SEED, CosmosCatalog, make_split
from galprism.simulate.data import ENV_VAR, find_catalog, find_data_dir, hsc_npz_path
from galprism.simulate.defects import BAD_PLANES, MASK_PLANES, bad_bits
from galprism.simulate.hstnoise import hst_noise, hst_noise_table, load_cache
from galprism.simulate.noise import measure_hsc_noise
from galprism.simulate.render import Placement, build_template, draw_source
from galprism.simulate.write import observation_hdul

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_fits"
QUIET = SceneConfig(count_n25=0.0, background_sigma=0.0, background_gradient=0.0)


needs_data = pytest.mark.needs_data
#: the test galaxies of the 70-galaxy catalogue at the default split seed; the built-in
#: prior was learned on the others, so a change here would leak test galaxies into training
DEV_TEST_SPLIT = [0, 2, 3, 8, 22, 31, 37, 38, 43, 50, 111286, 122737, 122739, 122749]
DEV_TEST_SPLIT += [122750, 122772, 122773, 122788, 122792, 122793, 122805]


def _specs(sim: Simulator, index: int):
    """The galaxies of cutout ``index`` without rendering it."""
    return sim.plan(index)[2]


@pytest.fixture(scope="module")
def catalog(shared_data) -> CosmosCatalog:
    return CosmosCatalog(data_dir=shared_data)


@pytest.fixture(scope="module")
def sim_test(catalog) -> Simulator:
    return Simulator(
        SimulationConfig(view="galaxies", split="test", n=4, seed=11, mask_fraction=0.5), catalog
    )


@pytest.fixture(scope="module")
def batch(tmp_path_factory, sim_test):
    out = tmp_path_factory.mktemp("batch")
    result = simulate_batch(sim_test.config, out, simulator=sim_test)
    return out, result


# ---------------------------------------------------------------- split


@needs_data
def test_split_is_disjoint_complete_and_deterministic(catalog):
    """The drawn split covers every galaxy once and is the one the built-in prior was learned
    with; else train/test leak or drift between versions."""
    split = catalog.split
    train, test = set(split["train"]), set(split["test"])
    assert not train & test, f"galaxies in both sets: {sorted(train & test)}"
    assert train | test == {r.ident for r in catalog.records}, (
        "some catalogue galaxies are in no set"
    )
    assert len(test) == 21 and len(train) == 49
    assert split["test"] == DEV_TEST_SPLIT, "the default split of the catalogue changed"
    again = make_split(
        [r.ident for r in catalog.records], [r.mag for r in catalog.records], SPLIT_SEED
    )
    assert again == split, "the split is not deterministic"


@needs_data
def test_split_seed_draws_another_stratified_split(shared_data, catalog):
    """Another seed gives another split of the same size, each magnitude group of ten giving
    three galaxies to the test set; the same seed gives the same split again."""
    other = CosmosCatalog(data_dir=shared_data, split_seed=7)
    assert other.split_origin == "drawn, seed 7"
    assert other.split["test"] != catalog.split["test"], "the split seed is ignored"
    assert len(other.split["test"]) == 21
    by_mag = sorted(catalog.records, key=lambda r: (r.mag, r.ident))
    for start in range(0, len(by_mag), 10):
        group = {r.ident for r in by_mag[start : start + 10]}
        assert len(group & set(other.split["test"])) == round(3 * len(group) / 10)
    assert CosmosCatalog(data_dir=shared_data, split_seed=7).split == other.split


@needs_data
def test_split_file_gives_the_test_galaxies(shared_data, catalog, tmp_path):
    """A split file by IDENT (plain text with comments, or ECSV) or by catalogue row makes
    exactly those galaxies the test set and every other one a training galaxy."""
    idents = [r.ident for r in catalog.records]
    plain = tmp_path / "test.txt"
    plain.write_text("# held-out galaxies\n122811\n\n5  # a comment\n")
    split = CosmosCatalog(data_dir=shared_data, split_file=plain).split
    assert split["test"] == [5, 122811]
    assert split["train"] == sorted(set(idents) - {5, 122811})
    rows = tmp_path / "rows.txt"
    rows.write_text("INDEX\n0\n69\n")
    assert CosmosCatalog(data_dir=shared_data, split_file=rows).split["test"] == sorted(
        [idents[0], idents[69]]
    )
    ecsv = tmp_path / "test.ecsv"
    from astropy.table import Table

    Table({"IDENT": [idents[3], idents[4]]}).write(ecsv, format="ascii.ecsv")
    assert CosmosCatalog(data_dir=shared_data, split_file=ecsv).split["test"] == sorted(idents[3:5])
    sim = Simulator(
        SimulationConfig(view="galaxies", split="test", n=1, seed=1, split_file=str(plain)),
    )
    assert {s.ident for i in range(10) for s in _specs(sim, i)} <= {5, 122811}


@needs_data
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("5\n999999\n", "IDENT 999999 is not in the catalogue"),
        ("5\n5\n", "listed twice"),
        ("5\nfive\n", "'five' is not an integer IDENT"),
        ("INDEX\n70\n", "row 70 is outside"),
        ("# nothing\n", "lists 0 of the catalogue's 70 galaxies"),
    ],
)
def test_bad_split_file_is_one_line_input_error(shared_data, tmp_path, text, problem):
    """A split file naming unknown, repeated or non-integer galaxies, or none, is refused
    with one line naming the file; a silent fallback would mix up train and test."""
    path = tmp_path / "split.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as info:
        CosmosCatalog(data_dir=shared_data, split_file=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@needs_data
def test_any_catalogue_file_is_used_wherever_it_lies(shared_data, catalog, tmp_path):
    """A RealGalaxyCatalog under another name in another folder (its image and PSF files
    beside it) gives the same galaxies, fingerprint and cutouts as the data folder's."""
    for p in (shared_data / "cosmos").glob("*.fits"):
        if "catalog_dev" not in p.name:
            (tmp_path / p.name).write_bytes(p.read_bytes())
    mine = tmp_path / "my_catalog.fits"
    mine.write_bytes(catalog.path.read_bytes())
    other = CosmosCatalog(mine)
    assert other.path == mine.resolve() and other.fingerprint == catalog.fingerprint
    assert other.split == catalog.split
    config = SimulationConfig(view="galaxies", split="test", n=1, seed=2, instrument="hst")
    a = Simulator(replace(config, catalog=str(mine))).cutout(0)
    b = Simulator(config, catalog).cutout(0)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.central_ident == b.central_ident


@needs_data
def test_catalogue_without_stamp_flux(shared_data, catalog, tmp_path):
    """A catalogue without the optional stamp_flux column simulates HSC-like cutouts (its
    stamp noise measured, not taken from the cache of another catalogue) and refuses the
    HST-like instrument, which needs it, with one line naming the column."""
    from astropy.table import Table

    for p in (shared_data / "cosmos").glob("*.fits"):
        if "catalog_dev" not in p.name:  # the images, PSFs and noise file it lists
            (tmp_path / p.name).write_bytes(p.read_bytes())
    table = Table.read(catalog.path)
    table.remove_column("stamp_flux")
    mine = tmp_path / "no_flux.fits"
    table.write(mine)
    split = tmp_path / "split.txt"
    split.write_text("0\n42\n")
    config = SimulationConfig(view="galaxies", split="test", n=1, seed=4, mask_fraction=0.0)
    config = replace(config, catalog=str(mine), split_file=str(split))
    sim = Simulator(config)
    assert sim.catalog.fingerprint != catalog.fingerprint
    assert math.isfinite(sim.cutout(0).image.sum()) and sim.cutout(0).central_ident in (0, 42)
    cached = CosmosCatalog(data_dir=shared_data, split_file=split)
    reference = Simulator(replace(config, catalog=None), cached)
    for ident in (0, 42):
        assert sim.hst_std[ident] == pytest.approx(reference.hst_std[ident], rel=1e-6)
    with pytest.raises(ConfigError, match="no stamp_flux column"):
        Simulator(replace(config, instrument="hst"))


@needs_data
def test_noise_cache_serves_only_its_own_catalogue(catalog):
    """The cached stamp-noise values are keyed to the catalogue's fingerprint: another
    catalogue whose IDENTs happen to coincide must not get them."""
    assert load_cache(catalog.fingerprint), "the shipped cache does not match the catalogue"
    assert load_cache("0" * 16) == {}


def test_without_data_the_error_says_what_to_pass(monkeypatch, tmp_path):
    """With no catalogue, data folder or $GALPRISM_DATA_DIR, the simulator raises one line
    saying what to pass and where to get the data, and never looks beside the repository
    (the tests run from inside it, next to the data)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError) as info:
        CosmosCatalog()
    message = str(info.value)
    assert "catalog" in message and "data_dir" in message and f"${ENV_VAR}" in message
    assert "galsim_download_cosmos" in message and "BlendingToolKit" in message
    with pytest.raises(ConfigError, match="hsc_cosmos_35.npz.*pass data_dir"):
        hsc_npz_path()
    with pytest.raises(ConfigError, match="missing: data folder not found"):
        find_data_dir(tmp_path / "missing")


@needs_data
def test_explicit_data_folder_wins_over_the_environment(shared_data, monkeypatch, tmp_path):
    """``data_dir`` is used even when $GALPRISM_DATA_DIR names another folder."""
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert find_data_dir(shared_data) == shared_data.resolve()
    assert find_catalog(data_dir=shared_data).parent == shared_data.resolve() / "cosmos"
    with pytest.raises(ConfigError, match="holds none real_galaxy_catalog"):
        find_catalog()


@needs_data
def test_cutouts_use_only_their_split(catalog):
    """Central galaxies and neighbours come only from the requested split (by object)."""
    split = catalog.split
    for name in ("train", "test"):
        sim = Simulator(SimulationConfig(view="galaxies", split=name, n=1, seed=3), catalog)
        seen = {s.ident for i in range(30) for s in _specs(sim, i)}
        assert seen <= set(split[name]), (
            f"{name} cutouts used galaxies of the other split: {sorted(seen - set(split[name]))}"
        )
        assert len(seen) > 5, "too few distinct galaxies appear for the check to mean anything"


# ---------------------------------------------------------------- FITS convention


@needs_data
def test_observation_fits_follows_the_separate_convention(batch):
    """SCI/PSF/MASK/VARIANCE with TAN WCS at 0.168"/px, unit-sum odd PSF, named mask bits, positive
    variance."""
    out, result = batch
    assert result.n_written == 4 and not result.failed
    files = sorted(out.glob("*.fits"))
    assert len(files) == 4, "observation files and only those belong in the output folder"
    for path in files:
        with fits.open(path, checksum=True) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "SCI", "PSF", "MASK", "VARIANCE"]
            sci = hdul["SCI"]
            assert sci.data.dtype == np.dtype(">f4") and sci.data.shape == (48, 48)
            wcs = WCS(sci.header)
            assert wcs.wcs.ctype[0] == "RA---TAN" and wcs.wcs.ctype[1] == "DEC--TAN"
            np.testing.assert_allclose(
                proj_plane_pixel_scales(wcs) * 3600,
                [0.168, 0.168],
                rtol=1e-9,
                err_msg="WCS pixel scale",
            )
            assert sci.header["BUNIT"] == "count" and sci.header["MAGZERO"] == 27.0
            psf = hdul["PSF"].data
            assert psf.shape[0] % 2 == 1 and psf.shape[1] % 2 == 1, "PSF sides must be odd"
            assert abs(psf.sum() - 1.0) < 1e-12, "PSF must have unit sum"
            assert np.unravel_index(np.argmax(psf), psf.shape) == (
                psf.shape[0] // 2,
                psf.shape[1] // 2,
            ), "PSF not centered"
            mask = hdul["MASK"]
            planes = {k[3:]: v for k, v in mask.header.items() if k.startswith("MP_")}
            assert planes == MASK_PLANES, "every mask bit must be named by an MP_* keyword"
            used = int(np.bitwise_or.reduce(mask.data.ravel()))
            assert used & ~sum(1 << b for b in planes.values()) == 0, (
                "a mask bit is set that no MP_* names"
            )
            var = hdul["VARIANCE"].data
            assert np.all(np.isfinite(var)) and np.all(var > 0)
            head = hdul[0].header
            assert (
                head["GPSEED"] == 11
                and head["GPVERS"]
                and head["VIEW"] == "galaxies"
                and head["SPLIT"] == "test"
            )


@needs_data
def test_truth_is_separate_and_explains_the_observation(batch):
    """No TRUE_* in the observation; truth files hold them and SCI = conv truths + noise off the
    mask."""
    out, _ = batch
    for path in sorted(out.glob("*.fits")):
        with fits.open(path) as obs:
            names = [h.name for h in obs]
            assert not any(n.startswith("TRUE") or n == "SOURCES" for n in names), (
                f"truth leaked into {path.name}: {names}"
            )
            truth_path = out / "truth" / f"{path.stem}.truth.fits"
            with fits.open(truth_path, checksum=True) as tru:
                assert {
                    "TRUE_GALAXY",
                    "TRUE_SKY",
                    "TRUE_GALAXY_CONV",
                    "TRUE_SKY_CONV",
                    "TRUE_NOISE",
                    "SOURCES",
                } <= {h.name for h in tru}
                model = (
                    tru["TRUE_GALAXY_CONV"].data
                    + tru["TRUE_SKY_CONV"].data
                    + tru["TRUE_NOISE"].data
                )
                good = (obs["MASK"].data & bad_bits()) == 0
                np.testing.assert_allclose(
                    obs["SCI"].data[good],
                    model[good],
                    atol=1e-5,
                    err_msg="SCI is not the sum of its truths",
                )
                assert (
                    "ROLE" in tru["SOURCES"].columns.names
                    and list(tru["SOURCES"].data["ROLE"]).count("central") == 1
                )


@needs_data
def test_separate_reads_the_files(batch):
    """galprism separate's reader takes the files as they are: pixel scale, zero point and mask."""
    from galprism.io.read import read_cutout

    out, _ = batch
    obs = read_cutout(sorted(out.glob("*.fits"))[0])
    assert abs(obs.pixel_scale - 0.168) < 1e-9 and obs.zeropoint == 27.0


@needs_data
def test_observation_is_the_operator_applied_to_the_truth(sim_test):
    """Away from the edges, TRUE_GALAXY_CONV equals galprism's Convolve operator on TRUE_GALAXY.

    If this failed, the simulated data would not follow the forward model the priors invert.
    """
    c = sim_test.cutout(2)
    op = Convolve(torch.as_tensor(c.psf), (1, 48, 48))
    pred = op.apply(torch.as_tensor(c.truth["galaxy"], dtype=torch.float64)[None, None])[
        0, 0
    ].numpy()
    pad = c.psf.shape[0] // 2
    inner = (slice(pad, 48 - pad), slice(pad, 48 - pad))
    scale = np.abs(c.truth["galaxy_conv"]).max()
    np.testing.assert_allclose(pred[inner], c.truth["galaxy_conv"][inner], atol=1e-5 * scale)


# ---------------------------------------------------------------- flux and noise


@needs_data
def test_rendered_flux_matches_catalogue_magnitude(catalog):
    """An isolated rendered galaxy sums to 10**(-0.4 (MAG - 27)) counts within 1%, transformed or
    not."""
    for rec in (catalog.by_ident[42], catalog.by_ident[0], catalog.by_ident[122811]):
        t = build_template(catalog, rec, 0.168, 0.2, 27.0)
        expected = 10 ** (-0.4 * (rec.mag - 27.0))
        for p in (
            Placement(63.0, 63.0, t.flux),
            Placement(62.3, 64.6, t.flux, rotation=1.3, flip=True, g1=0.08, g2=-0.05, dilation=1.1),
        ):
            canvas = np.zeros((127, 127))
            draw_source(canvas, t, p, 0.168)
            assert abs(canvas.sum() / expected - 1) < 0.01, (
                f"IDENT {rec.ident}: {canvas.sum()} counts for mag {rec.mag}"
            )


@needs_data
def test_cutout_flux_matches_its_magnitude(catalog):
    """In a written cutout, TRUE_GALAXY sums to the flux of the recorded central magnitude (1%,
    light beyond the edge aside)."""
    sim = Simulator(
        SimulationConfig(view="galaxies", split="test", n=1, size=96, seed=5, scene=QUIET), catalog
    )
    for i in range(5):
        c = sim.cutout(i)
        central = c.sources[0]
        assert central.role == "central"
        assert abs(c.truth["galaxy"].sum() / 10 ** (-0.4 * (central.mag - 27.0)) - 1) < 0.01
        assert abs(c.truth["galaxy_conv"].sum() / c.truth["galaxy"].sum() - 1) < 0.01, (
            "the PSF must conserve flux"
        )


@needs_data
def test_blank_sky_noise_has_the_requested_sigma(catalog):
    """A blank sky cutout's pixels have the measured HSC sigma, or the one asked for (2%)."""
    for sigma in (None, 0.05):
        sim = Simulator(
            SimulationConfig(
                view="sky",
                split="train",
                n=1,
                size=128,
                seed=1,
                noise_sigma=sigma,
                mask_fraction=0.0,
                scene=QUIET,
            ),
            catalog,
        )
        c = sim.cutout(0)
        want = sim.instrument.noise_sigma if sigma is None else sigma
        assert abs(c.image.std() / want - 1) < 0.02, f"std {c.image.std()} for sigma {want}"
        assert abs(c.image.mean()) < 4 * want / 128, "blank sky should average to zero"
        np.testing.assert_allclose(c.variance, want**2, rtol=1e-6)
    default = Simulator(
        SimulationConfig(view="sky", split="train", n=1), catalog
    ).instrument.noise_sigma
    assert abs(default - measure_hsc_noise().npz_sigma_variance_plane) < 1e-12, (
        "default noise must be the measured HSC level"
    )


@needs_data
def test_noise_measurements_agree():
    """The two npz noise estimates (variance plane, clipped pixels) agree to 10%: the default is
    sound."""
    m = measure_hsc_noise()
    assert abs(m.npz_sigma_clipped / m.npz_sigma_variance_plane - 1) < 0.1, m
    assert 0.015 < m.npz_sigma_variance_plane < 0.03, m


@needs_data
def test_hst_noise_scaling_matches_monte_carlo(catalog):
    """GalSim's propagated stamp noise, scaled by the pixel-area ratio, matches a rendered noise
    field (15%).

    The stamp-noise cap rests on this number; a wrong unit convention would be off by 31x.
    """
    rec = catalog.by_ident[0]
    psf = Simulator(SimulationConfig(view="sky", split="train", n=1), catalog).instrument.psfs[0]
    predicted = hst_noise(catalog, rec, psf, 0.168, 0.2, catalog.acs_zeropoint).obs_std
    noise_cf, scale, var = catalog.galsim_catalog.getNoiseProperties(rec.index)
    field_ = galsim.Image(800, 800, scale=0.03)
    field_.addNoise(catalog.galsim_catalog.getNoise(rec.index, rng=galsim.BaseDeviate(4)))
    rg = galsim.RealGalaxy(
        (field_, catalog.galsim_catalog.getPSFImage(rec.index), noise_cf, scale, var)
    )
    inst = galsim.InterpolatedImage(galsim.Image(psf, scale=0.168), flux=1.0)
    drawn = galsim.Convolve([rg, galsim.Gaussian(fwhm=0.2), galsim.Pixel(0.168), inst]).drawImage(
        nx=140, ny=140, scale=0.168, method="no_pixel"
    )
    measured = drawn.array[20:-20, 20:-20].std()
    assert abs(measured / predicted - 1) < 0.15, f"measured {measured}, predicted {predicted}"


@needs_data
def test_cached_hst_noise_is_current(catalog, sim_test):
    """The shipped hst_noise.json matches a fresh GalSim measurement (0.5%); else it is stale."""
    inst = sim_test.instrument
    recs = [catalog.by_ident[2], catalog.by_ident[122811]]
    cached = hst_noise_table(catalog, recs, inst.psfs[0], 0.168, 0.2, 27.0)
    fresh = hst_noise_table(catalog, recs, inst.psfs[0], 0.168, 0.2, 27.0, use_cache=False)
    for r in recs:
        assert abs(cached[r.ident].obs_std / fresh[r.ident].obs_std - 1) < 5e-3
        assert abs(cached[r.ident].truth_std / fresh[r.ident].truth_std - 1) < 5e-3


@needs_data
def test_hst_noise_cap_holds_for_every_source(sim_test):
    """Every placed galaxy's stamp noise stays below max_hst_noise_ratio x the added noise."""
    cap = sim_test.config.scene.max_hst_noise_ratio
    ratios = [s.hst_noise_ratio for i in range(100) for s in _specs(sim_test, i)]
    assert len(ratios) > 100 and max(ratios) <= cap + 1e-9, f"max ratio {max(ratios)} > {cap}"


@needs_data
def test_raised_central_noise_keeps_the_cap_and_records_the_noise(catalog, tmp_path):
    """``central_noise="raise"``: bright centrals of every galaxy, each cutout's own noise.

    Fails if the central's stamp noise exceeds the cap relative to the cutout's actual
    noise, if the variance plane or NOISESIG misstates that noise, if the mode does not
    open the central role to galaxies the fixed cap excludes (or brighter magnitudes), or
    if neighbours and the sky residual stop sharing the base noise scale (the sky source
    must have one distribution in both views).
    """
    base = SimulationConfig(view="galaxies", split="train", n=30, seed=4, mask_fraction=0.0)
    fixed = Simulator(base, catalog)
    raised = Simulator(replace(base, scene=replace(base.scene, central_noise="raise")), catalog)
    sigma0 = raised.instrument.noise_sigma
    cap = raised.config.scene.max_hst_noise_ratio
    assert {p.ident for p in raised.centrals()} > {p.ident for p in fixed.centrals()}
    mags_fixed, mags_raised, sigmas = [], [], []
    for i in range(30):
        c = raised.cutout(i)
        central = c.sources[0]
        assert central.role == "central"
        sigma = math.sqrt(float(c.variance[0, 0]))
        np.testing.assert_allclose(c.variance, sigma**2, rtol=1e-6)
        assert sigma == pytest.approx(c.noise_sigma, rel=1e-6) and sigma >= sigma0 * (1 - 1e-6)
        assert central.hst_noise_ratio <= cap + 1e-9, "central stamp noise above the cap"
        if sigma > sigma0 * 1.001:
            assert central.hst_noise_ratio == pytest.approx(cap, rel=1e-6), (
                "noise raised more than needed"
            )
        for s in c.sources[1:]:
            assert s.hst_noise_ratio <= cap * sigma0 / sigma + 1e-9, "neighbours keep the base cap"
        assert abs(c.truth["noise"].std() / sigma - 1) < 0.1
        # the sky residual is drawn on the base noise scale in both modes
        assert abs(c.background[0]) < 6 * raised.config.scene.background_sigma * sigma0
        hdr = observation_hdul(c, raised.meta())[0].header
        assert hdr["NOISESIG"] == pytest.approx(sigma, rel=1e-6)
        mags_raised.append(central.mag)
        mags_fixed.append(fixed.cutout(i).sources[0].mag)
        sigmas.append(sigma)
    assert min(mags_raised) < min(mags_fixed), "raise mode should render brighter centrals"
    assert max(sigmas) > 1.5 * sigma0, "some cutouts should need raised noise"


@needs_data
def test_center_exclusion_keeps_neighbours_off_the_center(catalog):
    """No neighbour is centered within ``center_exclusion`` px of the center; 0 changes nothing.

    Fails if a neighbour lands inside the excluded disc, if the default (0) draws
    different scenes than before the option existed (every existing batch would change),
    or if an exclusion leaving no room is accepted (it would loop forever).
    """
    base = SimulationConfig(view="sky", split="train", n=200, seed=3, mask_fraction=0.0)
    plain = Simulator(base, catalog)
    same = Simulator(replace(base, scene=replace(base.scene, center_exclusion=0.0)), catalog)
    excl = Simulator(replace(base, scene=replace(base.scene, center_exclusion=4.0)), catalog)
    center = 0.5 * (plain.size - 1)

    def dists(sim):
        return [
            math.hypot(s.placement.x - center, s.placement.y - center)
            for i in range(200)
            for s in _specs(sim, i)
        ]

    d_plain, d_excl = dists(plain), dists(excl)
    assert d_plain == dists(same)
    assert min(d_plain) < 4.0, "without exclusion some neighbour should fall near the center"
    assert min(d_excl) >= 4.0
    assert abs(len(d_excl) - len(d_plain)) < 0.1 * len(d_plain), (
        "exclusion moves neighbours, keeps their number"
    )
    huge = replace(base, scene=replace(base.scene, center_exclusion=1000.0))
    with pytest.raises(ConfigError, match="center_exclusion"):
        Simulator(huge, catalog).plan(0)


# ---------------------------------------------------------------- masks, views


@needs_data
def test_defects_are_masked(catalog):
    """With mask_fraction 1 every cutout has defects, flagged only with BAD/CR/EDGE/NO_DATA, and
    valid excludes them."""
    sim = Simulator(
        SimulationConfig(view="sky", split="train", n=1, seed=2, mask_fraction=1.0), catalog
    )
    kinds = set()
    for i in range(12):
        c = sim.cutout(i)
        assert c.defects and np.any(c.maskbits), "a masked cutout has no masked pixel"
        allowed = sum(1 << MASK_PLANES[p] for p in ("BAD", "CR", "EDGE", "NO_DATA"))
        assert int(np.bitwise_or.reduce(c.maskbits.ravel())) & ~allowed == 0
        np.testing.assert_array_equal(c.valid, (c.maskbits & bad_bits()) == 0)
        kinds |= set(c.defects)
    assert kinds == {"bad_column", "cosmic_ray", "edge"}
    assert set(BAD_PLANES) >= {"BAD", "CR", "EDGE", "NO_DATA"}, (
        "separate must ignore every defect plane by default"
    )


@needs_data
def test_sky_view_has_no_central_galaxy(catalog):
    """The sky view holds neighbours only: no central source and no galaxy truth."""
    sim = Simulator(SimulationConfig(view="sky", split="test", n=1, seed=9), catalog)
    for i in range(5):
        c = sim.cutout(i)
        assert c.central_ident == -1 and all(s.role == "neighbour" for s in c.sources)
        assert "galaxy" not in c.truth and "sky" in c.truth


@needs_data
def test_hst_instrument(catalog):
    """HST-like cutouts: 0.03"/px WCS, an ACS PSF, correlated noise at the catalogue level (10%)."""
    sim = Simulator(
        SimulationConfig(
            view="galaxies",
            split="train",
            n=1,
            size=96,
            instrument="hst",
            seed=4,
            mask_fraction=0.0,
        ),
        catalog,
    )
    c = sim.cutout(0)
    assert (
        sim.instrument.pixel_scale == 0.03
        and abs(c.psf.sum() - 1) < 1e-12
        and c.psf.shape == (51, 51)
    )
    assert abs(c.truth["noise"].std() / sim.instrument.noise_sigma - 1) < 0.1
    hdul = observation_hdul(c, sim.meta())
    np.testing.assert_allclose(
        proj_plane_pixel_scales(WCS(hdul["SCI"].header)) * 3600, [0.03, 0.03], rtol=1e-9
    )


# ---------------------------------------------------------------- reproducibility, files


@needs_data
def test_same_seed_same_files_and_no_clobber(tmp_path, sim_test):
    """Same seed -> byte-identical files; a second run refuses to overwrite and leaves the files
    alone."""
    config = replace(sim_test.config, n=2)
    a, b = tmp_path / "a", tmp_path / "b"
    simulate_batch(config, a, simulator=sim_test)
    simulate_batch(config, b, simulator=sim_test)
    names = sorted(p.relative_to(a) for p in a.rglob("*.fits"))
    assert len(names) == 4
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), (
            f"{name} differs between runs with the same seed"
        )
    with h5py.File(a / "hsc_galaxies_test.h5") as fa, h5py.File(b / "hsc_galaxies_test.h5") as fb:
        np.testing.assert_array_equal(fa["images"][...], fb["images"][...])
    other = Simulator(replace(config, seed=12), sim_test.catalog).cutout(0)
    assert not np.array_equal(other.image, sim_test.cutout(0).image), (
        "a different seed gave the same cutout"
    )
    before = {p: p.read_bytes() for p in a.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError, match="overwriting is not allowed"):
        simulate_batch(config, a, simulator=sim_test)
    assert {p: p.read_bytes() for p in a.rglob("*") if p.is_file()} == before, (
        "a refused run changed files"
    )
    assert not list(a.rglob(".*.tmp")), "temporary files were left behind"
    simulate_batch(config, a, simulator=sim_test, overwrite=True)


@needs_data
def test_hdf5_batch(batch):
    """HDF5 holds the batch with its metadata and PSF index; truth only in the .truth.h5 file."""
    out, result = batch
    with h5py.File(result.hdf5) as f:
        assert f["images"].shape == (4, 1, 48, 48) and f["mask"].dtype == bool
        assert set(f) == {
            "index",
            "images",
            "variance",
            "mask",
            "maskbits",
            "psf",
            "psf_index",
            "central_ident",
        }
        assert (
            f.attrs["pixel_scale"] == 0.168
            and f.attrs["zeropoint"] == 27.0
            and f.attrs["view"] == "galaxies"
            and f.attrs["seed"] == 11
        )
        assert set(f["central_ident"][...]) <= set(DEV_TEST_SPLIT)
        psf = f["psf"][f["psf_index"][0]]
        with fits.open(out / "hsc_galaxies_test_000000.fits") as hdul:
            np.testing.assert_array_equal(f["images"][0, 0], hdul["SCI"].data)
            np.testing.assert_array_equal(psf[0], hdul["PSF"].data)
            np.testing.assert_array_equal(f["mask"][0, 0], (hdul["MASK"].data & bad_bits()) == 0)
        assert json.loads(f.attrs["config"])["split"] == "test"
    with h5py.File(result.hdf5_truth) as t:
        assert {"galaxy", "sky", "galaxy_conv", "sky_conv", "noise", "sources"} <= set(t)
        assert set(t["sources"]["cutout"]) == {0, 1, 2, 3}


@needs_data
def test_cli(tmp_path, capsys):
    """The command prints one JSON object on stdout and one summary line on stderr (also off a
    terminal; --quiet silences it), writes files, and refuses to clobber with one line that
    names --overwrite (the library's message alone names no flag)."""
    from galprism.cli.main import main

    argv = [
        "simulate",
        "--view",
        "sky",
        "--split",
        "test",
        "-n",
        "2",
        "--seed",
        "3",
        "-o",
        str(tmp_path),
        "--json",
        "--no-hdf5",
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    summary = json.loads(out)
    assert summary["n_written"] == 2 and summary["seed"] == 3 and summary["hdf5"] is None
    assert len(list(tmp_path.glob("hsc_sky_test_*.fits"))) == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("galprism simulate: 2 sky cutouts") and str(tmp_path) in line, err
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--quiet", "--overwrite"])
    out, err = capsys.readouterr()
    assert exc.value.code == 0 and err == "", err
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert (
        exc.value.code == 1 and "exists" in err and len(err.strip().splitlines()) == 1 and out == ""
    )
    assert "pass --overwrite to replace it" in err, err


def test_cli_without_data_names_the_options(tmp_path, capsys, monkeypatch):
    """Without --catalog, --data-dir or $GALPRISM_DATA_DIR the command exits 1 before any
    work with one line naming the options and where to get a catalogue; with --catalog
    alone the HSC-like instrument asks for the folder of its PSF and noise."""
    from galprism.cli.main import main

    monkeypatch.delenv(ENV_VAR, raising=False)
    base = ["simulate", "--view", "sky", "--split", "train", "-n", "1", "-o", str(tmp_path / "o")]
    for extra, words in (
        ([], ["--catalog FILE", "--data-dir DIR", "galsim_download_cosmos"]),
        (["--catalog", str(tmp_path / "c.fits")], ["--instrument hsc", "--data-dir DIR"]),
    ):
        with pytest.raises(SystemExit) as exc:
            main(base + extra)
        out, err = capsys.readouterr()
        assert exc.value.code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in words), err
    assert not (tmp_path / "o").exists(), "output written although the data was missing"


@needs_data
def test_cli_catalog_and_split_file(shared_data, tmp_path, capsys, monkeypatch):
    """--catalog with --split-file: the HST-like batch needs no data folder and its central
    galaxies are the listed ones only; --center-exclusion reaches the scene configuration."""
    from galprism.cli.main import main

    monkeypatch.delenv(ENV_VAR, raising=False)
    split = tmp_path / "split.txt"
    split.write_text("IDENT\n5\n122811\n")
    argv = ["simulate", "--view", "galaxies", "--split", "test", "-n", "3", "--size", "32"]
    argv += ["--instrument", "hst", "--catalog", str(find_catalog(data_dir=shared_data))]
    argv += ["--split-file", str(split), "--no-fits", "-o", str(tmp_path / "o"), "--json"]
    argv += ["--center-exclusion", "2.5"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    with h5py.File(json.loads(out)["hdf5"]) as f:
        assert set(f["central_ident"][...]) <= {5, 122811}
        config = json.loads(f.attrs["config"])
        assert config["split_file"] == str(split)
        assert config["scene"]["center_exclusion"] == 2.5, config["scene"]


@needs_data
def test_bad_configuration_is_one_line_error(tmp_path):
    """Unknown view or missing data folder fail before any work with a message naming the
    problem."""
    with pytest.raises(ConfigError, match="view 'stars'"):
        SimulationConfig(view="stars").validate()
    with pytest.raises(ConfigError, match=f"{tmp_path}: COSMOS catalogue file not found"):
        CosmosCatalog(tmp_path)
    with pytest.raises(ConfigError, match=f"{tmp_path / 'cosmos'}: holds none"):
        CosmosCatalog(data_dir=tmp_path)


# ---------------------------------------------------------------- sample_fits


def test_sample_fits_are_small_documented_and_follow_the_convention():
    """sample_fits/ stays under 2 MB, names sources and licences, and its files are
    separate-ready."""
    files = [p for p in SAMPLE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2 * 1024**2
    readme = (SAMPLE / "README.md").read_text()
    for needle in (
        "BlendingToolKit",
        "MIT",
        "scarlet",
        "hsc_cosmos_35.npz",
        "Cut_HSC.fits",
        "make_sample_fits.py",
    ):
        assert needle in readme, f"sample_fits/README.md does not mention {needle}"
    for path in sorted(SAMPLE.glob("*.fits")):
        with fits.open(path, checksum=True) as hdul:
            names = [h.name for h in hdul]
            assert {"SCI", "PSF", "VARIANCE"} <= set(names), f"{path.name}: {names}"
            psf = hdul["PSF"].data
            kernels = psf.reshape(-1, *psf.shape[-2:])  # one kernel per band of a cube
            assert psf.shape[-1] % 2 == 1 and psf.shape[-2] % 2 == 1, f"{path.name}: even PSF"
            np.testing.assert_allclose(kernels.sum((1, 2)), 1.0, atol=1e-9)
            if psf.ndim == 3:
                assert psf.shape[0] == hdul["SCI"].data.shape[0], f"{path.name}: PSF per band"
            assert np.all(hdul["VARIANCE"].data > 0)
            if "MASK" in hdul:
                planes = {k[3:]: v for k, v in hdul["MASK"].header.items() if k.startswith("MP_")}
                used = int(np.bitwise_or.reduce(hdul["MASK"].data.ravel()))
                assert used & ~sum(1 << b for b in planes.values()) == 0, (
                    f"{path.name}: unnamed mask bits"
                )
            if path.name.startswith("sim_"):
                assert (SAMPLE / "truth" / f"{path.stem}.truth.fits").is_file()
                assert hdul[0].header["SPLIT"] == "test", (
                    "sample simulations must use test-set galaxies"
                )


def test_sample_fits_real_data_is_unmodified(shared_data):
    """The converted real cutouts hold the npz / Cut_HSC pixels exactly (i band, and all five
    bands of the npz in the cube)."""
    data = shared_data
    with (
        np.load(data / "hsc" / "hsc_cosmos_35.npz") as npz,
        fits.open(SAMPLE / "hsc_cosmos35_i.fits") as hdul,
    ):
        np.testing.assert_array_equal(hdul["SCI"].data, npz["images"][2])
        np.testing.assert_array_equal(hdul["VARIANCE"].data, npz["variance"][2])
        np.testing.assert_array_equal(hdul["MASK"].data, npz["mask"][2])
        assert math.isclose(hdul["SCI"].header["MAGZERO"], 27.0)
    with (
        np.load(data / "hsc" / "hsc_cosmos_35.npz") as npz,
        fits.open(SAMPLE / "hsc_cosmos35_grizy.fits") as hdul,
    ):
        np.testing.assert_array_equal(hdul["SCI"].data, npz["images"])
        np.testing.assert_array_equal(hdul["VARIANCE"].data, npz["variance"])
        np.testing.assert_array_equal(hdul["MASK"].data, npz["mask"])
        assert hdul["SCI"].header["BANDS"] == "g,r,i,z,y"
    with (
        fits.open(data / "multiview" / "Cut_HSC.fits") as cut,
        fits.open(SAMPLE / "multiview_hsc_i.fits") as hdul,
    ):
        np.testing.assert_array_equal(hdul["SCI"].data, cut[0].data[2].astype(np.float32))
        assert abs(WCS(hdul["SCI"].header).wcs.crval[0] - cut[0].header["CRVAL1"]) < 1e-12


# ---------------------------------------------------------------- stars, bright neighbours


def test_star_is_the_psf_at_its_subpixel_position():
    """A star's intrinsic image convolved with the pixelised PSF is that PSF shifted.

    Fails if the point is put at a pixel center (the residual would reach ~10% of the
    peak for a 0.4 px offset), if its flux is not the placement's, or if part of it
    is lost inside the canvas.
    """
    from scipy.signal import fftconvolve

    from galprism.simulate.render import draw_point

    psf_profile = galsim.Moffat(beta=3.0, fwhm=3.4)  # in pixels: the HSC i PSF's FWHM
    psf = psf_profile.drawImage(nx=31, ny=31, scale=1.0).array
    psf /= psf.sum()
    for x, y in [(20.0, 20.0), (20.42, 19.9), (19.73, 20.5)]:
        canvas = np.zeros((41, 41))
        draw_point(canvas, Placement(x, y, 100.0))
        assert canvas.sum() == pytest.approx(100.0, rel=1e-12)
        observed = fftconvolve(canvas, psf, mode="same")
        want = galsim.Image(41, 41, scale=1.0)
        psf_profile.withFlux(100.0 * psf.sum()).drawImage(image=want, offset=(x - 20.0, y - 20.0))
        err = np.abs(observed - want.array).max() / want.array.max()
        assert err < 0.005, f"star at ({x}, {y}): {err:.4f} of the peak off the shifted PSF"
    edge, padded = np.zeros((10, 10)), np.zeros((30, 30))
    draw_point(edge, Placement(0.3, 5.0, 1.0))
    draw_point(padded, Placement(10.3, 15.0, 1.0))
    np.testing.assert_allclose(
        edge,
        padded[10:20, 10:20],
        atol=1e-15,
        err_msg="a star at the edge keeps only the weights inside",
    )


def test_sersic_neighbour_flux_and_shape():
    """A Sersic neighbour carries its flux, and a sheared one is elongated along its shear.

    Fails if the flux or the stamp size is wrong (a clipped profile loses light) or the
    shear is ignored.
    """
    from galprism.simulate.render import draw_sersic

    canvas = np.zeros((81, 81))
    draw_sersic(canvas, Placement(40.0, 40.0, 50.0, g1=0.4), 1.0, 0.5, 0.168, truth_fwhm=0.2)
    assert canvas.sum() == pytest.approx(50.0, rel=2e-3)
    mom = galsim.hsm.FindAdaptiveMom(galsim.Image(canvas))
    assert mom.observed_shape.g1 > 0.3 and abs(mom.observed_shape.g2) < 0.02


@needs_data
def test_stars_and_bright_sersic_neighbours(catalog):
    """``star_density`` adds stars at that density; ``bright_sersic`` fills the bright end.

    Fails if either option draws anything when off (existing batches would change), if
    the star count is off its Poisson expectation, if bright neighbours do not appear
    (the COSMOS stamps' noise caps every galaxy fainter than about i = 22), or if a star
    or Sersic neighbour is rendered into the galaxy truth.
    """
    base = SimulationConfig(view="sky", split="train", n=1, seed=5, mask_fraction=0.0)
    plain = Simulator(base, catalog)
    scene = replace(base.scene, star_density=2.0, bright_sersic=True)
    rich = Simulator(replace(base, scene=scene), catalog)
    off = Simulator(
        replace(base, scene=replace(scene, star_density=0.0, bright_sersic=False)), catalog
    )
    n = 300
    assert [_specs(plain, i) for i in range(20)] == [_specs(off, i) for i in range(20)]
    specs = [s for i in range(n) for s in _specs(rich, i)]
    stars = [s for s in specs if s.role == "star"]
    side = plain.size * 0.168 + 2 * scene.margin
    expected = n * 2.0 * (side / 60.0) ** 2 * (scene.star_mag_range[1] - scene.star_mag_range[0])
    assert abs(len(stars) - expected) < 4 * math.sqrt(expected)
    assert all(scene.star_mag_range[0] <= s.mag <= scene.star_mag_range[1] for s in stars)
    sersic = [s for s in specs if s.role == "sersic"]
    cosmos_min = min(p.m_min for p in plain.pool)
    assert sersic and all(s.mag < cosmos_min for s in sersic)
    assert min(s.mag for s in sersic) < 21.0
    assert all(s.ident == -1 and math.isfinite(s.hlr) for s in sersic)
    plain_bright = [s for i in range(n) for s in _specs(plain, i) if s.mag < cosmos_min]
    assert not plain_bright
    gal = Simulator(replace(base, view="galaxies", scene=scene), catalog)
    for i in range(40):
        c = gal.cutout(i)
        if any(s.role in ("star", "sersic") for s in c.sources):
            central = next(s for s in c.sources if s.role == "central")
            assert c.truth["galaxy"].sum() == pytest.approx(central.placement.flux, rel=0.05)
            break
    else:
        raise AssertionError("no star or Sersic neighbour in 40 galaxies cutouts")


def test_bad_star_and_sersic_settings_are_refused():
    """Negative densities, inverted ranges and Sersic indices GalSim cannot draw fail early."""
    for bad in (
        {"star_density": -1.0},
        {"star_mag_range": (25.0, 20.0)},
        {"sersic_n_range": (0.5, 8.0)},
        {"sersic_hlr_range": (0.0, 1.0)},
    ):
        with pytest.raises(ConfigError, match="scene:"):
            replace(SceneConfig(), **bad).validate()

"""Multi-band inputs: band names, band matching against a prior's bands, per-band PSFs,
variances and zero points.

A tiny 3-band (g, r, i) Gaussian prior with correlated bands makes the posterior exact when
CG converges, so the samples must follow the closed form computed here from the file's
pixels, each band's zero point and noise, and a reference operator assembled band by band
from one-band operators: a wrong band picked, a PSF or variance of another band, a wrong
per-band flux scale or a selection whose adjoint is not its transpose shows up as a biased
mean or a wrong spread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.io import fits
from fits_factory import gaussian_psf, make_cutout, run_cli

from galprism.diffusion.samplers import SamplerConfig
from galprism.errors import ConfigError, InputError, ShapeError
from galprism.frame import Frame
from galprism.gaussian import GaussianPrior
from galprism.io.read import ReadOptions, read_cutout
from galprism.observation import Observation, stack_observations
from galprism.operators import SelectBands
from galprism.priorset import PriorSet
from galprism.separate import SeparateConfig
from galprism.separate.inference import fit_to_prior, separate_observations

N = 8  # prior grid (3, 8, 8) at 0.1"/px; cutouts 4x4 at 0.2"/px (downsampling 2)
BANDS = ("g", "r", "i")
PSF_WIDTH = {"g": 0.9, "r": 0.7, "i": 0.5}
SIGMA = {"g": 0.08, "r": 0.05, "i": 0.04}
ZEROPOINT = {"g": 26.5, "r": 27.0, "i": 27.4}  # the prior's is 27
PRIOR_ZP = 27.0


def _smooth_cov(n: int, length: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).to(torch.float64)
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * length**2))


def _gaussian(bands: tuple[str, ...], n: int, seed: int = 0) -> GaussianPrior:
    """Correlated bands (so that an unobserved band is constrained by the others), each with
    its own mean level."""
    g = torch.Generator().manual_seed(seed)
    c = len(bands)
    rho = torch.tensor([[0.7 ** abs(i - j) for j in range(c)] for i in range(c)])
    cov = torch.kron(rho.to(torch.float64), _smooth_cov(n, 2.0)) + 1e-3 * torch.eye(c * n * n)
    levels = torch.linspace(0.3, 0.9, c, dtype=torch.float64)[:, None, None]
    mean = levels + 0.2 * torch.randn((c, n, n), generator=g, dtype=torch.float64)
    return GaussianPrior.from_covariance(mean, cov.to(torch.float64))


@pytest.fixture(scope="module")
def prior() -> PriorSet:
    frame = Frame((3, N, N), bands=BANDS, pixel_scale=0.1, zeropoint=PRIOR_ZP)
    return PriorSet("tiny-gri", "gaussian", ["galaxy"], [_gaussian(BANDS, N)], frame)


def _cube(path, bands: tuple[str, ...], *, names: bool = True, header: dict | None = None):
    """A 4x4 cutout of ``bands`` with each band's PSF, noise and zero point (MAGZEROn)."""
    c = len(bands)
    hdr = dict(header or {})
    if names and c > 1:
        hdr["BANDS"] = ",".join(bands)
    elif names:
        hdr["FILTER"] = bands[0]
    if c > 1:
        hdr.update({f"MAGZERO{i + 1}": ZEROPOINT[b] for i, b in enumerate(bands)})
    else:
        hdr["MAGZERO"] = ZEROPOINT[bands[0]]
    rng = np.random.default_rng(len(path.name))
    image = np.stack([0.4 + rng.normal(0.0, SIGMA[b], (4, 4)) for b in bands])
    variance = np.stack([np.full((4, 4), SIGMA[b] ** 2) for b in bands])
    psf = np.stack([gaussian_psf(3, PSF_WIDTH[b]) for b in bands])
    return make_cutout(
        path,
        shape=(c, 4, 4),
        image=image if c > 1 else image[0],
        scale=0.2,
        psf=psf if c > 1 else psf[0],
        noise_values=variance if c > 1 else variance[0],
        header=hdr,
    )


def _exact_posterior(
    prior: PriorSet, cut, bands: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form posterior mean and std of the prior's 3 bands (normalised prior units)
    given the file's bands, built band by band without the pipeline's band handling."""
    data = fits.getdata(cut, "SCI").astype(np.float64).reshape(len(bands), 4, 4)
    fine = Frame((1, N, N), pixel_scale=0.1)
    rows, ys, nvs = [], [], []
    d = N * N
    for b, name in enumerate(bands):
        k = 10 ** (0.4 * (PRIOR_ZP - ZEROPOINT[name]))
        one = Observation(
            image=np.zeros((1, 4, 4)),
            variance=1.0,
            psf=gaussian_psf(3, PSF_WIDTH[name]),
            pixel_scale=0.2,
        )
        op = one.operator_for(fine, ["galaxy"]).ops[0]
        m_band = op.apply(torch.eye(d, dtype=torch.float64).reshape(d, 1, N, N)).reshape(d, -1).T
        j = BANDS.index(name)
        row = torch.zeros(m_band.shape[0], 3 * d, dtype=torch.float64)
        row[:, j * d : (j + 1) * d] = m_band
        rows.append(row)
        ys.append(torch.from_numpy(data[b].reshape(-1) * k))
        nvs.append(torch.full((16,), (SIGMA[name] * k) ** 2, dtype=torch.float64))
    m, y, nv = torch.cat(rows), torch.cat(ys), torch.cat(nvs)
    g = prior.priors[0]
    mu, s = g.mean.reshape(-1).to(torch.float64), g.covariance().to(torch.float64)
    gram = m @ s @ m.T + torch.diag(nv)
    gain = torch.linalg.solve(gram, m @ s).T
    mean = mu + gain @ (y - m @ mu)
    cov = s - gain @ m @ s
    return mean, cov.diagonal().clamp_min(0).sqrt()


def _assert_follows(samples: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, what: str):
    n = samples.shape[0]
    z = (samples.mean(0) - mean) / std * np.sqrt(n)
    rms_z = float(z.pow(2).mean().sqrt())
    ratio = float((samples.std(0) / std).mean())
    assert rms_z < 1.5, f"{what}: posterior mean biased: rms z-score {rms_z:.2f} (1 expected)"
    assert 0.85 < ratio < 1.15, f"{what}: posterior spread off: std ratio {ratio:.3f}"


CONFIG = SeparateConfig(sampler=SamplerConfig(n_samples=64, steps=32, cg_iterations=16))


@pytest.mark.parametrize(
    "bands",
    [("g", "r", "i"), ("r", "i"), ("i", "g"), ("r",)],
    ids=["all", "superset-ri", "reordered-ig", "single-r"],
)
def test_cube_posterior_is_the_closed_form_for_the_bands_it_observes(tmp_path, prior, bands):
    """Python API: a cube of all, some (in another order) or one of the prior's bands, each
    band with its own PSF, noise and zero point, gives samples of all three prior bands that
    follow the exact posterior; a band matched to the wrong prior band, a per-band factor
    applied to the wrong band or a selection mixed up would bias it."""
    cut = _cube(tmp_path / f"{''.join(bands)}.fits", bands)
    obs = read_cutout(cut)
    assert obs.bands == bands
    cropped, factor = fit_to_prior(obs, prior, CONFIG)
    assert factor == 2 and obs.band_index(prior.frame) == tuple(BANDS.index(b) for b in bands)
    res = separate_observations([cropped], prior, CONFIG, [11])[0]
    assert res.boxes == [] and res.samples.shape == (64, 1, 3, N, N)
    assert res.model.shape == (len(bands), 4, 4)
    expected = [10 ** (0.4 * (PRIOR_ZP - ZEROPOINT[b])) for b in bands]
    np.testing.assert_allclose(res.flux_factors, expected, rtol=1e-12)
    # Back to the prior's units: each band by the factor that converted it.
    x = torch.from_numpy(res.samples[:, 0].astype(np.float64) * res.source_factors[:, None, None])
    mean, std = _exact_posterior(prior, cut, bands)
    _assert_follows(x.reshape(64, -1), mean, std, f"bands {bands}")


def test_single_band_input_uses_the_matching_band_of_a_three_band_prior(tmp_path, prior):
    """A one-band file with FILTER = i observes the prior's third band only: the posterior mean
    of band i moves to the data while g and r stay near what their correlation with i says;
    matching by position instead would put the data in band g."""
    cut = _cube(tmp_path / "i.fits", ("i",))
    obs = read_cutout(cut)
    assert obs.bands == ("i",) and obs.band_index(prior.frame) == (2,)
    batch = stack_observations([obs.crop(None, (4, 4))], prior.frame, dtype=torch.float64)
    op = batch.operator_for(["galaxy"])
    x = torch.zeros((1, 1, 3, N, N), dtype=torch.float64)
    x[0, 0, 2] = 1.0  # light only in band i reaches the data
    assert float(op.apply(x).sum()) > 0
    x = torch.zeros((1, 1, 3, N, N), dtype=torch.float64)
    x[0, 0, :2] = 1.0  # light in g and r does not
    assert float(op.apply(x).abs().sum()) == 0.0


def test_select_bands_is_exactly_adjoint_and_picks_by_index():
    """<S x, y> = <x, S^T y> and S x holds the chosen bands in the chosen order, zeros in the
    adjoint's other bands: the sampler's CG and MMPS need the exact adjoint."""
    g = torch.Generator().manual_seed(0)
    op = SelectBands((2, 0), (3, 4, 5))
    x = torch.randn((2, 3, 4, 5), generator=g, dtype=torch.float64)
    y = torch.randn((2, 2, 4, 5), generator=g, dtype=torch.float64)
    assert torch.equal(op.apply(x), x[:, [2, 0]])
    back = op.adjoint(y)
    assert torch.equal(back[:, 1], torch.zeros_like(back[:, 1]))
    lhs, rhs = float((op.apply(x) * y).sum()), float((x * back).sum())
    assert abs(lhs - rhs) < 1e-12 * max(1.0, abs(lhs))
    with pytest.raises(ShapeError, match="distinct"):
        SelectBands((1, 1), (3, 4, 5))


def test_cli_cube_writes_band_cubes_with_band_names_and_zero_points(
    tmp_path, capsys, monkeypatch, prior
):
    """CLI on a FITS cube (bands r, i) with a 3-band prior: the sources keep the prior's three
    bands (BANDS card g,r,i, per-band MAGZEROn), MODEL/RESID the input's two (BANDS r,i), and
    the samples follow the exact posterior."""
    folder = tmp_path / "tiny-gri"
    prior.save(folder)
    cut = _cube(tmp_path / "ri.fits", ("r", "i"))
    out = tmp_path / "ri.galprism.fits"
    code, recs, _, err = run_cli(
        ["separate", cut, "--prior", folder, "-n", 64, "--steps", 32, "--cg-iterations", 16]
        + ["-o", out, "--json", "-q", "--device", "cpu"],
        capsys,
        monkeypatch,
    )
    assert code == 0 and recs[0]["status"] == "ok", err
    with fits.open(out) as h:
        assert h[0].header["PBANDS"] == "g,r,i" and h[0].header["BANDS"] == "r,i"
        assert (h[0].header["ZPINPUT1"], h[0].header["ZPINPUT2"]) == (27.0, 27.4)
        assert h[0].header["FLUXFAC1"] == 1.0 and "FLUXFAC" not in h[0].header
        assert h[0].header["FLUXFAC2"] == pytest.approx(10 ** (0.4 * (PRIOR_ZP - 27.4)))
        gal = h["GALAXY"].header
        assert gal["BANDS"] == "g,r,i" and h["GALAXY"].data.shape == (64, 3, N, N)
        # r and i keep the input's zero points; g, which the input lacks, is on the prior's.
        assert (gal["MAGZERO1"], gal["MAGZERO2"], gal["MAGZERO3"]) == (PRIOR_ZP, 27.0, 27.4)
        assert h["MODEL"].data.shape == (2, 4, 4) and h["MODEL"].header["BANDS"] == "r,i"
        assert h["RESID"].header["BANDS"] == "r,i"
        x = h["GALAXY"].data.astype(np.float64)
    factors = np.array([1.0, 1.0, 10 ** (0.4 * (PRIOR_ZP - ZEROPOINT["i"]))])
    samples = torch.from_numpy(x * factors[:, None, None]).reshape(64, -1)
    mean, std = _exact_posterior(prior, cut, ("r", "i"))
    _assert_follows(samples, mean, std, "CLI bands r,i")


def test_cli_bands_flag_names_an_unnamed_cube_and_is_checked(tmp_path, capsys, monkeypatch, prior):
    """--bands names the bands of a cube whose header has none (the run succeeds); a cube
    with no names and no --bands, and a --bands list of another length, are one-line errors
    naming the file; a repeated name is a usage error (exit 2)."""
    folder = tmp_path / "tiny-gri"
    prior.save(folder)
    cut = _cube(tmp_path / "anon.fits", ("r", "i"), names=False)
    base = ["separate", cut, "--prior", folder, "-n", 2, "--steps", 4, "--json", "-q"]
    (tmp_path / "a").mkdir()
    code, recs, _, err = run_cli(
        [*base, "--output-dir", tmp_path / "a", "--bands", "r,i"], capsys, monkeypatch
    )
    assert code == 0 and recs[0]["status"] == "ok", err
    (tmp_path / "b").mkdir()
    code, _, _, err = run_cli([*base, "--output-dir", tmp_path / "b"], capsys, monkeypatch)
    assert code == 1 and len(err) == 1 and "anon.fits" in err[0], err
    assert "no band names" in err[0], err
    code, _, _, err = run_cli(
        [*base, "--output-dir", tmp_path / "b", "--bands", "g,r,i"], capsys, monkeypatch
    )
    assert code == 1 and len(err) == 1 and "3 band name(s) given" in err[0], err
    code, _, _, err = run_cli(
        [*base, "--output-dir", tmp_path / "b", "--bands", "r,r"], capsys, monkeypatch
    )
    assert code == 2 and "--bands" in err[-1], err
    assert not any((tmp_path / "b").iterdir()), "a refused input must leave no output"


def test_bad_band_inputs_are_refused_with_one_line_naming_the_file(tmp_path, prior):
    """Refused, naming the file: a cube of several unnamed bands; bands given that are not as
    many as the cube's; a PSF cube of another band count; input bands the prior does not
    model (named in the message); an unnamed one-band input for a 3-band prior."""
    anon = _cube(tmp_path / "anon.fits", ("g", "r"), names=False)
    with pytest.raises(InputError, match=r"anon\.fits.*no band names"):
        read_cutout(anon)
    with pytest.raises(InputError, match=r"anon\.fits.*3 band name\(s\) given"):
        read_cutout(anon, ReadOptions(bands="g,r,i"))
    assert read_cutout(anon, ReadOptions(bands=("g", "r"))).bands == ("g", "r")
    with pytest.raises(ConfigError, match="distinct"):
        ReadOptions(bands="g,G")

    psf_path = tmp_path / "psf3.fits"
    fits.PrimaryHDU(np.stack([gaussian_psf(3, 0.7)] * 3)).writeto(psf_path)
    with pytest.raises(InputError, match=r"psf3\.fits: PSF cube has 3 band\(s\).*has 2"):
        read_cutout(_cube(tmp_path / "gr.fits", ("g", "r")), ReadOptions(psf=str(psf_path)))

    z = read_cutout(_cube(tmp_path / "rz.fits", ("r", "i")), ReadOptions(bands="r,z"))
    with pytest.raises(InputError, match=r"rz\.fits: band\(s\) z of .* not modelled") as exc:
        fit_to_prior(z, prior, CONFIG)
    assert "\n" not in str(exc.value) and "g, r, i" in str(exc.value)

    one = read_cutout(_cube(tmp_path / "one.fits", ("r",), names=False))
    assert one.bands is None
    with pytest.raises(InputError, match=r"one\.fits: cutout has 1 band\(s\) without names"):
        fit_to_prior(one, prior, CONFIG)


def test_band_zero_points_come_from_numbered_keywords(tmp_path):
    """MAGZERO1..n give one zero point per band (flux factors per band), equal ones collapse
    to one zero point, --band picks its band's, and a single MAGZERO applies to every band."""
    cut = _cube(tmp_path / "gri.fits", BANDS)
    obs = read_cutout(cut)
    assert obs.band_zeropoints == (26.5, 27.0, 27.4) and obs.zeropoint is None
    np.testing.assert_allclose(
        obs.flux_factors_to(27.0), [10 ** (0.4 * (27.0 - z)) for z in (26.5, 27.0, 27.4)]
    )
    with pytest.raises(InputError, match="different zero points"):
        obs.flux_factor_to(27.0)
    picked = read_cutout(cut, ReadOptions(band="i"))
    assert picked.bands == ("i",) and picked.zeropoint == 27.4 and picked.band_zeropoints is None
    same = read_cutout(
        _cube(tmp_path / "same.fits", ("g", "r"), header={"MAGZERO": 25.0}),
        ReadOptions(zeropoint=26.0),
    )
    assert same.zeropoint == 26.0 and same.band_zeropoints is None
    with fits.open(cut) as h:
        for i in range(3):
            h["SCI"].header[f"MAGZERO{i + 1}"] = 26.0
        h.writeto(tmp_path / "flat.fits")
    flat = read_cutout(tmp_path / "flat.fits")
    assert flat.zeropoint == 26.0 and flat.band_zeropoints is None


def _scene_prior(bands: tuple[str, ...], size: int = 8) -> PriorSet:
    """A smooth 2-band galaxy prior with a central blob mean on a ``size`` grid of 0.2"."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = torch.exp(-((yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2) / 2.0)
    c = len(bands)
    mean = torch.stack([blob * (1.0 + b) for b in range(c)]).to(torch.float64)
    rho = torch.tensor([[0.7 ** abs(i - j) for j in range(c)] for i in range(c)])
    cov = 0.5 * torch.kron(rho, _smooth_cov(size, 1.0)) + 1e-3 * torch.eye(c * size * size)
    frame = Frame((c, size, size), bands=bands, pixel_scale=0.2, zeropoint=27.0)
    gauss = GaussianPrior.from_covariance(mean, cov.to(torch.float64))
    return PriorSet("gauss-gi", "gaussian", ["galaxy"], [gauss], frame)


def test_scene_blend_of_a_one_band_image_sees_only_its_band_of_the_prior():
    """The blend operator of an i-band image with a g,i galaxy prior is the one-band blend
    operator applied to the galaxy's i band: g light never reaches the data and i light
    reaches it exactly as with a one-band prior."""
    from galprism.scene.model import build_blend_model

    prior = _scene_prior(("g", "i"))
    psf = gaussian_psf(5, 1.0)
    img = Observation(np.zeros((1, 12, 12)), 0.01, psf, bands=("i",), zeropoint=27.0)
    one = Observation(np.zeros((1, 12, 12)), 0.01, psf, zeropoint=27.0)
    pos, scales = np.array([[4.2, 5.1], [7.6, 6.3]]), np.array([1.0, 2.0])
    two_band = build_blend_model(img, prior.frame, pos, scales, np.zeros((0, 2)))
    one_band = build_blend_model(
        one, Frame((1, 8, 8), pixel_scale=0.2, zeropoint=27.0), pos, scales, np.zeros((0, 2))
    )
    x = torch.randn((3, 2, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for a, b in zip(two_band.light, one_band.light, strict=True):
        torch.testing.assert_close(a.apply(x), b.apply(x[:, 1:]), rtol=1e-12, atol=1e-12)
        y = torch.randn((3, 1, 12, 12), dtype=torch.float64)
        back = a.adjoint(y)
        assert float(back[:, 0].abs().max()) == 0.0, "g must not see the i-band data"
        torch.testing.assert_close(back[:, 1:], b.adjoint(y), rtol=1e-12, atol=1e-12)


def test_scene_catalogue_has_per_band_flux_columns_for_a_multi_band_prior(
    tmp_path, capsys, monkeypatch
):
    """With a g,i prior an i-band scene gets flux_i, flux_err_i, flux_q16_i... and no plain
    flux column; the star's i flux is recovered."""
    from astropy.table import Table

    shape = (20, 30)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    clean = np.zeros(shape)
    for x, y, width, flux in ((8.2, 9.6, 1.9, 30.0), (22.4, 10.3, 1.2, 40.0)):
        g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * width**2))
        clean += flux * g / g.sum()
    img = clean + np.random.default_rng(0).normal(0, 0.05, shape)
    path = make_cutout(
        tmp_path / "scene.fits",
        shape=shape,
        image=img,
        sigma=0.05,
        psf=gaussian_psf(11, 1.2),
        header={"MAGZERO": 27.0, "FILTER": "i"},
    )
    Table({"x": [8.2, 22.4], "y": [9.6, 10.3], "kind": ["galaxy", "star"]}).write(
        tmp_path / "scene.ecsv", format="ascii.ecsv"
    )
    code, recs, _, err = run_cli(
        ["separate", path, "--catalog", tmp_path / "scene.ecsv", "--output-dir", tmp_path / "o"]
        + ["--json", "--scene", "--steps", "8", "-n", "16", "--cg-iterations", "8"],
        capsys,
        monkeypatch,
        prior=_scene_prior(("g", "i")),
    )
    assert code in (0, None) and recs[0]["status"] == "ok", err
    cat = Table.read(tmp_path / "o" / "scene.galprism.catalog.ecsv")
    names = set(cat.colnames)
    assert {"flux_i", "flux_err_i", "flux_q16_i", "flux_q84_i"} <= names, names
    assert "flux" not in names and "flux_g" not in names, names
    assert abs(float(cat["flux_i"][1]) - 40.0) < 0.1 * 40.0, cat["flux_i"][1]


def test_freeform_components_live_in_the_input_bands(prior):
    """A bright point source in an i,g input of the g,r,i prior gets a free-form box in the
    input's two bands; the output has the prior's three bands in GALAXY and the input's two,
    named, in FREEFORM and MODEL: free-form components built on the prior's band count would
    not fit the data they whiten."""
    from dataclasses import replace

    from galprism.freeform import FreeformConfig
    from galprism.separate.output import build_hdulist

    img = np.random.default_rng(0).normal(0, 0.05, (2, 4, 4))
    img[:, 1, 2] += 200.0
    psf = np.stack([gaussian_psf(3, 0.7)] * 2)
    obs = Observation(img, 0.0025, psf, pixel_scale=0.2, zeropoint=27.0, bands=("i", "g"))
    cfg = replace(
        CONFIG,
        sampler=SamplerConfig(n_samples=4, steps=4, cg_iterations=4),
        freeform=FreeformConfig(bright=5.0, edge=None),
    )
    cropped, _ = fit_to_prior(obs, prior, cfg)
    res = separate_observations([cropped], prior, cfg, [1])[0]
    assert [b.kind for b in res.boxes] == ["bright"]
    assert res.freeform is not None and res.freeform.shape == (4, 2, N, N)
    with build_hdulist(res, prior, cfg, "cpu") as h:
        assert h["GALAXY"].data.shape == (4, 3, N, N) and h["GALAXY"].header["BANDS"] == "g,r,i"
        assert h["FREEFORM"].header["BANDS"] == "i,g" and h["MODEL"].header["BANDS"] == "i,g"


def test_survey_band_names_match_the_prior_band_by_their_last_part():
    """Survey headers write FILTER = 'HSC-I': it must map to the prior's band i (not be
    refused), while an unrelated name is still refused and two names of one band too."""
    from galprism.errors import InputError
    from galprism.frame import Frame
    from galprism.observation import match_bands

    frame = Frame(shape=(3, 8, 8), bands=("g", "r", "i"), pixel_scale=0.2)

    class _Obs:
        name = "cut.fits"

        def __init__(self, bands):
            self.bands = bands
            self.n_bands = len(bands)

    assert match_bands(_Obs(("HSC-I",)), frame) == (2,)
    assert match_bands(_Obs(("hsc_g", "R")), frame) == (0, 1)
    with pytest.raises(InputError, match="HSC-NB921"):
        match_bands(_Obs(("HSC-NB921",)), frame)
    with pytest.raises(InputError, match="twice"):
        match_bands(_Obs(("i", "HSC-I")), frame)

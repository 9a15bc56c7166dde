"""Scene mode: the joint model of a blend against its closed form, and the pipeline end to end."""

from __future__ import annotations

import numpy as np
import torch
from astropy.io import fits
from fits_factory import gaussian_psf

from galprism.diffusion.samplers import SamplerConfig
from galprism.frame import Frame
from galprism.gaussian import GaussianPrior
from galprism.observation import Observation
from galprism.scene.model import build_blend_model, flux_scales, sample_blend, typical_flux
from galprism.testing import exactness_errors


def _smooth_prior(size: int, seed: int) -> GaussianPrior:
    """A smooth Gaussian galaxy prior with a positive mean, on a ``size`` x ``size`` grid."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1).to(torch.float64)
    cov = 0.5 * torch.exp(-(torch.cdist(p, p) ** 2) / 2.0) + 1e-3 * torch.eye(size * size)
    r2 = ((p - (size - 1) / 2) ** 2).sum(1)
    mean = (torch.exp(-r2 / 2.0) + 0.05 * torch.rand(size * size, generator=gen)).reshape(
        1, size, size
    )
    return GaussianPrior.from_covariance(mean.to(torch.float64), cov.to(torch.float64))


def _dense(model, k: int, c: int, stamp: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked map from (x_1..x_K, coefficients) to the data, and the prior factor."""
    d = int(np.prod(stamp))
    n = model.y[0].numel()
    valid = model.valid.reshape(-1).to(torch.float64)
    blocks = []
    for op in model.light:
        eye = torch.eye(d, dtype=torch.float64).reshape(d, *stamp)
        blocks.append(op.apply(eye).reshape(d, n).T)
    cols = model.linear.columns[0]
    m = torch.cat([*blocks, cols], dim=1) * valid[:, None]
    return m, model.linear.factors[0]


def test_two_galaxies_and_a_star_blend_posterior_matches_its_closed_form():
    """Galaxies by MMPS plus star and background drawn given them must be the exact joint
    posterior of the linear-Gaussian blend: a wrong placement adjoint, a flux scale left out
    of the operator or the conditional draw, a whitening that ignores the mask, or a star
    column out of step with its coefficient would bias the mean or the spread."""
    stamp = (1, 4, 4)
    prior = _smooth_prior(4, seed=0)
    frame = Frame(stamp)
    h = w = 8
    gen = torch.Generator().manual_seed(1)
    valid = torch.rand(1, h, w, generator=gen) > 0.1
    galaxies = np.array([[2.3, 2.8], [5.2, 4.6]])
    stars = np.array([[6.4, 1.2]])
    scales = np.array([1.0, 2.5])
    noise = 0.04
    psf = gaussian_psf(5, 1.0)
    blank = Observation(np.zeros((1, h, w)), np.full((1, h, w), noise), psf, valid=valid.numpy())
    model = build_blend_model(
        blank,
        frame,
        galaxies,
        scales,
        stars,
        star_scale=np.array([3.0]),
        background_scale=2.0,
        dtype=torch.float64,
    )
    m, factor = _dense(model, 2, 1, stamp)
    k_lin = factor.shape[0]
    mu = torch.cat([prior.mean.reshape(-1)] * 2 + [torch.zeros(k_lin, dtype=torch.float64)])
    s = torch.block_diag(prior.covariance(), prior.covariance(), factor @ factor.T)
    truth = mu + torch.linalg.cholesky(s) @ torch.randn(len(mu), generator=gen, dtype=torch.float64)
    y = (m @ truth + noise**0.5 * torch.randn(h * w, generator=gen, dtype=torch.float64)) * (
        valid.reshape(-1)
    )
    obs = Observation(
        y.reshape(1, h, w).numpy(), np.full((1, h, w), noise), psf, valid=valid.numpy()
    )
    model = build_blend_model(
        obs,
        frame,
        galaxies,
        scales,
        stars,
        star_scale=np.array([3.0]),
        background_scale=2.0,
        dtype=torch.float64,
    )
    # The galaxies' ownership and wing terms follow the data's light: the closed form is
    # that of the model built on the data.
    m, factor = _dense(model, 2, 1, stamp)
    k_lin = factor.shape[0]
    assert len(model.wing_owner) and model.linear_mean.abs().sum() > 0  # a wing to test
    mu = torch.cat([prior.mean.reshape(-1)] * 2 + [model.linear_mean])
    s = torch.block_diag(prior.covariance(), prior.covariance(), factor @ factor.T)
    g = m @ s @ m.T + noise * torch.eye(h * w, dtype=torch.float64)
    g = g + torch.diag((~valid.reshape(-1)).to(torch.float64))  # masked rows: data 0, no info
    gain = torch.linalg.solve(g, m @ s).T
    mean = mu + gain @ (y - m @ mu)
    cov = s - gain @ m @ s
    # The samples hold s_k w_k x_k, w_k the galaxy's ownership of its stamp's pixels:
    # the closed form of that is a rescaling.
    scale = torch.cat(
        [float(v) * model.support[k].expand(stamp).reshape(-1) for k, v in enumerate(scales)]
        + [torch.ones(k_lin, dtype=torch.float64)]
    )
    mean, cov = mean * scale, cov * scale[:, None] * scale[None, :]

    n = 512
    out = sample_blend(
        model,
        prior,
        SamplerConfig(method="pc", steps=16, n_samples=n, cg_iterations=h * w),
        torch.Generator().manual_seed(2),
        torch.Generator().manual_seed(3),
    )
    samples = torch.cat([out.galaxies.reshape(n, -1), out.coefficients], dim=1)
    mean_err, std_err = exactness_errors(samples, mean, cov)
    assert mean_err < 0.25, f"joint posterior mean off by {mean_err:.3f} sigma"
    assert std_err < 0.25, f"joint posterior std off by {std_err:.3f} (relative)"
    std = cov.diagonal().sqrt()
    want_corr = cov / std[:, None] / std[None, :]
    got_corr = torch.corrcoef(samples.T)
    corr_err = float((got_corr - want_corr).abs().max())
    assert corr_err < 0.2, f"joint posterior correlations off by up to {corr_err:.3f}"
    # 16 sampler steps leave a discretisation error of the spread of up to ~20 %; the
    # denoiser test below checks the same model exactly.
    # The star's and the background's light are their coefficients through their columns.
    light = out.sources[:, 2].reshape(n, -1)
    assert torch.allclose(light, out.coefficients[:, :1] @ model.linear.columns[0][:, :1].T)


def test_blend_denoiser_is_the_exact_conditional_of_the_marginal_model():
    """MMPS's denoiser on the whitened blend must equal E[x | x_t, y] of the model with the
    star and background integrated out (dense algebra): exact for Gaussian priors, so any
    error of placement, flux scale, mask or whitening shows up at round-off level."""
    from galprism.posterior import JointPosterior

    stamp = (1, 4, 4)
    prior = _smooth_prior(4, seed=0)
    h = w = 8
    gen = torch.Generator().manual_seed(7)
    valid = (torch.rand(1, h, w, generator=gen) > 0.15).numpy()
    y = torch.randn(1, h, w, generator=gen, dtype=torch.float64).numpy() * valid
    obs = Observation(y, np.full((1, h, w), 0.05), gaussian_psf(5, 1.0), valid=valid)
    model = build_blend_model(
        obs,
        Frame(stamp),
        np.array([[2.3, 2.8], [5.2, 4.6]]),
        np.array([1.0, 2.5]),
        np.array([[6.4, 1.2]]),
        star_scale=np.array([3.0]),
        background_scale=2.0,
        dtype=torch.float64,
    )
    post = JointPosterior(
        [prior, prior], model.operator, model.y_white, model.noise_white, cg_iterations=h * w + 8
    )
    t = torch.tensor(0.5, dtype=torch.float64)
    sig = post.sigma(t)
    x_t = torch.randn(1, 2, *stamp, generator=gen, dtype=torch.float64) * 2
    got = post(x_t, t).reshape(-1)

    m, factor = _dense(model, 2, 1, stamp)
    d = 16
    mg, b = m[:, : 2 * d], m[:, 2 * d :]
    cov_y = torch.diag(model.noise_var.reshape(-1).to(torch.float64)) + b @ factor @ factor.T @ b.T
    mu = torch.cat([prior.mean.reshape(-1)] * 2)
    s = torch.block_diag(prior.covariance(), prior.covariance())
    big = torch.cat([torch.eye(2 * d, dtype=torch.float64), mg])
    noise = torch.block_diag(
        torch.diag(sig[0] ** 2 * torch.ones(2 * d, dtype=torch.float64)), cov_y
    )
    obs_vec = torch.cat([x_t.reshape(-1), model.y.reshape(-1).to(torch.float64)])
    g = big @ s @ big.T + noise
    want = mu + s @ big.T @ torch.linalg.solve(g, obs_vec - big @ mu)
    assert torch.allclose(got, want, atol=1e-6), f"max error {float((got - want).abs().max()):.2e}"


def test_flux_scale_is_measured_over_typical_and_never_below_one():
    """A galaxy twice as bright as the prior's typical draw gets s = 2; fainter ones s = 1
    (the prior then sees them as it does today); the typical flux is the prior's median."""
    prior = _smooth_prior(5, seed=0)
    typ = typical_flux(prior, n=256, steps=16)
    assert abs(typ - float(prior.mean.sum())) < 0.15 * float(prior.mean.sum())
    assert typical_flux(prior, n=256, steps=16) == typ  # cached: the same value, no redraw
    np.testing.assert_allclose(flux_scales([2 * typ, 0.3 * typ, np.nan], typ), [2.0, 1.0, 1.0])


def _gaussian_priorset(size: int = 8):
    """A prior set whose galaxy source is a smooth Gaussian on a ``size`` grid of 0.2"."""
    from galprism.priorset import PriorSet

    frame = Frame((1, size, size), pixel_scale=0.2, zeropoint=27.0)
    return PriorSet("gauss", "gaussian", ["galaxy"], [_smooth_prior(size, seed=0)], frame)


def _blob(shape, x, y, sigma, flux):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return flux * g / g.sum()


def _scene_file(tmp_path, name, sources, *, noise=0.05, seed=0):
    """A 24 x 40 image of Gaussian galaxies and PSF stars, its truth, and its catalogue."""
    from astropy.table import Table
    from fits_factory import make_cutout

    shape = (24, 40)
    psf_sigma = 1.2
    clean = np.zeros(shape)
    for x, y, kind, flux in sources:
        width = psf_sigma if kind == "star" else float(np.hypot(1.5, psf_sigma))
        clean += _blob(shape, x, y, width, flux)
    img = clean + np.random.default_rng(seed).normal(0, noise, shape)
    path = make_cutout(
        tmp_path / f"{name}.fits",
        shape=shape,
        image=img,
        sigma=noise,
        psf=gaussian_psf(11, psf_sigma),
        header={"MAGZERO": 27.0},
    )
    table = Table(
        {
            "x": [s[0] for s in sources],
            "y": [s[1] for s in sources],
            "kind": [s[2] for s in sources],
        }
    )
    table.write(tmp_path / f"{name}.ecsv", format="ascii.ecsv")
    return path, clean


SCENE_FLAGS = ["--scene", "--steps", "8", "-n", "16", "--cg-iterations", "8", "--device", "cpu"]


def test_scene_cli_writes_a_catalogue_model_and_children_that_add_up(tmp_path, capsys, monkeypatch):
    """Three sources in two blends: the catalogue must have three rows whose fluxes add up
    to the true total, and the children must share out the data: sum_k child_k equals
    data - BACKGROUND wherever the sources' model is non-zero (flux conservation)."""
    from astropy.io import fits
    from astropy.table import Table
    from fits_factory import run_cli

    sources = [(8.3, 11.6, "galaxy", 30.0), (12.8, 12.2, "galaxy", 20.0), (30.4, 9.7, "star", 40.0)]
    path, clean = _scene_file(tmp_path, "scene", sources)
    code, records, _, err = run_cli(
        [
            "separate",
            path,
            "--catalog",
            tmp_path / "scene.ecsv",
            "--output-dir",
            tmp_path / "out",
            "--json",
            *SCENE_FLAGS,
        ],
        capsys,
        monkeypatch,
        prior=_gaussian_priorset(),
    )
    assert code in (0, None), err
    assert records[0]["status"] == "ok"
    out = tmp_path / "out" / "scene.galprism.fits"
    cat = Table.read(tmp_path / "out" / "scene.galprism.catalog.ecsv")
    assert len(cat) == 3
    assert sorted(set(cat["blend"])) == [0, 1]
    assert cat["blend"][0] == cat["blend"][1] != cat["blend"][2]
    assert list(cat["kind"]) == ["galaxy", "galaxy", "star"]
    total = float(np.sum(cat["flux"]))
    err_total = float(np.sqrt(np.sum(np.asarray(cat["flux_err"]) ** 2)))
    assert abs(total - 90.0) < max(4 * err_total, 0.05 * 90.0), (total, err_total)
    assert abs(float(cat["flux"][2]) - 40.0) < 0.1 * 40.0, cat["flux"][2]
    with fits.open(out) as hdul:
        data = fits.getdata(path, "SCI").astype(np.float64)
        model = hdul["MODEL"].data.astype(np.float64)
        bkg = hdul["BACKGROUND"].data.astype(np.float64)
        children = hdul["CHILDREN"].data.astype(np.float64)
        stamps = hdul["STAMPS"].data
        resid = hdul["RESID"].data
        assert hdul["MODEL"].header["CTYPE1"].startswith("RA")
        assert len(Table.read(hdul["CATALOG"])) == 3
    assert stamps.shape == (3, 2, 8, 8)
    # Children are windows of each source's blend box; placed back they share out the data.
    assert children.shape[0] == 3 and children.shape[1:] != data.shape
    placed = np.zeros_like(data)
    for k, (x0, y0) in enumerate(zip(cat["child_x0"], cat["child_y0"], strict=True)):
        ny = min(children.shape[1], data.shape[0] - y0)
        nx = min(children.shape[2], data.shape[1] - x0)
        placed[y0 : y0 + ny, x0 : x0 + nx] += children[k, :ny, :nx]
    frac = np.asarray(cat["stamp_frac"])
    assert np.all((frac > 0.5) & (frac <= 1.0 + 1e-9)), frac
    sources_model = model - bkg
    on = np.abs(sources_model) > 1e-6
    np.testing.assert_allclose(placed[on], (data - bkg)[on], rtol=1e-4, atol=1e-4)
    assert on.sum() > 100
    # The model reaches the noise where the sources are.
    bright = clean > 0.5
    assert float(np.mean(resid[bright] ** 2)) < 4.0


def test_scene_batch_goes_on_past_a_catalogue_with_a_bad_row(tmp_path, capsys, monkeypatch):
    """A catalogue row with no position fails its input with one line naming the file and the
    source, exit status 1, while the next input of the batch is written."""
    from astropy.table import Table
    from fits_factory import run_cli

    good, _ = _scene_file(tmp_path, "good", [(10.0, 12.0, "galaxy", 30.0)])
    bad, _ = _scene_file(tmp_path, "bad", [(10.0, 12.0, "galaxy", 30.0)], seed=1)
    table = Table({"id": [1, 2], "x": [10.0, np.nan], "y": [12.0, 5.0]})
    table.write(tmp_path / "bad.ecsv", format="ascii.ecsv", overwrite=True)
    code, records, _, err = run_cli(
        [
            "separate",
            bad,
            good,
            "--catalog",
            str(tmp_path / "{stem}.ecsv"),
            "--output-dir",
            tmp_path / "out",
            "--json",
            *SCENE_FLAGS,
        ],
        capsys,
        monkeypatch,
        prior=_gaussian_priorset(),
    )
    assert code == 1
    assert [r["status"] for r in records] == ["error", "ok"]
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and "bad.ecsv" in errors[0] and "source id 2" in errors[0], err
    assert (tmp_path / "out" / "good.galprism.fits").exists()
    assert not (tmp_path / "out" / "bad.galprism.fits").exists()
    assert (tmp_path / "bad.ecsv").read_text().count("\n") > 2  # the input catalogue is untouched


def test_scene_existing_output_is_refused_and_the_command_names_the_flags(
    tmp_path, capsys, monkeypatch
):
    """--scene refuses an existing output like a cutout run: exit 1, the file untouched, and
    one error text (stderr and JSON alike) ending in the --overwrite/--skip-existing hint.
    Fails if scene mode overwrites, names no remedy, or words it apart from cutout runs."""
    from fits_factory import run_cli

    path, _ = _scene_file(tmp_path, "scene", [(10.0, 12.0, "galaxy", 30.0)])
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "scene.galprism.fits"
    out.write_bytes(b"old")
    argv = ["separate", path, "--output-dir", tmp_path / "out", "--json", *SCENE_FLAGS]
    code, records, _, err = run_cli(argv, capsys, monkeypatch, prior=_gaussian_priorset())
    assert code == 1 and [r["status"] for r in records] == ["error"], err
    text = records[0]["error"]
    assert text.endswith(
        f"{out}: output exists and overwriting is not allowed; "
        "pass --overwrite to replace it or --skip-existing"
    ), text
    assert f"galprism: error: {text}" in err, err
    assert out.read_bytes() == b"old"


def test_scene_catalogue_without_kinds_gets_its_stars_classified(tmp_path, capsys, monkeypatch):
    """Without a kind column the catalogue's sources are classified: the point source must
    be modelled as a star (PSF times flux) and the extended ones as galaxies, else a star
    would be forced through the galaxy prior."""
    from astropy.table import Table
    from fits_factory import run_cli

    sources = [(8.3, 11.6, "galaxy", 30.0), (12.8, 12.2, "galaxy", 20.0), (30.4, 9.7, "star", 40.0)]
    path, _ = _scene_file(tmp_path, "scene", sources)
    Table({"x": [s[0] for s in sources], "y": [s[1] for s in sources]}).write(
        tmp_path / "plain.ecsv", format="ascii.ecsv"
    )
    code, records, _, err = run_cli(
        [
            "separate",
            path,
            "--catalog",
            tmp_path / "plain.ecsv",
            "--output-dir",
            tmp_path,
            *SCENE_FLAGS,
        ],
        capsys,
        monkeypatch,
        prior=_gaussian_priorset(),
    )
    assert code in (0, None), err
    cat = Table.read(tmp_path / "scene.galprism.catalog.ecsv")
    assert list(cat["kind"]) == ["galaxy", "galaxy", "star"]


def test_scene_samples_and_the_hdf5_output_hold_what_the_fits_output_holds(
    tmp_path, capsys, monkeypatch
):
    """SAMPLES holds each source's posterior draws in its stamp window: their mean and
    standard deviation are STAMPS. ``--format hdf5`` (same seed) writes the same images,
    headers and catalogue to ``<stem>.galprism.h5``, with the ECSV beside it; without
    --scene the flag is refused. Fails if a stamp window, a draw or a dataset differs."""
    import h5py
    from astropy.io import fits
    from astropy.table import Table
    from fits_factory import run_cli

    sources = [(8.3, 11.6, "galaxy", 30.0), (12.8, 12.2, "galaxy", 20.0), (30.4, 9.7, "star", 40.0)]
    path, _ = _scene_file(tmp_path, "scene", sources)
    outs = {}
    for fmt in ("fits", "hdf5"):
        code, records, _, err = run_cli(
            [
                "separate",
                path,
                "--catalog",
                tmp_path / "scene.ecsv",
                "--output-dir",
                tmp_path / fmt,
                "--json",
                "--format",
                fmt,
                *SCENE_FLAGS,
            ],
            capsys,
            monkeypatch,
            prior=_gaussian_priorset(),
        )
        assert code in (0, None) and records[0]["status"] == "ok", err
        outs[fmt] = records[0]["output"]
    assert outs["hdf5"].endswith("scene.galprism.h5")
    assert (tmp_path / "hdf5" / "scene.galprism.catalog.ecsv").exists()
    with fits.open(outs["fits"]) as hdul:
        samples = hdul["SAMPLES"].data.astype(np.float64)
        stamps = hdul["STAMPS"].data.astype(np.float64)
        assert samples.shape == (3, 16, 8, 8)
        np.testing.assert_allclose(samples.mean(1), stamps[:, 0], atol=1e-5)
        np.testing.assert_allclose(samples.std(1), stamps[:, 1], atol=1e-5)
        images = {h.name: (h.data, h.header) for h in hdul[1:] if isinstance(h, fits.ImageHDU)}
        catalog = Table.read(hdul["CATALOG"])
    with h5py.File(outs["hdf5"], "r") as f:
        assert f.attrs["format"] == "galprism-scene"
        assert set(images) <= set(f.keys())
        for name, (data, header) in images.items():
            np.testing.assert_array_equal(f[name][()], data, err_msg=name)
            back = fits.Header.fromstring(f[name].attrs["header"], sep="\n")
            assert back.get("CTYPE1") == header.get("CTYPE1") and back["EXTNAME"] == name
    table = Table.read(outs["hdf5"], path="CATALOG")
    assert list(table["flux"]) == list(catalog["flux"])
    assert table["x"].unit == catalog["x"].unit
    code, _, _, err = run_cli(
        ["separate", path, "--output-dir", tmp_path / "x", "--format", "hdf5"],
        capsys,
        monkeypatch,
        prior=_gaussian_priorset(),
    )
    assert code == 2 and "--format hdf5 writes the outputs of --scene" in " ".join(err)


def test_scene_with_a_normalised_prior_scales_each_galaxy_by_its_own_amplitude(
    tmp_path, capsys, monkeypatch
):
    """A prior whose galaxy is normalised (``amplitude`` in prior.json) and whose draws
    all have nearly one flux, ``F / a`` with ``a`` the galaxy's aperture flux on the image:
    the scene's galaxy flux is then ``a`` times it, the truth ``F``, only if the pipeline
    measures the amplitude at the galaxy, in the prior's units, folds it into the operator
    and multiplies the draws back. Left out (flux ``F / a``, 20 times too small) or
    measured elsewhere or in other units, the flux is off by far more than 10%."""
    from astropy.table import Table
    from fits_factory import run_cli

    from galprism.amplitude import Amplitude
    from galprism.priorset import PriorSet

    sources = [(20.5, 12.5, "galaxy", 30.0), (33.0, 10.0, "star", 40.0)]
    path, _ = _scene_file(tmp_path, "one", sources)
    image = fits.getdata(path, "SCI").astype(np.float64)
    spec = Amplitude(radius=3.0, floor=3.0)
    a = float(
        spec.measure(
            torch.from_numpy(image)[None, None],
            torch.full((1, 1, *image.shape), 0.05**2, dtype=torch.float64),
            centers=torch.tensor([[20.5, 12.5]]),
        )
    )
    yy, xx = np.mgrid[:8, :8]
    profile = np.exp(-((xx - 3.5) ** 2 + (yy - 3.5) ** 2) / (2 * 1.5**2))
    mean = torch.from_numpy(profile / profile.sum() * 30.0 / a).reshape(1, 8, 8)
    tight = GaussianPrior.from_covariance(mean, 1e-8 * torch.eye(64, dtype=torch.float64))
    frame = _gaussian_priorset().frame
    prior = PriorSet(
        "tight-normalised", "gaussian", ["galaxy"], [tight], frame, amplitude={"galaxy": spec}
    )
    code, records, _, err = run_cli(
        [
            "separate",
            path,
            "--catalog",
            tmp_path / "one.ecsv",
            "--output-dir",
            tmp_path / "out",
            "--json",
            *SCENE_FLAGS,
        ],
        capsys,
        monkeypatch,
        prior=prior,
    )
    assert code in (0, None) and records[0]["status"] == "ok", err
    cat = Table.read(tmp_path / "out" / "one.galprism.catalog.ecsv")
    assert list(cat["kind"]) == ["galaxy", "star"]
    assert 15.0 < a < 30.0  # the aperture holds most of the galaxy's light
    # The data may move the flux a little from the prior's through the galaxy's
    # fine-structure layer (galprism.scene.refine): its 8 x 8 profile is not exactly the
    # image's galaxy and a neighbour's wings reach into the box.
    assert abs(float(cat["flux"][0]) / 30.0 - 1.0) < 0.1, (float(cat["flux"][0]), a)

"""Several views of one sky in one posterior: matched views, the joint blend model, --with."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import scipy.signal
import torch
from fits_factory import gaussian_psf, make_cutout, make_wcs, run_cli

from galprism.diffusion.samplers import SamplerConfig
from galprism.errors import InputError, PSFError
from galprism.frame import Frame
from galprism.gaussian import GaussianPrior
from galprism.observation import Observation
from galprism.resample import Resample
from galprism.scene.joint import ViewBox, build_joint_model, sample_joint
from galprism.scene.views import match_view, matching_kernel, model_kernel
from galprism.testing import exactness_errors

FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _sky_gaussian(wcs, shape, ra0, dec0, sigma_arcsec, flux, scale, sub=1):
    """``flux`` times a circular Gaussian on the sky, integrated over the pixels of a grid
    (``sub x sub`` point samples per pixel)."""
    ny, nx = shape
    off = (np.arange(sub) + 0.5) / sub - 0.5
    out = np.zeros(shape)
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    for dy in off:
        for dx in off:
            ra, dec = wcs.all_pix2world(xx + dx, yy + dy, 0)
            u = (ra - ra0) * np.cos(np.radians(dec0)) * 3600.0
            v = (dec - dec0) * 3600.0
            out += np.exp(-(u**2 + v**2) / (2 * sigma_arcsec**2))
    out *= scale**2 / (2 * np.pi * sigma_arcsec**2) / sub**2
    return flux * out


def _psf_fwhm(fwhm_px: float, size: int) -> np.ndarray:
    return gaussian_psf(size, fwhm_px / FWHM)


def _primary(shape=(10, 10), image=None, sigma=0.05, rotate=0.0, zp=27.0, name="ground.fits"):
    wcs = make_wcs(*shape, scale=0.2, rotate=rotate)
    img = np.zeros(shape) if image is None else image
    return Observation(
        img,
        np.full(shape, sigma**2),
        _psf_fwhm(3.0, 11),
        wcs=wcs,
        pixel_scale=0.2,
        zeropoint=zp,
        name=name,
    )


@pytest.mark.parametrize("factor", [1, 2])
def test_matched_view_is_the_sky_at_the_model_resolution_on_the_model_frame(factor):
    """A galaxy seen by a sharp, finer, rotated view must come out on the model frame (the
    prior's 0.2" grid on the primary's sky, also when the primary's pixels are 2 x 2 of
    it) as that galaxy convolved with the 0.2" model kernel and integrated over the
    frame's pixels, to 2 % of its peak: a wrong matching kernel, a kernel flipped or
    off-centre, a resample in the wrong direction or a lost flux factor would miss by far
    more."""
    frame = Frame((1, 4, 4), pixel_scale=0.2, zeropoint=27.0)
    pshape = (10 // factor, 10 // factor)
    primary = Observation(
        np.zeros(pshape),
        np.full(pshape, 0.01),
        _psf_fwhm(3.0 / factor, 5),
        wcs=make_wcs(*pshape, scale=0.2 * factor, rotate=0.0),
        pixel_scale=0.2 * factor,
        zeropoint=27.0,
        name="ground.fits",
    )
    vshape = (110, 110)
    vwcs = make_wcs(*vshape, scale=0.04, rotate=0.5)
    ra0, dec0 = primary.wcs.all_pix2world([[4.3 / factor, 5.1 / factor]], 0)[0]
    sig_g, sig_psf = 0.15, 0.1 / FWHM
    data = _sky_gaussian(vwcs, vshape, ra0, dec0, math.hypot(sig_g, sig_psf), 100.0, 0.04)
    view = Observation(
        data,
        np.full(vshape, 1e-6),
        _psf_fwhm(0.1 / 0.04, 25),
        wcs=vwcs,
        pixel_scale=0.04,
        zeropoint=26.0,
        name="space.fits",
    )
    m = match_view(primary, view, frame)
    assert m.image.shape == (1, 10, 10)
    want = _sky_gaussian(
        m.wcs, (10, 10), ra0, dec0, math.hypot(sig_g, 0.2 / FWHM), 100.0, 0.2, sub=7
    )
    ok = m.valid[0]
    assert ok.sum() >= 16, "the view should cover the frame's centre"
    err = np.abs(m.image[0] - want)[ok].max() / want.max()
    assert err < 0.02, f"matched view misses the model-resolution sky by {err:.3%} of its peak"
    # Units: 1 mag brighter zero point on the primary, so the view's normalised factor
    # is 10**(0.4 (27 - 26)) / flux_scale.
    np.testing.assert_allclose(m.to_normalised, [10 ** (0.4 * 1.0)])


def test_noise_bound_exceeds_the_matched_noise_covariance():
    """The diagonal variance the likelihood uses must dominate the matched noise's true
    covariance C = (R K) D (R K)^T (diag(sigma^2) - C positive semi-definite) and
    ``exact_variance`` must be diag(C); the matched data must be R K y. Otherwise the
    view would count for more information than it holds, or its chi^2 reference be wrong."""
    frame = Frame((1, 4, 4), pixel_scale=0.2, zeropoint=27.0)
    primary = _primary(shape=(8, 8))
    vshape = (40, 40)
    vwcs = make_wcs(*vshape, scale=0.1, rotate=0.4)
    rng = np.random.default_rng(0)
    var = rng.uniform(0.5, 2.0, vshape)
    y = rng.normal(size=vshape)
    psf = _psf_fwhm(1.2, 9)
    view = Observation(y, var, psf, wcs=vwcs, pixel_scale=0.1, zeropoint=27.0, name="v.fits")
    m = match_view(primary, view, frame)
    fw = 0.2 / 0.1
    kernel, _ = matching_kernel(psf / psf.sum(), model_kernel(fw, 2 * math.ceil(4.5 * fw) + 1))
    n = vshape[0] * vshape[1]
    kmat = np.zeros((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        kmat[:, j] = scipy.signal.fftconvolve(e.reshape(vshape), kernel, mode="same").ravel()
    r = Resample(vwcs, vshape, primary.wcs, (8, 8)).matrix.toarray()
    mm = r @ kmat
    ok = m.valid[0].ravel()
    assert ok.sum() >= 4
    # A valid frame pixel draws only on view pixels whose whole kernel is inside the view.
    half = kernel.shape[0] // 2
    jy, jx = np.divmod(np.nonzero(r[ok].sum(0))[0], vshape[1])
    assert min(jy.min(), jx.min()) >= half and max(jy.max(), jx.max()) < vshape[0] - half
    np.testing.assert_allclose(m.image[0].ravel()[ok], (mm @ y.ravel())[ok], atol=1e-9)
    cov = (mm * var.ravel()[None]) @ mm.T
    sub = cov[np.ix_(ok, ok)]
    np.testing.assert_allclose(m.exact_variance[0].ravel()[ok], np.diag(sub), rtol=1e-9)
    gap = np.diag(m.variance[0].ravel()[ok]) - sub
    assert np.linalg.eigvalsh(gap).min() > -1e-9 * np.abs(sub).max()
    assert 0.0 < m.noise_chi2 < 1.0


def _smooth_prior(size: int) -> GaussianPrior:
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1).to(torch.float64)
    cov = 0.5 * torch.exp(-(torch.cdist(p, p) ** 2) / 2.0) + 1e-3 * torch.eye(size * size)
    r2 = ((p - (size - 1) / 2) ** 2).sum(1)
    mean = (torch.exp(-r2 / 2.0) + 0.05 * torch.rand(size * size, generator=gen)).reshape(
        1, size, size
    )
    return GaussianPrior.from_covariance(mean, cov)


def test_joint_posterior_is_the_exact_gaussian_posterior_of_the_stacked_model():
    """Galaxy, star and two backgrounds over a 0.2" primary and a 0.1" view rotated by
    0.5 rad: the sampled joint posterior must be the exact Gaussian posterior of the
    stacked linear model (dense algebra over both views' pixels). A view block out of
    step with the stacking, a star flux not shared by the views, a whitening that
    ignores one view's mask or a wrong adjoint of the stack would bias mean or spread."""
    stamp = (1, 4, 4)
    prior = _smooth_prior(4)
    frame = Frame(stamp, pixel_scale=0.2, zeropoint=27.0)
    shape = (8, 8)
    psf = _psf_fwhm(2.5, 7)
    primary = _primary(shape=shape, sigma=0.2)
    primary = Observation(
        np.zeros(shape),
        np.full(shape, 0.04),
        psf,
        wcs=primary.wcs,
        pixel_scale=0.2,
        zeropoint=27.0,
        name="ground.fits",
    )
    vshape = (44, 44)
    vwcs = make_wcs(*vshape, scale=0.1, rotate=0.5)
    gen = torch.Generator().manual_seed(1)
    view = Observation(
        np.zeros(vshape),
        np.full(vshape, 0.01),
        _psf_fwhm(1.2, 9),
        wcs=vwcs,
        pixel_scale=0.1,
        zeropoint=26.5,
        name="space.fits",
    )
    m0 = match_view(primary, view, frame)
    galaxies, stars, scales = np.array([[3.4, 3.8]]), np.array([[5.6, 2.2]]), np.array([1.5])

    def boxes(mv):
        return [
            ViewBox(
                mv.image, mv.variance, mv.valid, mv.to_normalised, mv.band_index, mv.kernel_fwhm
            )
        ]

    kw = dict(star_scale=np.array([3.0]), background_scale=2.0, dtype=torch.float64)
    blank = build_joint_model(primary, boxes(m0), frame, galaxies, scales, stars, **kw)
    d = int(np.prod(stamp))
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *stamp)
    block = torch.cat([op.apply(eye).reshape(d, -1) for op in blank.light[0]], dim=1).T
    cols = blank.linear.columns[0]
    valid = blank.valid.reshape(-1).to(torch.float64)
    a = torch.cat([block, cols], dim=1) * valid[:, None]
    factor = blank.linear.factors[0]
    k_lin = factor.shape[0]
    mu = torch.cat([prior.mean.reshape(-1), torch.zeros(k_lin, dtype=torch.float64)])
    s = torch.block_diag(prior.covariance(), factor @ factor.T)
    truth = mu + torch.linalg.cholesky(s) @ torch.randn(len(mu), generator=gen, dtype=torch.float64)
    noise = blank.noise_var.reshape(-1).to(torch.float64)
    y = a @ truth + noise.sqrt() * torch.randn(len(noise), generator=gen, dtype=torch.float64)
    y = y * valid
    # Write the draw back as each view's data, in its own units.
    parts = blank.split(y)
    norms = blank.to_normalised
    primary = Observation(
        (parts[0] / norms[0][0]).numpy(),
        np.full(shape, 0.04),
        psf,
        wcs=primary.wcs,
        pixel_scale=0.2,
        zeropoint=27.0,
        name="ground.fits",
    )
    vb = boxes(m0)[0]
    vb.image = np.where(vb.valid, (parts[1] / norms[1][0]).numpy(), 0.0)
    model = build_joint_model(primary, [vb], frame, galaxies, scales, stars, **kw)
    # The galaxy's wing term follows the data's light: the closed form is that of the
    # model built on the data, whose y is the data less the linear terms' prior mean light.
    cols = model.linear.columns[0]
    torch.testing.assert_close(model.y.reshape(-1), y - cols @ model.linear_mean)
    block = torch.cat([op.apply(eye).reshape(d, -1) for op in model.light[0]], dim=1).T
    a = torch.cat([block, cols], dim=1) * valid[:, None]
    factor = model.linear.factors[0]
    k_lin = factor.shape[0]
    mu = torch.cat([prior.mean.reshape(-1), model.linear_mean])
    s = torch.block_diag(prior.covariance(), factor @ factor.T)
    g = a @ s @ a.T + torch.diag(noise) + torch.diag(1.0 - valid)
    gain = torch.linalg.solve(g, a @ s).T
    mean = mu + gain @ (y - a @ mu)
    cov = s - gain @ a @ s
    # The samples hold s w x, w the galaxy's ownership of its stamp (all ones for a
    # galaxy alone): a rescaling of the closed form.
    window = model.support[0].expand(stamp).reshape(-1)
    scale = torch.cat([1.5 * window, torch.ones(k_lin, dtype=torch.float64)])
    mean, cov = mean * scale, cov * scale[:, None] * scale[None, :]
    n = 512
    out = sample_joint(
        model,
        prior,
        SamplerConfig(method="pc", steps=16, n_samples=n, cg_iterations=64),
        torch.Generator().manual_seed(2),
        torch.Generator().manual_seed(3),
    )
    samples = torch.cat([out[0].galaxies.reshape(n, -1), out[0].coefficients], dim=1)
    mean_err, std_err = exactness_errors(samples, mean, cov)
    assert mean_err < 0.25, f"joint posterior mean off by {mean_err:.3f} sigma"
    assert std_err < 0.25, f"joint posterior std off by {std_err:.3f} (relative)"
    # Both views' samples hold the same galaxies; each view's light is its own operator's.
    assert torch.equal(out[0].galaxies, out[1].galaxies)
    assert out[1].sources.shape[-3:] == m0.image.shape


def _scene_files(tmp_path, *, view_noise=0.02, view_zp=26.0, view_psf_fwhm=1.2, view_ra=150.1):
    """A ground image (0.2"/px) and a sharper view (0.1"/px, rotated) of one galaxy."""
    from astropy.table import Table

    shape = (16, 16)
    gwcs = make_wcs(*shape, scale=0.2, rotate=0.0)
    ra0, dec0 = gwcs.all_pix2world([[7.6, 8.3]], 0)[0]
    rng = np.random.default_rng(5)
    flux = 40.0
    ground = _sky_gaussian(gwcs, shape, ra0, dec0, math.hypot(0.25, 0.6 / FWHM), flux, 0.2, 3)
    ground += rng.normal(0, 0.3, shape)
    gpath = make_cutout(
        tmp_path / "ground.fits",
        shape=shape,
        image=ground,
        sigma=0.3,
        wcs=gwcs,
        psf=_psf_fwhm(3.0, 11),
        header={"MAGZERO": 27.0},
    )
    vshape = (60, 60)
    vwcs = make_wcs(*vshape, scale=0.1, rotate=0.5, ra=view_ra)
    vflux = flux * 10 ** (-0.4 * (27.0 - view_zp))
    sig = math.hypot(0.25, view_psf_fwhm * 0.1 / FWHM)
    space = _sky_gaussian(vwcs, vshape, ra0, dec0, sig, vflux, 0.1, 3)
    space += rng.normal(0, view_noise, vshape)
    header = {} if view_zp is None else {"MAGZERO": view_zp}
    vpath = make_cutout(
        tmp_path / "space.fits",
        shape=vshape,
        image=space,
        sigma=view_noise,
        wcs=vwcs,
        psf=_psf_fwhm(view_psf_fwhm, 15),
        header=header,
    )
    Table({"x": [7.6], "y": [8.3], "kind": ["galaxy"]}).write(
        tmp_path / "ground.ecsv", format="ascii.ecsv"
    )
    return gpath, vpath


def _priorset():
    from galprism.priorset import PriorSet

    size = 8
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1).to(torch.float64)
    cov = 2.0 * torch.exp(-(torch.cdist(p, p) ** 2) / 4.0) + 1e-3 * torch.eye(size * size)
    r2 = ((p - (size - 1) / 2) ** 2).sum(1)
    mean = 2.0 * torch.exp(-r2 / 4.0) + 0.01 * torch.rand(size * size, generator=gen)
    prior = GaussianPrior.from_covariance(mean.reshape(1, size, size), cov)
    frame = Frame((1, size, size), pixel_scale=0.2, zeropoint=27.0)
    return PriorSet("gauss", "gaussian", ["galaxy"], [prior], frame)


FLAGS = ["--scene", "--steps", "16", "-n", "96", "--cg-iterations", "16", "--device", "cpu"]


def test_with_a_second_view_shrinks_the_flux_posterior_and_writes_each_views_model(
    tmp_path, capsys, monkeypatch
):
    """``--with space.fits``: the galaxy's flux std must shrink (the view adds independent
    noise and sharper data) and the output must hold DATA_2, MODEL_2, RESID_2 with the model
    frame's WCS, cards naming both views and their chi^2; the joint model fits the view to
    its noise reference. A view ignored by the sampler or written without its model fails."""
    from astropy.io import fits
    from astropy.table import Table

    gpath, vpath = _scene_files(tmp_path)
    prior = _priorset()
    common = [gpath, "--catalog", tmp_path / "ground.ecsv", "--json", *FLAGS]
    code, _, _, err = run_cli(
        ["separate", *common, "--output-dir", tmp_path / "alone"],
        capsys,
        monkeypatch,
        prior=prior,
    )
    assert code in (0, None), err
    code, records, _, err = run_cli(
        ["separate", *common, "--with", vpath, "--output-dir", tmp_path / "joint"],
        capsys,
        monkeypatch,
        prior=prior,
    )
    assert code in (0, None), err
    assert records[0]["status"] == "ok"
    alone = Table.read(tmp_path / "alone" / "ground.galprism.catalog.ecsv")
    joint = Table.read(tmp_path / "joint" / "ground.galprism.catalog.ecsv")
    ratio = float(joint["flux_err"][0] / alone["flux_err"][0])
    assert ratio < 0.5, f"flux std ratio joint / alone {ratio:.2f}"
    assert abs(float(joint["flux"][0]) - 40.0) < 4 * float(joint["flux_err"][0]) + 2.0
    with fits.open(tmp_path / "joint" / "ground.galprism.fits") as hdul:
        hdr = hdul[0].header
        assert hdr["NVIEW"] == 2
        assert hdr["VIEW1"] == "ground.fits" and hdr["VIEW2"] == "space.fits"
        for name in ("DATA_2", "MODEL_2", "RESID_2"):
            assert hdul[name].header["CTYPE1"].startswith("RA")
            assert hdul[name].data.shape == (16, 16)
        resid = hdul["RESID_2"].data
        seen = np.isfinite(resid)
        assert seen.sum() > 20
        assert abs(hdr["CHI2_2"] - float(np.mean(resid[seen] ** 2))) < 1e-4
        # A model that fits the view leaves the noise: chi^2 near what pure noise gives.
        assert hdr["CHI2_2"] < 3.0 * hdr["CHI2N_2"], (hdr["CHI2_2"], hdr["CHI2N_2"])
        assert 0.0 < hdr["CHI2N_2"] <= 1.0
        data, model = hdul["DATA_2"].data, hdul["MODEL_2"].data
        assert np.nansum(data) > 0 and np.abs(model).sum() > 0


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("no_overlap", ["space.fits", "ground.fits", "no sky"]),
        ("no_zeropoint", ["space.fits", "units cannot be reconciled"]),
        ("broad_psf", ["space.fits", "not sharper"]),
    ],
)
def test_bad_views_fail_the_input_with_one_line_and_write_nothing(
    tmp_path, capsys, monkeypatch, case, words
):
    """A view of other sky, a view without a zero point, or a view blurrier than the
    prior's resolution: exit status 1, one error line naming the file(s) and the problem,
    no output written, inputs unchanged."""
    kw = {
        "no_overlap": {"view_ra": 151.0},
        "no_zeropoint": {"view_zp": None},
        "broad_psf": {"view_psf_fwhm": 6.0},
    }[case]
    if case == "no_zeropoint":
        gpath, vpath = _scene_files(tmp_path, view_zp=26.0)
        from astropy.io import fits

        with fits.open(vpath, mode="update") as hdul:
            del hdul["SCI"].header["MAGZERO"]
    else:
        gpath, vpath = _scene_files(tmp_path, **kw)
    before = (_digest(gpath), _digest(vpath))
    code, records, _, err = run_cli(
        [
            "separate",
            gpath,
            "--with",
            vpath,
            "--catalog",
            tmp_path / "ground.ecsv",
            "--output-dir",
            tmp_path / "out",
            "--json",
            *FLAGS,
        ],
        capsys,
        monkeypatch,
        prior=_priorset(),
    )
    assert code == 1
    errors = [line for line in err if line.startswith("galprism: error:")]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], errors[0]
    assert records[0]["status"] == "error"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert (_digest(gpath), _digest(vpath)) == before


def test_with_needs_scene_and_one_input(tmp_path, capsys, monkeypatch):
    """``--with`` without ``--scene``, or with several inputs, is a usage error (exit 2)
    naming the flag: the views would otherwise be silently ignored or misassigned."""
    gpath, vpath = _scene_files(tmp_path)
    code, _, _, err = run_cli(
        ["separate", gpath, "--with", vpath, "--output-dir", tmp_path / "o"],
        capsys,
        monkeypatch,
        prior=_priorset(),
    )
    assert code == 2 and any("--with" in line for line in err), err
    code, _, _, err = run_cli(
        ["separate", gpath, gpath, "--with", vpath, "--scene", "--output-dir", tmp_path / "o"],
        capsys,
        monkeypatch,
        prior=_priorset(),
    )
    assert code == 2 and any("--with" in line for line in err), err


def test_match_view_refuses_other_sky_and_unknown_units_in_the_library():
    """The library's own errors: InputError naming both files for no shared sky, and
    for a view without a zero point; PSFError for a view blurrier than the model kernel."""
    frame = Frame((1, 4, 4), pixel_scale=0.2, zeropoint=27.0)
    primary = _primary()
    far = make_wcs(40, 40, scale=0.1, ra=152.0)
    psf = _psf_fwhm(1.2, 9)
    args = dict(pixel_scale=0.1, name="far.fits")
    with pytest.raises(InputError, match="far.fits: shares no sky with ground.fits"):
        match_view(
            primary,
            Observation(np.zeros((40, 40)), 1.0, psf, wcs=far, zeropoint=27.0, **args),
            frame,
        )
    near = make_wcs(40, 40, scale=0.1)
    with pytest.raises(InputError, match="units cannot be reconciled"):
        match_view(primary, Observation(np.zeros((40, 40)), 1.0, psf, wcs=near, **args), frame)
    with pytest.raises(PSFError, match="not sharper"):
        match_view(
            primary,
            Observation(
                np.zeros((40, 40)), 1.0, _psf_fwhm(4.0, 15), wcs=near, zeropoint=27.0, **args
            ),
            frame,
        )

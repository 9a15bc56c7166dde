"""Free-form components (galprism.freeform): exact marginalisation, exact conditionals,
detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galprism.diffusion import SamplerConfig
from galprism.errors import ConfigError
from galprism.freeform import (
    Box,
    FreeformConfig,
    FreeformModel,
    build_freeform,
    find_boxes,
    find_residual_boxes,
)
from galprism.operators import Composition, Mask, SourceSum
from galprism.posterior import JointPosterior
from galprism.testing import gaussian_problem


def _model(prob, k: int = 5, seed: int = 0) -> FreeformModel:
    """Random free-form columns and prior factor on the problem's observation grid."""
    gen = torch.Generator().manual_seed(seed)
    n = prob.y[0].numel()
    columns = torch.randn(1, n, k, generator=gen, dtype=torch.float64)
    factors = torch.randn(1, k, k, generator=gen, dtype=torch.float64) * 3.0
    valid = torch.ones_like(prob.y, dtype=torch.bool)
    valid.view(-1)[::5] = False  # some masked pixels: the columns must not see them
    return FreeformModel(
        [[Box(0, 0, "bright", 1.0, 1.0)]],
        columns,
        factors,
        prob.noise_var.sqrt(),
        valid,
        1,
        (1, 8, 8),
    ), valid


def _dense_marginal_cov(prob, model, valid):
    m = valid.reshape(-1).to(torch.float64)
    b = model.columns[0] * m[:, None]
    lam = model.factors[0] @ model.factors[0].T
    return torch.diag(prob.noise_var.reshape(-1)) + b @ lam @ b.T, b, lam


def test_whitened_likelihood_gives_the_exact_marginal_posterior_denoiser():
    """The sampler run on the whitened data must see y | x ~ N(A x, Sigma + B Lambda B^T) exactly.

    Checked through the MMPS denoiser, which is exact for Gaussian priors: a wrong gain,
    a missing mask or a wrong whitening would change E[x | x_t, y].
    """
    prob = gaussian_problem(size=8, seed=2)
    model, valid = _model(prob)
    # as in a cutout, masked pixels are masked in the operator too
    operator = SourceSum([Composition([Mask(valid[0]), op]) for op in prob.operator.ops])
    y_w, nv_w = model.whiten(prob.y * valid)
    op_w = SourceSum([Composition([*model.whitening(), op]) for op in operator.ops])
    assert torch.equal(nv_w, torch.ones_like(nv_w))
    post = JointPosterior(prob.priors, op_w, y_w, nv_w, cg_iterations=y_w[0].numel() + 8)
    t = torch.tensor(0.5, dtype=torch.float64)
    sig = post.sigma(t)
    x_t = (
        torch.randn(1, 2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        * 2
    )
    got = post(x_t, t).reshape(-1)

    d = 64
    cov_y, _, _ = _dense_marginal_cov(prob, model, valid)
    mu = torch.cat([p.mean.reshape(-1) for p in prob.priors])
    s = torch.block_diag(*[p.covariance() for p in prob.priors])
    m_y = (
        operator.apply(torch.eye(2 * d, dtype=torch.float64).reshape(2 * d, 2, 1, 8, 8))
        .reshape(2 * d, -1)
        .T
    )
    m = torch.cat([torch.eye(2 * d, dtype=torch.float64), m_y])
    noise = torch.block_diag(
        torch.diag(
            torch.cat([sig[0] ** 2 * torch.ones(d), sig[1] ** 2 * torch.ones(d)]).to(torch.float64)
        ),
        cov_y,
    )
    obs = torch.cat([x_t.reshape(-1), (prob.y * valid).reshape(-1)])
    g = m @ s @ m.T + noise
    want = mu + s @ m.T @ torch.linalg.solve(g, obs - m @ mu)
    assert torch.allclose(got, want, atol=1e-6), f"max error {float((got - want).abs().max()):.2e}"


@pytest.mark.parametrize("k", [4, 24])
def test_box_pixels_are_drawn_from_their_exact_conditional(k):
    """c | x, y must have mean Lambda B^T C^-1 r and covariance Lambda - Lambda B^T C^-1 B Lambda.

    With k = 24 box pixels for 16 data pixels, 8 directions are unseen and must keep
    their prior spread.
    """
    prob = gaussian_problem(size=8, seed=4)
    model, valid = _model(prob, k=k, seed=1)
    gen = torch.Generator().manual_seed(5)
    residual = (torch.randn(1, *prob.y.shape[1:], generator=gen, dtype=torch.float64) * 2.0) * valid
    n = 40_000
    c = model.sample(
        residual[:, None].expand(1, n, *prob.y.shape[1:]), [torch.Generator().manual_seed(6)]
    )[0]
    cov_y, b, lam = _dense_marginal_cov(prob, model, valid)
    gain = lam @ b.T @ torch.linalg.inv(cov_y)
    mean = gain @ residual.reshape(-1)
    cov = lam - gain @ b @ lam
    std = cov.diagonal().sqrt()
    z = (c.mean(0) - mean) / std * n**0.5
    assert float(z.abs().max()) < 5, f"conditional mean off: z-scores {z.tolist()}"
    ratio = c.std(0) / std
    assert float((ratio - 1).abs().max()) < 0.03, (
        f"conditional spread off: std ratios {ratio.tolist()}"
    )
    # the light of the boxes is the columns applied to the pixels
    light = model.model(c[:3][None])
    assert torch.allclose(light.reshape(3, -1), (model.columns[0] @ c[:3].T).T)


def _scene(
    peak: float, at: tuple[int, int], size: int = 24, sigma: float = 0.01
) -> tuple[np.ndarray, ...]:
    yy, xx = np.mgrid[:size, :size]
    img = peak * np.exp(-((yy - at[0]) ** 2 + (xx - at[1]) ** 2) / (2 * 1.5**2))
    return img[None], np.full((1, size, size), sigma**2), np.ones((1, size, size), bool)


def test_boxes_go_to_peaks_too_bright_for_the_prior_and_to_edge_peaks_only():
    """Bright peaks (in flux_scale units) and edge peaks get boxes; ordinary sources do not."""
    cfg = FreeformConfig(bright=5.0, edge=30.0, half_width=2)
    y, nv, valid = _scene(12.0, (10, 12))
    [box] = find_boxes(y, nv, valid, cfg, flux_scale=2.0)
    assert (box.row, box.col, box.kind) == (10, 12, "bright") and box.peak == pytest.approx(6.0)
    assert find_boxes(y, nv, valid, cfg, flux_scale=4.0) == []  # 3 prior units: the prior's own
    # a source centered beyond the bottom edge peaks on the last row: box centered one row out
    y, nv, valid = _scene(3.0, (25, 8))
    [box] = find_boxes(y, nv, valid, cfg, flux_scale=1.0)
    assert (box.row, box.col, box.kind) == (24, 8, "edge")
    assert find_boxes(y, nv, valid, FreeformConfig(bright=5.0, edge=None), flux_scale=1.0) == []
    # masked pixels are never peaks
    y, nv, valid = _scene(12.0, (10, 12))
    valid[:, 8:13, 10:15] = False
    assert all(
        b.kind != "bright" or b.peak < 6.0 for b in find_boxes(y, nv, valid, cfg, flux_scale=2.0)
    )


def test_build_freeform_puts_a_box_on_a_star_and_its_light_through_the_psf():
    """A box's columns are the PSF at each box pixel, including pixels beyond the grid."""
    psf = np.zeros((5, 5))
    psf[2, 2], psf[2, 3] = 0.75, 0.25
    y, nv, valid = _scene(100.0, (0, 12), size=16)
    t = lambda a: torch.from_numpy(a)[None]  # noqa: E731
    model = build_freeform(
        t(y),
        t(nv),
        t(valid),
        [psf],
        (1, 16, 16),
        1,
        1.0,
        FreeformConfig(bright=5.0, edge=None, half_width=1),
    )
    assert model is not None and [(b.row, b.col) for b in model.boxes[0]] == [(0, 12)]
    cols = model.columns[0].reshape(16, 16, 9)
    # pixel (dr, dc) = (0, 0) of the box is column 4: the PSF centered at (0, 12)
    assert cols[0, 12, 4] == pytest.approx(0.75) and cols[0, 13, 4] == pytest.approx(0.25)
    # pixel (-1, 0) lies above the grid: its light never reaches it (PSF one row tall)
    assert float(cols[..., 1].abs().max()) < 1e-12
    assert (
        build_freeform(
            t(y),
            t(nv),
            t(valid),
            [psf],
            (1, 16, 16),
            1,
            1.0,
            FreeformConfig(bright=None, edge=None),
        )
        is None
    )


def test_residual_boxes_go_to_point_sources_the_model_missed_and_not_to_noise():
    """The matched filter finds a faint point source left in a residual, at its place, with
    its flux and signal-to-noise; pure noise, masked pixels and existing boxes give none."""
    size, sigma = 32, 0.5
    yy, xx = np.mgrid[-3:4, -3:4]
    psf = np.exp(-(yy**2 + xx**2) / (2 * 1.2**2))
    psf /= psf.sum()
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, sigma, (1, size, size))
    nv, valid = np.full((1, size, size), sigma**2), np.ones((1, size, size), bool)
    cfg = FreeformConfig(residual=5.0, half_width=2)
    assert find_residual_boxes(noise, nv, valid, psf[None], [], cfg, flux_scale=1.0) == []
    flux = 8.0 * sigma / np.sqrt((psf**2).sum())  # S/N 8
    resid = noise.copy()
    resid[0, 10 - 3 : 10 + 4, 20 - 3 : 20 + 4] += flux * psf
    [box] = find_residual_boxes(resid, nv, valid, psf[None], [], cfg, flux_scale=2.0)
    assert (box.row, box.col, box.kind) == (10, 20, "residual")
    assert box.snr == pytest.approx(8.0, abs=1.5)
    assert box.peak == pytest.approx(
        flux * psf.max() / 2.0, rel=0.25
    )  # the missed source's peak, flux_scale units
    # inside an existing box: already modelled
    assert (
        find_residual_boxes(
            resid, nv, valid, psf[None], [Box(11, 19, "bright", 9.0, 90.0)], cfg, 2.0
        )
        == []
    )
    # masked pixels carry no signal
    masked = valid.copy()
    masked[0, 6:15, 16:25] = False
    assert find_residual_boxes(resid, nv, masked, psf[None], [], cfg, 2.0) == []
    assert (
        find_residual_boxes(resid, nv, valid, psf[None], [], FreeformConfig(residual=None), 2.0)
        == []
    )


@pytest.mark.parametrize(
    "kw",
    [
        dict(bright=-1.0),
        dict(edge=float("nan")),
        dict(residual=0.0),
        dict(half_width=40),
        dict(correlation=-0.5),
    ],
)
def test_bad_freeform_settings_are_refused(kw):
    with pytest.raises(ConfigError, match="freeform"):
        FreeformConfig(**kw)


def test_real_hsc_blend_star_gets_a_box_and_the_fit_reaches_the_noise(tmp_path):
    """On the real HSC blend of sample_fits/ (a star 586 sigma high, a bright compact galaxy),
    the built-in prior alone leaves a reduced chi^2 near 300 (priors/README.md); the two
    free-form components must take both and bring the fit near the noise."""
    from pathlib import Path

    from astropy.io import fits

    from galprism.priorset import load_priorset
    from galprism.separate import SeparateConfig, run_separate

    cutout = Path(__file__).resolve().parents[1] / "sample_fits" / "hsc_cosmos35_i.fits"
    prior = load_priorset("default")
    chi2 = {}
    for tag, ff in (("on", FreeformConfig()), ("off", FreeformConfig(bright=None, edge=None))):
        out = tmp_path / f"{tag}.fits"
        summary = run_separate(
            [str(cutout)],
            prior,
            # 48x58 pixels: the centered 48x48 cutout of the prior's footprint is asked for
            SeparateConfig(
                output=out,
                sampler=SamplerConfig(n_samples=2, steps=16),
                freeform=ff,
                center=(24.0, 29.0),
            ),
        )
        assert summary.exit_code == 0
        with fits.open(out) as h:
            resid = h["RESID"].data
            chi2[tag] = float(np.nanmean(resid**2))
            if tag == "on":
                kinds = [
                    h["FREEFORM"].header[f"FFBOX{i}"].split()[0]
                    for i in range(h[0].header["FFBOXES"])
                ]
                assert kinds == ["bright", "bright"], kinds
                assert "FREEFORM_MEAN" in h and h["FREEFORM"].data.shape[0] == 2
    assert chi2["off"] > 100, (
        f"without free-form components chi^2 {chi2['off']:.1f} (about 300 expected)"
    )
    assert chi2["on"] < 3, f"with free-form components chi^2 {chi2['on']:.2f}"


def test_residual_boxes_take_the_cores_the_prior_draws_too_faint(tmp_path):
    """On the real multiview HSC cutout the built-in prior draws three compact cores too
    faint (priors/README.md); `--freeform-residual 5` must find them in the first draw's
    residual, draw again with boxes there and leave a lower posterior-predictive chi^2,
    with the header recording the setting and each box's kind."""
    from pathlib import Path

    from astropy.io import fits

    from galprism.io.read import ReadOptions
    from galprism.priorset import load_priorset
    from galprism.separate import SeparateConfig, run_separate

    cutout = Path(__file__).resolve().parents[1] / "sample_fits" / "multiview_hsc_i.fits"
    prior = load_priorset("default")
    read = ReadOptions(
        zeropoint=29.405
    )  # the noise-matched zero point (docs/user-guide.md, "Flux scale")
    chi2, kinds = {}, {}
    for tag, ff in (("off", FreeformConfig()), ("on", FreeformConfig(residual=5.0))):
        out = tmp_path / f"{tag}.fits"
        summary = run_separate(
            [str(cutout)],
            prior,
            # 50x50 pixels: the centered 48x48 cutout of the prior's footprint is asked for
            SeparateConfig(
                output=out,
                sampler=SamplerConfig(n_samples=2, steps=16),
                freeform=ff,
                read=read,
                center=(25.0, 25.0),
            ),
        )
        assert summary.exit_code == 0
        with fits.open(out) as h:
            chi2[tag] = h[0].header["CHI2"]
            assert h[0].header["FFRESID"] == ("none" if tag == "off" else 5.0)
            kinds[tag] = [
                h["FREEFORM"].header[f"FFBOX{i}"].split()[0] for i in range(h[0].header["FFBOXES"])
            ]
    assert "residual" not in kinds["off"] and kinds["on"].count("residual") >= 2, kinds
    assert chi2["on"] < chi2["off"] - 0.3, (
        f"residual boxes left chi^2 {chi2['on']:.2f} (without: {chi2['off']:.2f})"
    )

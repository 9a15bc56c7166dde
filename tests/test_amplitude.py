"""Normalised sources (:mod:`galprism.amplitude`): the amplitude measured on the data, its
place in the observation operator, and the posterior it gives.

A normalised source's prior draws ``x``; the observation sees ``a x``, ``a`` measured on
its own data. With a Gaussian prior the posterior of ``g = a x`` is exact when CG
converges: N(a mu, a^2 S) observed through the operator. A amplitude measured differently
from the aperture sum, one left out of the operator or of the returned samples, or one
applied twice shows up as a biased mean or a wrong spread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fits_factory import gaussian_psf, make_cutout

from galprism.amplitude import Amplitude, check_amplitude
from galprism.diffusion.samplers import SamplerConfig
from galprism.errors import CheckpointError, ConfigError
from galprism.fitting import ViewData, ViewSpec, to_view
from galprism.frame import Frame
from galprism.gaussian import GaussianPrior
from galprism.io.read import read_cutout
from galprism.observation import Observation
from galprism.operators import Scale
from galprism.priorset import PriorSet, load_priorset
from galprism.separate import SeparateConfig
from galprism.separate.inference import fit_to_prior, separate_observations
from galprism.support import source_operator

N = 8  # prior grid (1, 8, 8) at 0.1"/px; cutouts 4x4 at 0.2"/px
SIGMA = 0.05


def _blob(h: int, w: int, flux: float, cx: float, cy: float, width: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
    return flux * g / g.sum()


def test_amplitude_is_the_aperture_sum_and_scales_with_the_data():
    """A noiseless blob: the amplitude is the data summed within the radius; the data and
    noise in other units give the amplitude in those units (no zero-point dependence)."""
    img = _blob(16, 16, 100.0, 7.5, 7.5)
    y = torch.from_numpy(img)[None, None]
    var = torch.full_like(y, SIGMA**2)
    spec = Amplitude(radius=4.0, floor=3.0)
    yy, xx = np.mgrid[:16, :16]
    inside = np.hypot(xx - 7.5, yy - 7.5) <= 4.0
    a = spec.measure(y, var)
    np.testing.assert_allclose(float(a), img[inside].sum(), rtol=1e-12)
    np.testing.assert_allclose(float(spec.measure(7 * y, 49 * var)), 7 * float(a), rtol=1e-12)
    # On a grid twice as coarse the radius is half as many pixels.
    a2 = spec.measure(y, var, grid_factor=2)
    np.testing.assert_allclose(float(a2), img[np.hypot(xx - 7.5, yy - 7.5) <= 2.0].sum())


def test_amplitude_floor_masked_pixels_and_owned_pixels():
    """No light: the amplitude is the floor (3 sigma of the aperture sum). A masked pixel of
    the aperture is made up by the valid fraction. Pixels owned by another source are left
    out."""
    spec = Amplitude(radius=3.0, floor=3.0)
    y = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    var = torch.full_like(y, SIGMA**2)
    yy, xx = np.mgrid[:12, :12]
    n_ap = int((np.hypot(xx - 5.5, yy - 5.5) <= 3.0).sum())
    np.testing.assert_allclose(float(spec.measure(y, var)), 3 * SIGMA * np.sqrt(n_ap))
    flat = torch.full_like(y, 2.0)
    valid = torch.ones_like(y, dtype=torch.bool)
    valid[0, 0, 5, 5] = False
    np.testing.assert_allclose(float(spec.measure(flat, var, valid)), 2.0 * n_ap, rtol=1e-12)
    owned = torch.from_numpy(xx < 6)[None]
    n_own = int(((np.hypot(xx - 5.5, yy - 5.5) <= 3.0) & (xx < 6)).sum())
    np.testing.assert_allclose(float(spec.measure(flat, var, owned=owned)), 2.0 * n_own)
    centers = torch.tensor([[2.0, 3.0]])
    n_c = int((np.hypot(xx - 2.0, yy - 3.0) <= 3.0).sum())
    np.testing.assert_allclose(float(spec.measure(flat, var, centers=centers)), 2.0 * n_c)


def test_bad_amplitude_settings_are_refused_naming_where():
    with pytest.raises(ConfigError, match="fit 'x'.*radius"):
        check_amplitude({"galaxy": {"radius": -1}}, ["galaxy"], "fit 'x'")
    with pytest.raises(ConfigError, match="unknown setting 'size'"):
        check_amplitude({"galaxy": {"radius": 2, "size": 3}}, ["galaxy"], "fit 'x'")
    with pytest.raises(ConfigError, match="names source 'star'"):
        check_amplitude({"star": {"radius": 2}}, ["galaxy"], "fit 'x'")


def test_operator_term_of_a_normalised_source_is_the_scaled_term_and_adjoint():
    """``source_operator`` ends a normalised source's term in its amplitude: applying it is
    the plain term times ``a``, per observation, and its adjoint is its transpose."""
    obs = Observation(
        image=np.zeros((1, 4, 4)), variance=1.0, psf=gaussian_psf(3, 0.6), pixel_scale=0.2
    )
    pieces = obs.operator_for(Frame((1, N, N), pixel_scale=0.1), ["galaxy"]).ops[0].ops
    a = torch.tensor([0.5, 3.0], dtype=torch.float64)
    op = source_operator(["galaxy", "sky"], pieces, {}, {"galaxy": a})
    plain = source_operator(["galaxy", "sky"], pieces, {})
    x = torch.randn(2, 2, 1, N, N, dtype=torch.float64)
    expect = plain.apply(
        x * torch.stack([a, torch.ones(2, dtype=torch.float64)], 1)[..., None, None, None]
    )
    torch.testing.assert_close(op.apply(x), expect)
    y = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    lhs = (op.apply(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_fit_view_folds_each_cutouts_amplitude_into_its_normalised_source():
    """``to_view`` measures each cutout's amplitude on its normalised data and scales the
    normalised source's term by it, the other sources' terms unchanged."""
    rng = np.random.default_rng(0)
    y = np.stack([_blob(8, 8, f, 3.5, 3.5) for f in (1.0, 50.0)])[:, None]
    y = y + rng.normal(0, SIGMA, y.shape)
    data = ViewData(
        ViewSpec("gal", ["galaxy", "sky"], files=[]),
        torch.from_numpy(y).float(),
        torch.full((2, 1, 8, 8), SIGMA**2),
        torch.ones(2, 1, 8, 8, dtype=torch.bool),
        torch.from_numpy(gaussian_psf(3, 0.6))[None, None].expand(2, 1, 3, 3).float(),
        0.1,
        27.0,
        None,
    )
    spec = Amplitude(radius=3.0)
    view = to_view(data, 2.0, {"galaxy": spec})
    expected = spec.measure(view.y, view.noise_var, view.valid)
    torch.testing.assert_close(view.amplitudes["galaxy"], expected)
    assert float(expected[1]) > 20 * float(expected[0]) / 3  # the bright cutout's is larger
    scale = view.operator.ops[0].ops[-1]
    assert isinstance(scale, Scale)
    torch.testing.assert_close(scale.amplitude, expected)
    assert not any(isinstance(op, Scale) for op in view.operator.ops[1].ops)


def _gaussian_prior(seed: int = 0) -> GaussianPrior:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).to(torch.float64)
    cov = torch.exp(-((pos[:, None] - pos[None]) ** 2).sum(-1) / 8.0) * 0.04
    cov = cov + 1e-3 * torch.eye(N * N, dtype=torch.float64)
    mean = 0.02 + 0.01 * torch.randn((1, N, N), generator=g, dtype=torch.float64)
    return GaussianPrior.from_covariance(mean, cov)


@pytest.fixture(scope="module")
def normalised_prior() -> PriorSet:
    frame = Frame((1, N, N), pixel_scale=0.1, zeropoint=27.0)
    return PriorSet(
        "tiny-normalised",
        "gaussian",
        ["galaxy"],
        [_gaussian_prior()],
        frame,
        amplitude={"galaxy": {"radius": 4.0, "floor": 3.0}},
    )


CONFIG = SeparateConfig(sampler=SamplerConfig(n_samples=64, steps=32, cg_iterations=16))


@pytest.mark.parametrize("flux", [2.0, 20.0])
def test_posterior_of_a_normalised_gaussian_source_is_the_closed_form(
    tmp_path, normalised_prior, flux
):
    """A faint and a 10x brighter source: the returned samples (in the cutout's units)
    follow N(a mu, a^2 S) conditioned on the data, ``a`` the aperture sum computed here."""
    rng = np.random.default_rng(int(flux))
    image = _blob(4, 4, flux, 1.5, 1.5, 0.8) + rng.normal(0, SIGMA, (4, 4))
    cut = make_cutout(
        tmp_path / "c.fits",
        shape=(4, 4),
        image=image,
        scale=0.2,
        psf=gaussian_psf(3, 0.6),
        noise_values=np.full((4, 4), SIGMA**2),
        header={"MAGZERO": 27.0},
    )
    cropped, factor = fit_to_prior(read_cutout(cut), normalised_prior, CONFIG)
    assert factor == 2
    res = separate_observations([cropped], normalised_prior, CONFIG, [5])[0]
    yy, xx = np.mgrid[:4, :4]
    a = image[np.hypot(xx - 1.5, yy - 1.5) <= 2.0].sum()
    a = max(a, 3.0 * SIGMA * np.sqrt((np.hypot(xx - 1.5, yy - 1.5) <= 2.0).sum()))
    # Closed form for g = a x observed through PSF + 2x2 sums.
    one = Observation(
        image=np.zeros((1, 4, 4)), variance=1.0, psf=gaussian_psf(3, 0.6), pixel_scale=0.2
    )
    op = one.operator_for(Frame((1, N, N), pixel_scale=0.1), ["galaxy"]).ops[0]
    d = N * N
    m = op.apply(torch.eye(d, dtype=torch.float64).reshape(d, 1, N, N)).reshape(d, -1).T
    g = normalised_prior.priors[0]
    mu = a * g.mean.reshape(-1).to(torch.float64)
    s = a**2 * g.covariance().to(torch.float64)
    y = torch.from_numpy(image.reshape(-1))
    gram = m @ s @ m.T + SIGMA**2 * torch.eye(16, dtype=torch.float64)
    gain = torch.linalg.solve(gram, m @ s).T
    mean = mu + gain @ (y - m @ mu)
    std = (s - gain @ m @ s).diagonal().clamp_min(0).sqrt()
    x = torch.from_numpy(res.samples[:, 0].astype(np.float64)).reshape(64, -1)
    z = (x.mean(0) - mean) / std * np.sqrt(64)
    assert float(z.pow(2).mean().sqrt()) < 1.5, "posterior mean biased"
    ratio = float((x.std(0) / std).mean())
    assert 0.85 < ratio < 1.15, f"posterior spread off by {ratio:.3f}"


def test_amplitude_is_recorded_in_prior_json_and_read_back(tmp_path, normalised_prior):
    folder = normalised_prior.save(tmp_path / "p")
    manifest = json.loads((folder / "prior.json").read_text())
    assert manifest["amplitude"] == {"galaxy": {"radius": 4.0, "floor": 3.0}}
    loaded = load_priorset(folder)
    assert loaded.amplitude == {"galaxy": Amplitude(4.0, 3.0)}
    manifest["amplitude"] = {"galaxy": {"radius": 0}}
    (folder / "prior.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="prior.json.*radius"):
        load_priorset(folder)

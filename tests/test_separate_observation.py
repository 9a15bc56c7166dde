"""The Observation object: consistency checks, crops, operators onto the prior grid, batching."""

from __future__ import annotations

import galsim
import numpy as np
import pytest
import torch
from fits_factory import gaussian_psf, make_wcs

from galprism.errors import InputError, PSFError, ShapeError
from galprism.frame import Frame
from galprism.observation import Observation, stack_observations
from galprism.operators import Convolve, Downsample, Mask


def _obs(shape=(1, 12, 12), psf=None, **kw) -> Observation:
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape)
    return Observation(
        image=image,
        variance=np.full(shape, 0.25),
        psf=gaussian_psf(5, 1.0) if psf is None else psf,
        **kw,
    )


def test_consistency_checks():
    """Bad combinations are refused with the observation's name in the message."""
    with pytest.raises(InputError, match="obs1.*zero or negative"):
        Observation(
            image=np.ones((4, 4)), variance=np.zeros((4, 4)), psf=gaussian_psf(3), name="obs1"
        )
    with pytest.raises(InputError, match="obs2.*all pixels are masked"):
        Observation(
            image=np.ones((4, 4)),
            variance=1.0,
            psf=gaussian_psf(3),
            valid=np.zeros((4, 4), bool),
            name="obs2",
        )
    with pytest.raises(PSFError, match="obs3.*2 band.*3"):
        Observation(
            image=np.ones((3, 8, 8)), variance=1.0, psf=gaussian_psf(3, n_bands=2), name="obs3"
        )
    with pytest.raises(ShapeError, match="obs4.*variance"):
        Observation(
            image=np.ones((4, 4)), variance=np.ones((5, 5)), psf=gaussian_psf(3), name="obs4"
        )
    # Masked pixels may hold anything: they become 0 data and unit variance.
    o = Observation(
        image=np.ones((4, 4)),
        variance=np.where(np.eye(4) > 0, -1.0, 1.0),
        psf=gaussian_psf(3),
        valid=np.eye(4) == 0,
    )
    assert np.all(o.variance > 0) and np.all(o.image[0][np.eye(4) > 0] == 0)


def test_inputs_are_not_modified():
    """The caller's arrays are copied, never written to."""
    image = np.ones((6, 6))
    image[0, 0] = np.nan
    before = image.copy()
    Observation(image=image, variance=1.0, psf=gaussian_psf(3))
    np.testing.assert_array_equal(image, before)


def test_default_crop_is_identity_and_crop_keeps_pixels_and_sky():
    """Cropping around a center keeps each pixel's value and sky position (to 1e-9 deg)."""
    wcs = make_wcs(20, 30)
    o = _obs((1, 20, 30), wcs=wcs, pixel_scale=0.2)
    assert o.crop(None, (20, 30)) is o, "a same-size crop around the default center must be a no-op"
    c = o.crop((10.2, 6.7), (8, 8))
    x0, y0 = 10 - 4, 7 - 4
    assert c.origin == (x0, y0)
    np.testing.assert_array_equal(c.image, o.image[:, y0 : y0 + 8, x0 : x0 + 8])
    a = np.array(wcs.all_pix2world([x0 + 3.0], [y0 + 5.0], 0))
    b = np.array(c.wcs.all_pix2world([3.0], [5.0], 0))
    assert np.abs(a - b).max() < 1e-9


def test_padding_is_masked():
    """Padding beyond the image is masked, with zero data and unit variance."""
    o = _obs((1, 10, 10), wcs=make_wcs(10, 10))
    c = o.crop((1.0, 1.0), (8, 8))  # x0 = y0 = -3
    assert c.origin == (-3, -3)
    assert not c.valid[:, :3].any() and not c.valid[:, :, :3].any(), "padding not masked"
    assert c.valid[:, 3:, 3:].all()
    assert np.all(c.image[:, :3] == 0) and np.all(c.variance[:, :3] == 1)
    np.testing.assert_array_equal(c.image[0, 3:, 3:], o.image[0, :5, :5])
    with pytest.raises(InputError, match="outside"):
        o.crop((40.0, 2.0), (8, 8))


def test_grid_factor_integer_or_error_naming_both_scales():
    """Integer ratios downsample; anything else is an error that names both pixel scales."""
    assert _obs(pixel_scale=0.12).grid_factor(0.03) == 4
    assert _obs(pixel_scale=0.2).grid_factor(0.2) == 1
    assert _obs(pixel_scale=None).grid_factor(0.03) == 1
    with pytest.raises(InputError, match="0.168.*0.03"):
        _obs(pixel_scale=0.168, name="hsc.fits").grid_factor(0.03)
    with pytest.raises(InputError, match="0.03.*0.12"):
        _obs(pixel_scale=0.03).grid_factor(0.12)


def test_operator_is_mask_downsample_convolve():
    """The observation's operator equals Mask o Downsample(f) o Convolve(PSF on the fine grid)."""
    mask = np.ones((1, 6, 6), bool)
    mask[0, 2, 3] = False
    o = _obs((1, 6, 6), valid=mask, pixel_scale=0.2)
    op = o.operator_for(Frame((1, 12, 12), pixel_scale=0.1), ["galaxy"])
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    psf = torch.from_numpy(o.prior_grid_psf(2))
    manual = Mask(torch.from_numpy(mask)).apply(
        Downsample(2, (1, 12, 12)).apply(Convolve(psf, (1, 12, 12)).apply(x))
    )
    torch.testing.assert_close(op.apply(x[:, None]), manual)
    assert torch.all(op.apply(x[:, None])[:, 0, 2, 3] == 0), "masked pixel not removed"
    y = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    lhs = (op.apply(x[:, None]) * y).sum()
    rhs = (x[:, None] * op.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) < 1e-9 * float(abs(lhs)), (
        "adjoint of the observation operator is wrong"
    )
    with pytest.raises(ShapeError, match="crop it first"):
        o.operator_for(Frame((1, 16, 16), pixel_scale=0.1), ["galaxy"])


@pytest.mark.parametrize("factor", [2, 4])
def test_refined_psf_reproduces_a_coarse_rendering(factor):
    """Downsample o Convolve(refined PSF) on a fine galaxy matches GalSim's coarse rendering within
    2 % of the peak.

    A kernel that ignored the coarse pixel already contained in the survey PSF would
    double-count it and fail this for factor 4 (~3-5 % error).
    """
    fine = 0.03
    coarse = fine * factor
    optics = galsim.Moffat(beta=3, fwhm=2.5 * coarse)
    psf_coarse = optics.drawImage(nx=21, ny=21, scale=coarse).array
    gal = galsim.Sersic(n=1.5, half_light_radius=0.15).shear(e1=0.3, e2=0.1)
    n_coarse = 24
    x_fine = gal.drawImage(nx=n_coarse * factor, ny=n_coarse * factor, scale=fine).array
    y_true = galsim.Convolve(gal, optics).drawImage(nx=n_coarse, ny=n_coarse, scale=coarse).array
    o = Observation(
        image=np.zeros((n_coarse, n_coarse)), variance=1.0, psf=psf_coarse, pixel_scale=coarse
    )
    op = o.operator_for(
        Frame((1, n_coarse * factor, n_coarse * factor), pixel_scale=fine), ["galaxy"]
    )
    y = op.apply(torch.from_numpy(x_fine)[None, None, None])[0, 0].numpy()
    err = np.abs(y - y_true).max() / y_true.max()
    assert err < 0.02, f"forward model with the refined PSF is off by {err:.3%} of the peak"


def test_stack_observations_batches_and_converts_flux():
    """Stacked data are in the prior's zero point, masked pixels get unit variance, and row b of
    the batched operator is observation b's own operator even with PSFs of different sizes."""
    m = np.ones((1, 8, 8), bool)
    m[0, 0, :] = False
    a = _obs((1, 8, 8), psf=gaussian_psf(5, 1.0), zeropoint=27.0, valid=m, name="a")
    b = _obs((1, 8, 8), psf=gaussian_psf(9, 2.0), zeropoint=31.4, name="b")
    frame = Frame((1, 8, 8), zeropoint=27.0)
    batch = stack_observations([a, b], frame, dtype=torch.float64)
    assert batch.y.shape == (2, 1, 8, 8) and batch.noise_var.shape == (2, 1, 8, 8)
    k = 10 ** (0.4 * (27.0 - 31.4))
    torch.testing.assert_close(batch.y[1], torch.from_numpy(b.image * k))
    torch.testing.assert_close(batch.noise_var[1], torch.from_numpy(b.variance * k**2))
    assert torch.all(batch.noise_var[0, 0, 0] == 1.0) and torch.all(batch.y[0, 0, 0] == 0)
    x = torch.randn(2, 2, 1, 8, 8, dtype=torch.float64)
    out = batch.operator_for(["galaxy", "sky"]).apply(x)
    for i, o in enumerate((a, b)):
        own = o.operator_for(frame, ["galaxy"]).ops[0]
        expect = own.apply(x[i : i + 1, 0]) + own.apply(x[i : i + 1, 1])
        torch.testing.assert_close(out[i : i + 1], expect, msg=f"batched operator row {i} differs")
    with pytest.raises(ShapeError):
        stack_observations([a, _obs((1, 6, 6))], frame)

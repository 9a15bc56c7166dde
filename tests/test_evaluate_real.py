"""The real-data machinery: resampling HST-like images onto an HSC-like grid, and the two-view
operator."""

from __future__ import annotations

import galsim
import numpy as np
import pytest
import torch
from astropy.wcs import WCS

from galprism.evaluate.multiview import ChannelStack
from galprism.evaluate.real import Resampler, central_footprint, pixel_affine
from galprism.operators import Composition, Convolve, Identity, Mask


def tan_wcs(scale_arcsec: float, crval: tuple[float, float], crpix: tuple[float, float]) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = list(crpix)
    w.wcs.cd = np.diag([-scale_arcsec / 3600.0, scale_arcsec / 3600.0])
    return w


def test_resampler_matches_direct_rendering_on_the_coarse_grid():
    """A galaxy drawn on a 0.03"/px grid and resampled through two TAN WCS equals the same galaxy
    drawn directly
    at 0.168"/px: with its PSF replaced (convolved) and with the 0.2" truth kernel (intrinsic), to
    1% of the
    peak, flux to 0.5%. A wrong offset, flip or scale in the WCS mapping would move or resize the
    galaxy."""
    fine, coarse = 0.03, 0.168
    src = tan_wcs(fine, (150.0, 2.0), (100.5, 100.5))
    dst = tan_wcs(coarse, (150.0003, 1.9998), (20.5, 20.5))
    gal = galsim.Sersic(n=1.5, half_light_radius=0.35, flux=50.0).shear(g1=0.25, g2=-0.1)
    psf_src = galsim.Gaussian(fwhm=0.1)
    psf_dst = galsim.Moffat(beta=3.0, fwhm=0.6)
    xs, ys = 112.3, 93.6  # 0-based source pixel of the galaxy center
    src_img = (
        galsim.Convolve(gal, psf_src)
        .drawImage(nx=200, ny=200, scale=fine, offset=(xs - 99.5, ys - 99.5))
        .array
    )
    src_psf = psf_src.drawImage(nx=41, ny=41, scale=fine).array
    dst_psf = psf_dst.drawImage(nx=25, ny=25, scale=coarse).array
    a, t, resid = pixel_affine(src, dst, (200, 200))
    assert resid < 1e-4
    assert 1.0 / np.sqrt(abs(np.linalg.det(a))) == pytest.approx(coarse / fine, rel=1e-5)
    xd, yd = (float(v) for v in dst.world_to_pixel(src.pixel_to_world(xs, ys)))
    rs = Resampler(a, t, (200, 200), (0, 0), (40, 40), src_psf, dst_psf)
    off = (xd - 19.5, yd - 19.5)
    expect_conv = (
        galsim.Convolve(gal, psf_dst).drawImage(nx=40, ny=40, scale=coarse, offset=off).array
    )
    got_conv = rs.convolved(src_img)
    assert np.abs(got_conv - expect_conv).max() < 0.01 * expect_conv.max()
    assert got_conv.sum() == pytest.approx(expect_conv.sum(), rel=0.005)
    kernel = galsim.Gaussian(fwhm=0.2)
    expect_int = (
        galsim.Convolve(gal, kernel).drawImage(nx=40, ny=40, scale=coarse, offset=off).array
    )
    got_int = rs.intrinsic(src_img, 0.2 / coarse)
    assert np.abs(got_int - expect_int).max() < 0.01 * expect_int.max()
    assert got_int.sum() == pytest.approx(expect_int.sum(), rel=0.005)
    cover = rs.coverage()
    assert cover[20, 20] == pytest.approx(1.0, abs=0.01)  # well inside the fine image's footprint
    assert (
        cover[0, 0] < 0.5
    )  # the fine image covers 6" of the 6.7" coarse crop, centered: corners are outside


def test_central_footprint_grows_into_unassigned_pixels_only():
    """Growing the central segment never takes another segment's pixels."""
    labels = np.zeros((20, 20), dtype=np.int64)
    labels[8:12, 8:12] = 1
    labels[8:12, 13:16] = 2
    grown = central_footprint(labels, 1, grow=3)
    assert grown[8:12, 8:12].all() and grown[5, 10] and not grown[10, 14]
    assert not (grown & (labels == 2)).any()


def test_channel_stack_adjoint_and_shapes():
    """<A x, y> == <x, A^T y> for two stacked views (masked PSF view and masked identity view)."""
    torch.manual_seed(0)
    shape = (1, 16, 16)
    psf = torch.rand(5, 5, dtype=torch.float64)
    m1 = torch.rand(shape) > 0.2
    m2 = torch.rand(shape) > 0.5
    op = ChannelStack(
        [Composition([Mask(m1), Convolve(psf, shape)]), Composition([Mask(m2), Identity(shape)])]
    )
    assert op.out_shape == (2, 16, 16)
    x = torch.randn(3, *shape, dtype=torch.float64)
    y = torch.randn(3, 2, 16, 16, dtype=torch.float64)
    lhs = (op.apply(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-10)
    assert torch.equal(op.apply(x)[:, 1], x[:, 0] * m2[0])

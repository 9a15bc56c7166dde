"""WCS bookkeeping: crops (including padding), finer prior grids, and output cube headers."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS
from fits_factory import make_wcs

from galprism.io.wcsutil import image_header, pixel_scale_arcsec, refine_wcs, shift_wcs

TOL_DEG = 1e-9


@pytest.mark.parametrize("sip", [False, True])
def test_shift_matches_original_pixels(sip):
    """Pixel (i, j) of a crop starting at (x0, y0) is pixel (i + x0, j + y0) of the original, to
    1e-9 deg."""
    w = make_wcs(40, 50, sip=sip)
    x = np.array([0.0, 3.5, 17.0, 49.0])
    y = np.array([0.0, 8.0, 2.25, 39.0])
    for x0, y0 in [(5, 7), (-6, -3), (0, -11)]:
        s = shift_wcs(w, x0, y0)
        a = np.array(w.all_pix2world(x + x0, y + y0, 0))
        b = np.array(s.all_pix2world(x, y, 0))
        assert np.abs(a - b).max() < TOL_DEG, (
            f"shift ({x0}, {y0}) moved the sky by {np.abs(a - b).max()} deg"
        )


@pytest.mark.parametrize("sip", [False, True])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_refine_puts_fine_pixels_inside_their_coarse_pixel(sip, factor):
    """Fine pixel q is centered on coarse pixel (q + 0.5)/f - 0.5, SIP distortion included."""
    w = make_wcs(30, 30, sip=sip)
    r = refine_wcs(w, factor)
    q = np.array([0.0, 1.0, 7.0, 40.0, 119.0])
    c = (q + 0.5) / factor - 0.5
    a = np.array(w.all_pix2world(c, c[::-1], 0))
    b = np.array(r.all_pix2world(q, q[::-1], 0))
    assert np.abs(a - b).max() < TOL_DEG, f"refined WCS off by {np.abs(a - b).max()} deg"
    assert pixel_scale_arcsec(r, "fine") == pytest.approx(
        pixel_scale_arcsec(w, "coarse") / factor, rel=1e-6
    )


def test_cube_header_adds_linear_sample_and_band_axes():
    """The samples cube gets SAMPLE (and BAND) axes whose pixel k is sample k; the sky is
    untouched."""
    w = make_wcs(20, 20)
    h = image_header(w, (("SAMPLE", 8), ("BAND", 3)))
    c = WCS(h)
    assert c.naxis == 4 and list(c.wcs.ctype)[2:] == ["BAND", "SAMPLE"]
    world = c.wcs_pix2world([[4.0, 5.0, 2.0, 6.0]], 0)[0]
    ra, dec = w.all_pix2world([4.0], [5.0], 0)
    assert abs(world[0] - ra[0]) < TOL_DEG and abs(world[1] - dec[0]) < TOL_DEG
    assert world[2] == pytest.approx(2.0) and world[3] == pytest.approx(6.0), (
        "SAMPLE/BAND axis values are not the 0-based index"
    )


def test_cube_header_with_sip_stays_readable():
    """astropy only accepts SIP in 2-D WCS: the cube keeps the exact 2-axis celestial WCS
    instead."""
    w = make_wcs(20, 20, sip=True)
    c = WCS(image_header(w, (("SAMPLE", 8),)))
    assert c.naxis == 2 and c.sip is not None
    a = np.array(w.all_pix2world([3.0], [11.0], 0))
    b = np.array(c.all_pix2world([3.0], [11.0], 0))
    assert np.abs(a - b).max() < TOL_DEG

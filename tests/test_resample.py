"""WCS-to-WCS resampling: adjoint, flux conservation, geometry, integer-ratio fast path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from astropy.wcs import WCS
from astropy.wcs.utils import pixel_to_pixel
from fits_factory import make_wcs

from galprism.errors import ConfigError, ShapeError
from galprism.io.wcsutil import refine_wcs, shift_wcs
from galprism.operators import Composition, Convolve, Downsample, Resample, integer_factor

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _grid(
    scale: float,
    shape: tuple[int, int],
    *,
    rotate_deg: float = 0.0,
    offset: tuple[float, float] = (0.0, 0.0),
    flip: bool = False,
    ra: float = 150.1,
    dec: float = 2.2,
) -> WCS:
    """TAN grid of ``scale`` arcsec pixels centered (up to ``offset`` px) on (ra, dec)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    h, wd = shape
    w.wcs.crpix = [(wd + 1) / 2 + offset[0], (h + 1) / 2 + offset[1]]
    s = scale / 3600.0
    c, sn = np.cos(np.deg2rad(rotate_deg)), np.sin(np.deg2rad(rotate_deg))
    cd = np.array([[-s * c, s * sn], [s * sn, s * c]])
    if flip:
        cd[:, 0] *= -1
    w.wcs.cd = cd
    return w


def _random_pair(rng: np.random.Generator) -> tuple[WCS, tuple, WCS, tuple]:
    """Source and target grids on about the same sky: pixel-scale ratio 0.1-1 either way,
    any rotation, sub-pixel offsets, sometimes a flipped axis."""
    fine = rng.uniform(0.02, 0.1)
    coarse = fine / rng.uniform(0.1, 1.0)
    field = rng.uniform(1.0, 2.0)  # arcsec
    grids = []
    for scale in (fine, coarse):
        n = max(3, int(round(field / scale)))
        shape = (n + int(rng.integers(0, 3)), n + int(rng.integers(0, 3)))
        wcs = _grid(
            scale,
            shape,
            rotate_deg=rng.uniform(0, 360),
            offset=tuple(rng.uniform(-0.5, 0.5, 2)),
            flip=bool(rng.integers(0, 2)),
        )
        grids.append((wcs, shape))
    if rng.integers(0, 2):
        grids.reverse()
    (sw, ss), (tw, ts) = grids
    return sw, ss, tw, ts


def _pixels_inside(source_wcs, source_shape, target_wcs, target_shape) -> np.ndarray:
    """Source pixels whose four corners all map inside the target grid (independent of
    the operator: straight from astropy)."""
    h, w = source_shape
    ys, xs = np.meshgrid(np.arange(h + 1) - 0.5, np.arange(w + 1) - 0.5, indexing="ij")
    tx, ty = pixel_to_pixel(source_wcs, target_wcs, xs, ys)
    th, tw = target_shape
    ok = (tx > -0.5) & (tx < tw - 0.5) & (ty > -0.5) & (ty < th - 0.5)
    return ok[:-1, :-1] & ok[:-1, 1:] & ok[1:, :-1] & ok[1:, 1:]


def _gaussian(shape, cx, cy, sigma, n_bands=1, sersic=False) -> torch.Tensor:
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    r = np.hypot(x - cx, y - cy)
    img = np.exp(-((r / sigma) ** 0.5) * 3.0) if sersic else np.exp(-0.5 * (r / sigma) ** 2)
    img = img / img.sum()
    return torch.from_numpy(np.stack([img * (k + 1) for k in range(n_bands)]))


@pytest.mark.parametrize("seed", range(8))
def test_adjoint_identity_and_column_sums_on_random_wcs_pairs(seed):
    """<A x, y> == <x, A^T y> to round-off (a wrong adjoint biases every posterior sample),
    and every source pixel wholly inside the target keeps exactly its flux."""
    rng = np.random.default_rng(seed)
    sw, ss, tw, ts = _random_pair(rng)
    op = Resample(sw, (2, *ss), tw, (2, *ts))
    gen = torch.Generator().manual_seed(seed)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x = torch.randn(3, *op.in_shape, generator=gen, dtype=torch.float64).to(dtype)
        y = torch.randn(3, *op.out_shape, generator=gen, dtype=torch.float64).to(dtype)
        lhs = (op.apply(x).double() * y.double()).sum()
        rhs = (x.double() * op.adjoint(y).double()).sum()
        scale = float((op.apply(x).double().abs() * y.double().abs()).sum())
        assert abs(float(lhs - rhs)) <= tol * scale, (dtype, float(lhs), float(rhs))
    inside = _pixels_inside(sw, ss, tw, ts)
    assert inside.any(), "test grids should overlap"
    np.testing.assert_allclose(op.coverage[inside], 1.0, atol=1e-9)
    assert op.coverage.max() <= 1 + 1e-9 and op.coverage.min() >= 0


def _covering_pair(rng: np.random.Generator) -> tuple[WCS, tuple, WCS, tuple]:
    """Two square grids 24 coarse pixels across on the same sky, scale ratio 0.1-1 either
    way, each rotated at random (and sometimes flipped), the target offset by a sub-pixel."""
    ratio = rng.uniform(0.1, 1.0)
    scales = [0.03, 0.03 / ratio]
    if rng.integers(0, 2):
        scales.reverse()
    shapes = [(round(24 * max(scales) / sc),) * 2 for sc in scales]
    sw = _grid(scales[0], shapes[0], rotate_deg=rng.uniform(0, 360), flip=bool(rng.integers(2)))
    tw = _grid(
        scales[1],
        shapes[1],
        rotate_deg=rng.uniform(0, 360),
        offset=tuple(rng.uniform(-0.5, 0.5, 2)),
        flip=bool(rng.integers(2)),
    )
    return sw, shapes[0], tw, shapes[1]


def _centered_source(rng, shape, sersic=False) -> torch.Tensor:
    """Two bands of a source near the center whose light lies within about 7 sigma (half
    the grid): all of it falls on any rotation of the target."""
    sigma = shape[0] / 14
    cx = (shape[1] - 1) / 2 + rng.uniform(-0.5, 0.5)
    cy = (shape[0] - 1) / 2 + rng.uniform(-0.5, 0.5)
    return _gaussian(shape, cx, cy, sigma / (3 if sersic else 1), n_bands=2, sersic=sersic)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sersic", [False, True])
def test_source_keeps_its_total_flux(seed, sersic):
    """A Gaussian or Sersic-like source drawn well inside the source grid keeps its total
    flux to 0.1 % on the target grid (rotated, offset, 0.1-1 scale ratio either way), in
    every band; flux_fraction reports the same."""
    rng = np.random.default_rng(100 + seed)
    sw, ss, tw, ts = _covering_pair(rng)
    x = _centered_source(rng, ss, sersic)
    op = Resample(sw, (2, *ss), tw, (2, *ts))
    out = op.apply(x[None])[0]
    np.testing.assert_allclose(out.sum(dim=(-2, -1)), x.sum(dim=(-2, -1)), rtol=1e-3)
    np.testing.assert_allclose(op.flux_fraction(x[None])[0], 1.0, rtol=1e-3)


@pytest.mark.parametrize("seed", range(6))
def test_source_lands_where_the_wcs_puts_it(seed):
    """The resampled Gaussian's centroid is the source centroid carried through astropy, to
    1 % of the coarser grid's pixel: no shift, flip or rotation error in the geometry."""
    rng = np.random.default_rng(100 + seed)
    sw, ss, tw, ts = _covering_pair(rng)
    x = _centered_source(rng, ss)[0].numpy()
    img = Resample(sw, ss, tw, ts).apply(torch.from_numpy(x)[None])[0].numpy()
    yy, xx = np.mgrid[: ts[0], : ts[1]]
    got = np.array([(img * xx).sum(), (img * yy).sum()]) / img.sum()
    yy, xx = np.mgrid[: ss[0], : ss[1]]
    c = np.array([(x * xx).sum(), (x * yy).sum()]) / x.sum()
    want = np.array(pixel_to_pixel(sw, tw, c[0], c[1]), dtype=float)
    coarse_in_target = max(1.0, _scale(sw) / _scale(tw))
    assert np.hypot(*(got - want)) < 0.01 * coarse_in_target, (got, want)


def _scale(w: WCS) -> float:
    return float(np.sqrt(abs(np.linalg.det(w.wcs.cd))) * 3600)


def test_overlaps_match_point_sampling():
    """Each weight is the area share that dense point sampling of the source pixel finds in
    that target pixel (to the sampling's own resolution): the geometry is right, not just
    the column sums."""
    sw = _grid(0.1, (9, 8), rotate_deg=23.0, offset=(0.31, -0.17))
    tw = _grid(0.13, (8, 9), rotate_deg=-41.0, offset=(-0.2, 0.4), flip=True)
    op = Resample(sw, (9, 8), tw, (8, 9))
    n = 60
    sub = (np.arange(n) + 0.5) / n - 0.5
    dense = np.zeros((8 * 9, 9 * 8))
    for i in range(9):
        for j in range(8):
            ys, xs = np.meshgrid(i + sub, j + sub, indexing="ij")
            tx, ty = pixel_to_pixel(sw, tw, xs.ravel(), ys.ravel())
            c, r = np.floor(tx + 0.5).astype(int), np.floor(ty + 0.5).astype(int)
            ok = (c >= 0) & (c < 9) & (r >= 0) & (r < 8)
            np.add.at(dense[:, i * 8 + j], r[ok] * 9 + c[ok], 1.0 / n**2)
    err = np.abs(op.matrix.toarray() - dense).max()
    assert err < 4.0 / n, err  # a cell boundary crosses at most ~2 sample rows


@pytest.mark.parametrize("factor", [2, 3, 5])
@pytest.mark.parametrize("sip", [False, True])
def test_aligned_integer_ratio_matches_downsample(factor, sip):
    """When the source grid is the target split f x f, integer_factor says f and Resample
    is Downsample(f): callers can keep the fast path without changing the model."""
    coarse = make_wcs(8, 6, sip=sip)
    fine = refine_wcs(coarse, factor)
    fine_shape, coarse_shape = (2, 8 * factor, 6 * factor), (2, 8, 6)
    assert integer_factor(fine, fine_shape, coarse, coarse_shape) == factor
    op = Resample(fine, fine_shape, coarse, coarse_shape)
    x = torch.rand(
        3, *fine_shape, generator=torch.Generator().manual_seed(factor), dtype=torch.float64
    )
    np.testing.assert_allclose(op.apply(x), Downsample(factor, fine_shape).apply(x), rtol=1e-7)
    assert op.matrix.nnz == fine_shape[1] * fine_shape[2]  # no round-off slivers kept


def test_integer_factor_refuses_grids_that_are_not_block_splits():
    """Rotated, shifted, non-integer, mis-sized or coarser-source grids are not a block sum."""
    coarse = _grid(0.2, (10, 10))
    fine = refine_wcs(coarse, 4)
    assert integer_factor(coarse, (10, 10), coarse, (10, 10)) == 1
    assert integer_factor(fine, (40, 40), coarse, (10, 10)) == 4
    assert integer_factor(fine, (40, 40), _grid(0.2, (10, 10), rotate_deg=1.0), (10, 10)) is None
    assert integer_factor(fine, (40, 40), _grid(0.2, (10, 10), offset=(0.3, 0)), (10, 10)) is None
    assert integer_factor(_grid(0.06, (40, 40)), (40, 40), coarse, (12, 12)) is None
    assert integer_factor(fine, (40, 40), coarse, (11, 11)) is None
    assert integer_factor(coarse, (10, 10), fine, (40, 40)) is None
    assert integer_factor(fine, (1, 40, 40), coarse, (2, 10, 10)) is None


@pytest.mark.parametrize("dx, dy", [(1, 0), (0, 1), (-2, 3)])
def test_whole_pixel_shift_is_an_exact_shift(dx, dy):
    """A target WCS shifted by whole pixels gives the image moved by exactly those pixels,
    with zeros where the source has no light and no interpolation blur."""
    sw = make_wcs(12, 10, sip=True)
    tw = shift_wcs(sw, dx, dy)
    x = torch.rand(2, 1, 12, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = Resample(sw, (1, 12, 10), tw, (1, 12, 10)).apply(x)
    want = torch.zeros_like(x)
    # Target pixel (i, j) is source pixel (i + dy, j + dx).
    ys, xs = slice(max(0, -dy), min(12, 12 - dy)), slice(max(0, -dx), min(10, 10 - dx))
    yt, xt = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
    want[..., ys, xs] = x[..., yt, xt]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-9)


def test_rotation_by_90_degrees_rotates_the_image():
    """A target grid turned by 90 deg about the image center holds the rotated image."""
    sw = _grid(0.1, (7, 11))
    tw = sw.deepcopy()
    tw.wcs.cd = sw.wcs.cd @ np.array([[0.0, -1.0], [1.0, 0.0]])
    tw.wcs.crpix = [(7 + 1) / 2, (11 + 1) / 2]
    x = torch.rand(1, 1, 7, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = Resample(sw, (1, 7, 11), tw, (1, 11, 7)).apply(x)
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=1e-9)


def test_grids_without_common_sky_are_refused_in_one_line():
    """Grids on different sky are a configuration error naming both grids, not a zero
    operator that would silently drop the view."""
    a = _grid(0.1, (20, 20))
    b = _grid(0.1, (20, 20), ra=150.2)
    with pytest.raises(ConfigError, match="no overlapping sky") as err:
        Resample(a, (20, 20), b, (20, 20), source_name="hsc.fits", target_name="hst.fits")
    assert "hsc.fits" in str(err.value) and "hst.fits" in str(err.value)
    assert "\n" not in str(err.value)
    # The opposite side of the sky has no position on the target's projection at all.
    with pytest.raises(ConfigError, match="no overlapping sky"):
        Resample(a, (20, 20), _grid(0.1, (20, 20), ra=330.1, dec=-2.2), (20, 20))


def test_bad_shapes_and_wcs_are_refused():
    """Shapes that are not (H, W) or (C, H, W), disagreeing bands, or a non-celestial WCS."""
    w = _grid(0.1, (5, 5))
    with pytest.raises(ShapeError, match="grid shape"):
        Resample(w, (5,), w, (5, 5))
    with pytest.raises(ShapeError, match="leading"):
        Resample(w, (2, 5, 5), w, (3, 5, 5))
    linear = WCS(naxis=2)
    with pytest.raises(ConfigError, match="celestial"):
        Resample(linear, (5, 5), w, (5, 5), source_name="lab.fits")


def test_partial_overlap_reports_coverage():
    """Light falling off the target is the only light lost, and coverage says how much."""
    sw = _grid(0.1, (20, 20))
    tw = _grid(0.1, (20, 20), offset=(10.5, 0.0))
    op = Resample(sw, (20, 20), tw, (20, 20))
    # Source column x lands on target column x + 10.5: columns 0-8 inside, 9 half, 10- out.
    assert np.allclose(op.coverage[:, :9], 1) and op.coverage[:, 10:].max() == 0
    np.testing.assert_allclose(op.coverage[:, 9], 0.5, atol=1e-9)
    x = torch.rand(2, 20, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(
        op.flux_fraction(x), op.apply(x).sum(dim=(-2, -1)) / x.sum(dim=(-2, -1))
    )
    assert np.allclose(op.target_coverage[:, 11:], 1) and op.target_coverage[:, :10].max() == 0
    np.testing.assert_allclose(op.target_coverage[:, 10], 0.5, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_batches_and_bands_share_one_matrix(device):
    """(N, C, H, W) input: each image and band is resampled by the same matrix, on the
    input's device and dtype, also inside a composition with a PSF."""
    sw, ss, tw, ts = _random_pair(np.random.default_rng(3))
    op = Resample(sw, (3, *ss), tw, (3, *ts))
    x = torch.rand(4, 3, *ss, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = op.matrix.toarray()
    want = np.einsum("ts,ncs->nct", a, x.reshape(4, 3, -1).numpy()).reshape(4, 3, *ts)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        out = op.apply(x.to(device=device, dtype=dtype))
        assert out.dtype == dtype and out.device.type == device
        np.testing.assert_allclose(out.double().cpu(), want, rtol=tol, atol=tol)
    psf = torch.ones(3, 3, dtype=torch.float64)
    model = Composition([Convolve(psf, op.out_shape), op])
    assert model.apply(x.to(device)).shape == (4, 3, *ts)
    two_d = Resample(sw, ss, tw, ts)
    torch.testing.assert_close(two_d.apply(x[:, 1]), op.apply(x)[:, 1])


def test_subdivision_agrees_for_affine_pairs_and_bounds_projection_error():
    """Splitting source pixels changes nothing where the grids are affine to each other,
    and next to nothing for TAN grids with tangent points 1 deg apart or through a SIP
    distortion (the documented straight-edge accuracy: < 1e-8 and < 1e-6)."""
    sw, ss, tw, ts = _random_pair(np.random.default_rng(5))
    a1 = Resample(sw, ss, tw, ts).matrix
    a3 = Resample(sw, ss, tw, ts, subdivide=3).matrix
    assert abs(a1 - a3).max() < 1e-8
    far = _grid(0.2, (30, 30), rotate_deg=17.0)
    far.wcs.crval = [151.1, 2.9]
    src = _grid(0.03, (150, 150))
    # Re-center the far grid's pixels on the source field.
    cx, cy = pixel_to_pixel(src, far, np.array(74.5), np.array(74.5))
    far.wcs.crpix = far.wcs.crpix - np.array([float(cx) - 14.5, float(cy) - 14.5])
    b1 = Resample(src, (150, 150), far, (30, 30)).matrix
    b4 = Resample(src, (150, 150), far, (30, 30), subdivide=4).matrix
    assert abs(b1 - b4).max() < 1e-8
    sip = make_wcs(60, 60, sip=True, scale=0.2)  # SIP terms of 2e-5 px per px**2
    fine = make_wcs(300, 300, scale=0.04, rotate=1.1)
    c1 = Resample(sip, (60, 60), fine, (300, 300)).matrix
    c4 = Resample(sip, (60, 60), fine, (300, 300), subdivide=4).matrix
    assert abs(c1 - c4).max() < 1e-6


def test_gradients_flow_and_the_operator_pickles():
    """Autograd through apply gives A^T y (the sampler differentiates through the forward
    model), and a pickled operator (as sent to worker processes) applies the same matrix."""
    sw, ss, tw, ts = _random_pair(np.random.default_rng(6))
    op = Resample(sw, (1, *ss), tw, (1, *ts))
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, *op.in_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, *op.out_shape, generator=gen, dtype=torch.float64)
    (op.apply(x) * y).sum().backward()
    torch.testing.assert_close(x.grad, op.adjoint(y))
    clone = pickle.loads(pickle.dumps(op))
    torch.testing.assert_close(clone.apply(x.detach()), op.apply(x.detach()))


def test_grids_in_different_celestial_frames():
    """A galactic-coordinate grid on the same sky as an ICRS grid receives the light at the
    same place (read as RA/Dec, its coordinates would point elsewhere on the sky)."""
    from astropy.coordinates import SkyCoord

    icrs = _grid(0.1, (21, 21))
    gal = SkyCoord(ra=150.1, dec=2.2, unit="deg").galactic
    gw = _grid(0.1, (21, 21), rotate_deg=60.0, ra=gal.l.deg, dec=gal.b.deg)
    gw.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
    op = Resample(icrs, (21, 21), gw, (21, 21))
    x = torch.zeros(1, 21, 21, dtype=torch.float64)
    x[0, 10, 10] = 1.0
    out = op.apply(x)[0].numpy()
    assert abs(out.sum() - 1.0) < 1e-9
    yy, xx = np.mgrid[:21, :21]
    centroid = (float((out * xx).sum()), float((out * yy).sum()))
    assert np.hypot(centroid[0] - 10, centroid[1] - 10) < 1e-3, centroid

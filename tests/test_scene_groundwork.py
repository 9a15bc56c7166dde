"""Whole-scene groundwork: placement and star operators, blends, detection, catalogues.

Each test's docstring says what would be wrong if it failed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table
from fits_factory import gaussian_psf, make_wcs

from galprism.errors import GalprismError, InputError
from galprism.scene import (
    PlaceStamp,
    PlaceStamps,
    StarOperator,
    catalog_hdu,
    detect,
    group_blends,
    normalize_catalog,
    read_catalog,
    star_or_galaxy,
    write_catalog,
)
from galprism.scene.catalog import catalog_path_for
from galprism.scene.classify import _gaussian_blur

F64 = torch.float64


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def _gauss_stamp(c: int, h: int, w: int, sigma: float = 1.8) -> torch.Tensor:
    yy = torch.arange(h, dtype=F64)[:, None] - (h - 1) / 2
    xx = torch.arange(w, dtype=F64)[None, :] - (w - 1) / 2
    g = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return torch.stack([g * (k + 1) for k in range(c)])


# -- placement -----------------------------------------------------------------------------


@pytest.mark.parametrize("stamp", [(2, 9, 8), (1, 12, 12), (3, 7, 11)])
def test_place_stamps_adjoint_identity_at_random_subpixel_positions(stamp):
    """<A x, y> = <x, A^T y> to 1e-10: otherwise the placement's adjoint (used by every
    gradient and posterior solve) is not the transpose of the map, e.g. a sign error in the
    reverse shift or a window mismatch for stamps that straddle the frame's edge."""
    gen = torch.Generator().manual_seed(1)
    frame = (stamp[0], 33, 40)
    # Positions anywhere, including partly and wholly outside the frame.
    pos = torch.rand(6, 2, generator=gen, dtype=F64) * torch.tensor([56.0, 49.0]) - 8.0
    pos[-1] = torch.tensor([-30.0, 70.0])  # wholly outside: contributes nothing
    op = PlaceStamps(pos, stamp, frame)
    x = torch.randn(3, 6, *stamp, generator=gen, dtype=F64)
    y = torch.randn(3, *frame, generator=gen, dtype=F64)
    lhs, rhs = _dot(op(x), y), _dot(x, op.adjoint(y))
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), abs(rhs))
    assert op.adjoint(y)[:, -1].abs().max() == 0


def test_place_stamp_single_source_equals_batched_and_has_adjoint():
    """One-source PlaceStamp is the same map as PlaceStamps' column k: otherwise a
    pipeline composing per-source operators in a SourceSum would place sources elsewhere
    than the batched operator."""
    gen = torch.Generator().manual_seed(2)
    pos = torch.tensor([[10.37, 12.81], [25.5, 3.49]], dtype=F64)
    many = PlaceStamps(pos, (2, 9, 9), (2, 30, 30))
    x = torch.randn(4, 2, 2, 9, 9, generator=gen, dtype=F64)
    total = many(x)
    parts = [many.source(k)(x[:, k]) for k in range(2)]
    torch.testing.assert_close(total, parts[0] + parts[1], rtol=0, atol=1e-12)
    one = PlaceStamp(pos[1], (2, 9, 9), (2, 30, 30))
    y = torch.randn(4, 2, 30, 30, generator=gen, dtype=F64)
    lhs, rhs = _dot(one(x[:, 1]), y), _dot(x[:, 1], one.adjoint(y))
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def test_placement_conserves_flux_for_stamps_inside_the_frame():
    """Sum over the frame = sum of the stamp to 1e-6 (relative) for any stamp, even a
    non-smooth one, when the padded stamp lies inside: otherwise the sub-pixel shift
    changes a source's flux depending on its position."""
    gen = torch.Generator().manual_seed(3)
    stamp, frame = (2, 12, 10), (2, 60, 64)
    pos = torch.rand(5, 2, generator=gen, dtype=F64) * 20 + 22  # padded stamps fit
    op = PlaceStamps(pos, stamp, frame, pad=8)
    x = torch.rand(2, 5, *stamp, generator=gen, dtype=F64)  # white noise: not band-limited
    for k in range(5):
        placed = op.source(k)(x[:, k])
        rel = (placed.sum(dim=(-2, -1)) - x[:, k].sum(dim=(-2, -1))).abs() / x[:, k].sum(
            dim=(-2, -1)
        )
        assert float(rel.max()) < 1e-6


def test_placement_does_not_smooth():
    """A half-pixel shift of white noise keeps its norm (1e-10) when the padded stamp is in
    the frame: the shift is unitary, so it adds no position-dependent blur (an even padded
    grid or an interpolating shift would attenuate the highest frequencies)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 2, 12, 10, generator=gen, dtype=F64)
    for pos in [(30.0, 30.0), (30.5, 29.5), (30.25, 30.75)]:
        out = PlaceStamp(pos, (2, 12, 10), (2, 60, 60))(x)
        torch.testing.assert_close(out.square().sum(), x.square().sum(), rtol=1e-10, atol=0)


def test_placement_puts_the_stamp_center_at_the_requested_position():
    """The light-weighted centroid of a placed, well-sampled Gaussian is (x, y) to 2e-3 px:
    otherwise the shift has the wrong sign, the wrong center convention (geometric center
    of the stamp, 0-based pixels) or the wrong split into integer and fraction."""
    stamp = _gauss_stamp(1, 21, 20, sigma=2.0)
    yy, xx = torch.meshgrid(torch.arange(50, dtype=F64), torch.arange(60, dtype=F64), indexing="ij")
    for x, y in [(20.3, 16.7), (31.5, 25.5), (29.99, 24.01), (30.0, 25.0), (27.74, 22.26)]:
        out = PlaceStamp((x, y), (1, 21, 20), (1, 50, 60), pad=12)(stamp[None])[0, 0]
        cx, cy = float((out * xx).sum() / out.sum()), float((out * yy).sum() / out.sum())
        assert abs(cx - x) < 2e-3 and abs(cy - y) < 2e-3, (x, y, cx, cy)


def test_placement_at_whole_pixel_offset_is_an_exact_copy():
    """With no fractional shift the stamp is copied bit for bit (to round-off): otherwise
    the operator resamples sources even when no resampling is needed."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 9, 8, generator=gen, dtype=F64)
    # Geometric center (3.5, 4) of a 9x8 stamp lands on (13.5, 10): first pixel at (10, 6).
    out = PlaceStamp((13.5, 10.0), (2, 9, 8), (2, 20, 24))(x)
    torch.testing.assert_close(out[0, :, 6:15, 10:18], x[0], rtol=0, atol=1e-12)
    out[0, :, 6:15, 10:18] = 0
    assert float(out.abs().max()) < 1e-12


def test_placement_drops_exactly_the_light_outside_the_frame():
    """A stamp partly outside the frame gives exactly the frame's window on the same stamp
    placed in a larger frame (1e-12), and the lost flux is exactly the light that falls
    outside: otherwise light is wrapped around, clipped in the wrong place or rescaled."""
    gen = torch.Generator().manual_seed(5)
    stamp, frame, m = (1, 15, 15), (1, 30, 34), 20
    big = (1, frame[1] + 2 * m, frame[2] + 2 * m)
    x = _gauss_stamp(1, 15, 15, sigma=2.5)[None] + 0.01 * torch.rand(
        1, *stamp, generator=gen, dtype=F64
    )
    for pos in [(1.3, 15.2), (32.6, -0.4), (-2.45, 28.7)]:
        small = PlaceStamp(pos, stamp, frame)(x)
        large = PlaceStamp((pos[0] + m, pos[1] + m), stamp, big)(x)
        window = large[..., m : m + frame[1], m : m + frame[2]]
        torch.testing.assert_close(small, window, rtol=0, atol=1e-12)
        lost = float(large.sum() - small.sum())
        outside = float(large.sum() - window.sum())
        assert lost > 0.05 * float(x.sum())  # the case does lose light
        assert abs(lost - outside) < 1e-10


def test_placement_composes_with_observation_operators():
    """Per-source placements inside a SourceSum after a PSF convolution equal the batched
    placement convolved once; float32 agrees with float64 to 1e-5; autograd's
    vector-Jacobian product equals the adjoint: otherwise the operator cannot be wired into
    the observation model, or gradients taken by autograd differ from A^T."""
    from galprism.operators import Convolve, SourceSum

    gen = torch.Generator().manual_seed(8)
    pos = [[10.3, 12.7], [20.2, 18.6], [31.9, 2.1]]
    many = PlaceStamps(pos, (1, 16, 16), (1, 32, 34))
    conv = Convolve(torch.as_tensor(gaussian_psf(7, 1.1)), (1, 32, 34))
    per_source = SourceSum([conv @ many.source(k) for k in range(3)])
    x = torch.randn(2, 3, 1, 16, 16, generator=gen, dtype=F64, requires_grad=True)
    torch.testing.assert_close(per_source(x), conv(many(x)), rtol=0, atol=1e-12)
    single = many(x.detach())
    torch.testing.assert_close(
        many(x.detach().float()).double(), single, rtol=0, atol=1e-5 * float(single.abs().max())
    )
    v = torch.randn(2, 1, 32, 34, generator=gen, dtype=F64)
    (grad,) = torch.autograd.grad(many(x), x, v)
    torch.testing.assert_close(grad, many.adjoint(v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("per_band", [False, True])
def test_star_operator_adjoint_identity_and_unit_flux(per_band):
    """The star operator's adjoint is its transpose (1e-10) at random sub-pixel positions,
    a unit flux puts unit flux in each band when inside the frame, and the star's centroid
    is its position: otherwise star fluxes fitted with it are biased or misplaced."""
    gen = torch.Generator().manual_seed(6)
    psf = torch.as_tensor(gaussian_psf(15, 1.6, n_bands=2))
    frame = (2, 40, 44)
    for _ in range(4):
        pos = (torch.rand(2, generator=gen, dtype=F64) * torch.tensor([20.0, 16.0]) + 12).tolist()
        star = StarOperator(psf, pos, frame, per_band=per_band)
        n = 2 if per_band else 1
        assert star.in_shape == (n,)
        f = torch.randn(3, n, generator=gen, dtype=F64)
        y = torch.randn(3, *frame, generator=gen, dtype=F64)
        lhs, rhs = _dot(star(f), y), _dot(f, star.adjoint(y))
        assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), abs(rhs))
        img = star(torch.ones(1, n, dtype=F64))[0]
        torch.testing.assert_close(
            img.sum(dim=(-2, -1)), torch.ones(2, dtype=F64), atol=1e-6, rtol=0
        )
        yy, xx = torch.meshgrid(
            torch.arange(40, dtype=F64), torch.arange(44, dtype=F64), indexing="ij"
        )
        cx = float((img[0] * xx).sum() / img[0].sum())
        cy = float((img[0] * yy).sum() / img[0].sum())
        assert abs(cx - pos[0]) < 1e-3 and abs(cy - pos[1]) < 1e-3


def test_star_operator_per_band_flux_reaches_only_its_band():
    """With per-band fluxes, flux b lights band b only: otherwise a star's colour leaks."""
    star = StarOperator(gaussian_psf(11, 1.2), (20.2, 19.7), (3, 41, 41), per_band=True)
    img = star(torch.tensor([[0.0, 5.0, 0.0]], dtype=F64))[0]
    assert float(img[0].abs().max()) == 0 and float(img[2].abs().max()) == 0
    assert abs(float(img[1].sum()) - 5.0) < 1e-6


# -- blends --------------------------------------------------------------------------------


def _cat(rows: list[tuple[int, float, float]], **cols: list[float]) -> Table:
    t = Table(rows=rows, names=("id", "x", "y"), dtype=(np.int64, np.float64, np.float64))
    for k, v in cols.items():
        t[k] = v
    return t


def test_blends_two_overlapping_and_one_isolated_give_two_blends():
    """Discs of radius 5: sources 8 px apart blend, one 40 px away is alone: otherwise
    blended sources would be modelled separately or isolated ones needlessly together."""
    t = _cat([(1, 20.0, 20.0), (2, 28.0, 20.0), (3, 70.0, 60.0)])
    blends = group_blends(t, (100, 100), (16, 16), radius=5.0)
    assert [b.ids for b in blends] == [(1, 2), (3,)]
    assert all(not b.is_clipped for b in blends)
    b0 = blends[0]
    y0, y1, x0, x1 = b0.box
    # The frame holds both model stamps: x from 20-7.5 to 28+7.5, y from 20-7.5.
    assert x0 <= 12 and x1 >= 36 and y0 <= 12 and y1 >= 28
    np.testing.assert_allclose(b0.positions, [[20 - x0, 20 - y0], [28 - x0, 20 - y0]])
    # A 16-pixel stamp centered on a whole pixel straddles 17 pixels; centered between
    # pixels (70.5) it covers exactly the model grid.
    assert blends[1].shape == (17, 17)
    t["x"][2], t["y"][2] = 70.5, 60.5
    alone = group_blends(t, (100, 100), (16, 16), radius=5.0)[1]
    assert alone.shape == (16, 16) and alone.box == (53, 69, 63, 79)


def test_blend_border_adds_background_pixels_beyond_the_stamps_and_keeps_the_grouping():
    """``border`` widens every box by that many pixels per side beyond the members' stamps
    (so the background has pixels no galaxy stamp covers) without changing which sources
    blend; at the image edge it is clipped like the rest of the box."""
    t = _cat([(1, 20.5, 20.5), (2, 28.5, 20.5), (3, 70.5, 60.5)])
    plain = group_blends(t, (100, 100), (16, 16), radius=5.0)
    wide = group_blends(t, (100, 100), (16, 16), radius=5.0, border=6)
    assert [b.ids for b in wide] == [b.ids for b in plain]
    for p, w in zip(plain, wide, strict=True):
        assert w.box == (p.box[0] - 6, p.box[1] + 6, p.box[2] - 6, p.box[3] + 6)
    assert wide[1].shape == (28, 28)
    edge = group_blends(_cat([(1, 4.5, 50.5)]), (100, 100), (16, 16), radius=5.0, border=6)[0]
    assert edge.box[2] == 0 and edge.is_clipped


def test_blends_chain_makes_one_blend():
    """A-B and B-C overlap but A-C do not: still one blend (transitivity, union-find);
    otherwise B would be modelled twice or split from one of its neighbours."""
    t = _cat([(5, 10.0, 50.0), (7, 18.0, 50.0), (9, 26.0, 50.0)])
    blends = group_blends(t, (100, 100), (8, 8), radius=5.0)
    assert [b.ids for b in blends] == [(5, 7, 9)]


def test_blends_from_segment_bounding_boxes_with_margin():
    """Bounding boxes 3 px apart blend with a margin of 2 (dilated boxes touch) and not with
    a margin of 1: otherwise the margin is not applied as documented."""
    t = _cat([(1, 10.0, 10.0), (2, 20.0, 10.0)])
    t["bbox_xmin"], t["bbox_xmax"] = [6, 17], [13, 24]
    t["bbox_ymin"], t["bbox_ymax"] = [6, 6], [14, 14]
    assert len(group_blends(t, (40, 40), (8, 8), margin=2.0)) == 1
    assert len(group_blends(t, (40, 40), (8, 8), margin=1.0)) == 2


def test_blends_do_not_depend_on_row_order():
    """Shuffling the catalogue's rows gives the same blends in the same order: otherwise
    outputs (and seeds derived from blend order) change with the catalogue's order."""
    rng = np.random.default_rng(0)
    rows = [(int(i), float(x), float(y)) for i, (x, y) in enumerate(rng.uniform(0, 200, (40, 2)))]
    ref = group_blends(_cat(rows), (200, 200), (12, 12), radius=6.0)
    assert any(b.n_sources > 1 for b in ref) and any(b.n_sources == 1 for b in ref)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(rows))
        got = group_blends(_cat([rows[i] for i in perm]), (200, 200), (12, 12), radius=6.0)
        assert [(b.ids, b.box, b.clipped) for b in got] == [(b.ids, b.box, b.clipped) for b in ref]


def test_blend_at_the_edge_is_clipped_and_says_so():
    """A source 2 px from the corner: the box is clipped to the image, the clipping is
    recorded per side and in the description, and positions are relative to the clipped
    box: otherwise part of the model frame would be cropped silently."""
    t = _cat([(1, 2.0, 3.0)])
    (b,) = group_blends(t, (50, 60), (16, 16), radius=4.0, multiple=4)
    assert b.box[0] == 0 and b.box[2] == 0
    assert b.requested[0] < 0 and b.requested[2] < 0
    assert b.is_clipped and b.clipped[0] == -b.requested[0] and b.clipped[2] == -b.requested[2]
    assert (b.requested[1] - b.requested[0]) % 4 == 0 and (b.requested[3] - b.requested[2]) % 4 == 0
    assert "clipped" in b.describe()
    np.testing.assert_allclose(b.positions, [[2.0, 3.0]])


# -- detection -----------------------------------------------------------------------------


def _blobs(shape: tuple[int, int], truth: list[tuple[float, float, float, float]]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape)
    for x, y, s, f in truth:
        img += f / (2 * np.pi * s * s) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return img


TRUTH = [(15.3, 20.6, 2.0, 300.0), (50.7, 40.2, 2.5, 400.0), (30.1, 57.4, 1.8, 250.0)]


def test_detect_finds_three_gaussian_blobs_within_half_a_pixel():
    """Three Gaussian sources on a sky of 5 with noise 0.1: exactly three detections, each
    within 0.5 px of a true center, with fluxes within 10%: otherwise the background, the
    threshold or the 0-based position convention is wrong."""
    rng = np.random.default_rng(1)
    img = _blobs((72, 80), TRUTH) + 5.0 + rng.normal(0, 0.1, (72, 80))
    det = detect(img, np.full(img.shape, 0.01))
    assert len(det) == 3
    for x, y, _, f in TRUTH:
        d = np.hypot(det.table["x"] - x, det.table["y"] - y)
        k = int(np.argmin(d))
        assert d[k] < 0.5
        assert abs(det.table["flux"][k] - f) < 0.1 * f
        assert det.segmentation[int(round(y)), int(round(x))] == det.table["id"][k]
    assert {"bbox_xmin", "kron_semimajor", "semimajor_sigma", "flux_err"} <= set(det.table.colnames)


def test_detect_on_a_cube_with_wcs_and_masked_pixels():
    """Two bands (one noisier), a masked stripe and a WCS: the three sources are found, the
    flux column has one entry per band, and ra/dec are the WCS of x/y: otherwise bands are
    combined wrongly or sky positions disagree with pixel positions."""
    rng = np.random.default_rng(2)
    shape = (72, 80)
    clean = _blobs(shape, TRUTH)
    img = np.stack([clean + rng.normal(0, 0.1, shape), 0.5 * clean + rng.normal(0, 0.3, shape)])
    var = np.stack([np.full(shape, 0.01), np.full(shape, 0.09)])
    valid = np.ones((2, *shape), bool)
    valid[:, :, 70:] = False
    img[:, :, 70:] = np.nan  # masked pixels may hold anything
    wcs = make_wcs(*shape)
    det = detect(img, var, valid, wcs=wcs)
    assert len(det) == 3
    assert det.table["flux"].shape == (3, 2)
    for x, y, _, f in TRUTH:
        k = int(np.argmin(np.hypot(det.table["x"] - x, det.table["y"] - y)))
        assert np.hypot(det.table["x"][k] - x, det.table["y"][k] - y) < 0.5
        assert abs(det.table["flux"][k, 1] - 0.5 * f) < 0.15 * f
    ra, dec = wcs.pixel_to_world_values(det.table["x"], det.table["y"])
    np.testing.assert_allclose(det.table["ra"], ra, rtol=0, atol=1e-10)
    np.testing.assert_allclose(det.table["dec"], dec, rtol=0, atol=1e-10)


def test_detect_pure_noise_finds_nothing_and_keeps_the_columns():
    """Pure noise at the default 5-sigma threshold: no source, an empty table with the same
    columns: otherwise the threshold is not in units of the measured noise."""
    rng = np.random.default_rng(3)
    det = detect(rng.normal(0, 1.0, (200, 200)), np.ones((200, 200)))
    assert len(det) == 0 and "kron_semimajor" in det.table.colnames
    assert int(det.segmentation.max()) == 0


def test_detect_refuses_nonfinite_valid_pixels():
    """A NaN at a pixel marked valid is an InputError naming the image: otherwise NaNs
    propagate into the detection image."""
    img = np.zeros((20, 20))
    img[3, 4] = np.nan
    with pytest.raises(InputError, match="scene.fits: non-finite"):
        detect(img, np.ones((20, 20)), name="scene.fits")


# -- catalogues ----------------------------------------------------------------------------


def _full_catalog() -> Table:
    shape = (60, 70)
    t = Table()
    t["id"] = np.array([3, 1, 8], np.int64)
    t["x"] = [10.25, 33.5, 60.0]
    t["y"] = [5.5, 40.0, 12.75]
    t["kind"] = ["galaxy", "STAR", "galaxy"]
    t["flux"] = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    t["flux"].unit = "nJy"
    t["bbox_xmin"] = np.array([7, 30, 55], np.int32)
    t["bbox_xmin"].unit = "pix"
    t["note"] = ["a", "bb", "ccc"]
    return normalize_catalog(t, "in-memory", shape=shape, wcs=make_wcs(*shape))


def _assert_same_table(got: Table, ref: Table) -> None:
    assert got.colnames == ref.colnames
    for c in ref.colnames:
        assert got[c].unit == ref[c].unit, c
        assert got[c].dtype.kind == ref[c].dtype.kind, c
        assert got[c].shape == ref[c].shape, c
        if ref[c].dtype.kind == "f":
            np.testing.assert_array_equal(np.asarray(got[c]), np.asarray(ref[c]))
        else:
            assert list(np.asarray(got[c]).ravel()) == list(np.asarray(ref[c]).ravel()), c


def test_catalog_normalised_columns():
    """Ids kept, kinds lower-cased, ra/dec added from the WCS in degrees, other columns
    kept: otherwise a user's catalogue loses information or gets a wrong kind."""
    t = _full_catalog()
    assert t.colnames[:6] == ["id", "x", "y", "ra", "dec", "kind"]
    assert list(t["kind"]) == ["galaxy", "star", "galaxy"]
    assert str(t["ra"].unit) == "deg" and str(t["x"].unit) == "pix"
    assert {"flux", "bbox_xmin", "note"} <= set(t.colnames)


def test_catalog_round_trip_ecsv(tmp_path):
    """ECSV written by write_catalog reads back with every column, unit and value: otherwise
    output catalogues cannot be fed back as --catalog."""
    ref = _full_catalog()
    path = write_catalog(ref, tmp_path / "scene.catalog.ecsv")
    got = read_catalog(path, shape=(60, 70), wcs=make_wcs(60, 70))
    _assert_same_table(got, ref)


def test_catalog_round_trip_fits_table(tmp_path):
    """The CATALOG BinTableHDU placed after an image HDU reads back with every column and
    unit: otherwise the catalogue stored in the output FITS is unusable."""
    ref = _full_catalog()
    path = tmp_path / "scene.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((60, 70))), catalog_hdu(ref)]).writeto(path)
    got = read_catalog(path, shape=(60, 70))
    _assert_same_table(got, ref)


def test_write_catalog_refuses_to_overwrite(tmp_path):
    """An existing catalogue is not replaced without overwrite=True."""
    ref = _full_catalog()
    path = write_catalog(ref, tmp_path / "c.ecsv")
    before = path.read_bytes()
    with pytest.raises(GalprismError, match="exists"):
        write_catalog(ref[:1], path)
    assert path.read_bytes() == before
    write_catalog(ref[:1], path, overwrite=True)
    assert len(read_catalog(path, shape=(60, 70))) == 1


def test_catalog_path_sits_beside_the_fits():
    """out.fits -> out.catalog.ecsv in the same folder."""
    assert catalog_path_for("/a/b/out.fits.gz").as_posix() == "/a/b/out.catalog.ecsv"


def test_catalog_aliases_and_sky_positions(tmp_path):
    """xcentroid/ycentroid are read as x/y; ra/dec (degrees, or radians with a unit) are
    converted with the WCS: otherwise common catalogue formats are refused or misplaced."""
    wcs = make_wcs(60, 70)
    t = Table({"xcentroid": [10.0, 20.5], "ycentroid": [30.0, 4.25]})
    t.write(tmp_path / "a.ecsv")
    got = read_catalog(tmp_path / "a.ecsv", shape=(60, 70))
    np.testing.assert_array_equal(got["x"], [10.0, 20.5])
    assert list(got["id"]) == [1, 2] and list(got["kind"]) == ["galaxy", "galaxy"]
    ra, dec = wcs.pixel_to_world_values([12.3, 50.0], [40.1, 7.7])
    sky = Table({"RA": np.deg2rad(ra), "Dec": np.deg2rad(dec)})
    sky["RA"].unit = sky["Dec"].unit = "rad"
    sky.write(tmp_path / "b.fits")
    got = read_catalog(tmp_path / "b.fits", shape=(60, 70), wcs=wcs)
    np.testing.assert_allclose(got["x"], [12.3, 50.0], atol=1e-6)
    np.testing.assert_allclose(got["y"], [40.1, 7.7], atol=1e-6)
    np.testing.assert_allclose(got["ra"], ra, atol=1e-12)


def _write(path, table: Table) -> None:
    table.write(path, overwrite=True)


BAD = {
    "no_position_columns": (Table({"id": [1], "flux": [2.0]}), "no position columns"),
    "x_without_y": (Table({"x": [1.0]}), "no 'y' column"),
    "positions_twice": (
        Table({"x": [1.0], "y": [1.0], "xcentroid": [1.0], "ycentroid": [1.0]}),
        "positions given twice",
    ),
    "outside": (Table({"id": [4, 5], "x": [3.0, 70.2], "y": [2.0, 5.0]}), "id 5 .* outside"),
    "negative_outside": (Table({"x": [-0.6], "y": [2.0]}), "outside"),
    "nan": (Table({"id": [1, 2], "x": [3.0, np.nan], "y": [2.0, 1.0]}), "id 2 has a NaN, inf"),
    "duplicate_ids": (Table({"id": [1, 2, 1], "x": [1.0] * 3, "y": [1.0] * 3}), "duplicate .* 1"),
    "radec_without_wcs": (Table({"ra": [150.1], "dec": [2.2]}), "no celestial WCS"),
    "unknown_kind": (Table({"x": [1.0], "y": [1.0], "kind": ["quasar"]}), "kind 'quasar'"),
    "text_positions": (Table({"x": ["a"], "y": ["b"]}), "one number per source"),
    "empty": (Table({"x": np.zeros(0), "y": np.zeros(0)}), "no sources"),
}


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_catalogue_is_a_one_line_input_error_naming_the_file(tmp_path, case, suffix):
    """Each bad catalogue is an InputError of one line that names the file and the problem,
    and the file is left as it was: otherwise users get tracebacks or silent drops."""
    table, pattern = BAD[case]
    path = tmp_path / f"cat_{case}{suffix}"
    _write(path, table)
    before = path.read_bytes()
    with pytest.raises(InputError, match=pattern) as err:
        read_catalog(path, shape=(50, 60))
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert path.read_bytes() == before


def test_pixel_and_sky_positions_that_disagree_are_refused(tmp_path):
    """x/y 3 px away from where ra/dec fall in the WCS is an InputError naming the file and
    source: otherwise one of two contradictory positions is used silently."""
    wcs = make_wcs(50, 60)
    ra, dec = wcs.pixel_to_world_values([10.0], [20.0])
    path = tmp_path / "both.ecsv"
    Table({"id": [7], "x": [13.0], "y": [20.0], "ra": ra, "dec": dec}).write(path)
    with pytest.raises(InputError, match=r"both.ecsv: source id 7: x/y and ra/dec are 3 px"):
        read_catalog(path, shape=(50, 60), wcs=wcs)


@pytest.mark.parametrize(
    "name, content",
    [("garbage.ecsv", b"this is not a table\n"), ("garbage.fits", b"SIMPLE  = nonsense")],
)
def test_unreadable_catalogue_is_an_input_error(tmp_path, name, content):
    """A file that is not a table, or that does not exist, is an InputError naming it."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=name):
        read_catalog(path, shape=(10, 10))
    with pytest.raises(InputError, match="missing.ecsv: catalogue file not found"):
        read_catalog(tmp_path / "missing.ecsv", shape=(10, 10))


def test_fits_without_table_is_an_input_error(tmp_path):
    """A FITS image given as a catalogue is refused, naming the file."""
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((3, 3))).writeto(path)
    with pytest.raises(InputError, match="image.fits: FITS file has no table HDU"):
        read_catalog(path, shape=(10, 10))


# -- star or galaxy ------------------------------------------------------------------------


@pytest.mark.parametrize("sigma, expected", [(0.0, "star"), (1.5, "galaxy"), (3.0, "galaxy")])
def test_star_or_galaxy_on_clear_cases(sigma, expected):
    """A bright PSF is a star and a PSF convolved with a Gaussian of 1.5 or 3 px a galaxy,
    with positions off by 0.1 px: otherwise the extended model is not compared fairly."""
    rng = np.random.default_rng(int(sigma * 10))
    psf = gaussian_psf(25, 1.5)
    template = psf[None] if sigma == 0 else _gaussian_blur(psf[None], sigma)
    for _ in range(3):
        x, y = rng.uniform(28, 32, 2)
        placed = PlaceStamp((x, y), (1, 25, 25), (1, 60, 60))(torch.as_tensor(template)[None])
        img = placed[0].numpy() * 300 + rng.normal(0, 0.1, (1, 60, 60))
        fit = star_or_galaxy(img, np.full(img.shape, 0.01), psf, (x + 0.1, y - 0.1))
        assert fit.kind == expected, fit
        if expected == "star":
            assert abs(float(fit.flux_star[0]) - 300) < 5


def test_a_very_bright_star_off_the_shift_grid_is_a_star_at_its_fitted_position():
    """A star at a signal-to-noise of thousands, 0.13 px from the nearest shift of the
    grid: without the position fit its residual is tens of sigma per pixel and a slightly
    extended model wins (it was called a galaxy); the fitted position must be within
    0.01 px of the truth."""
    rng = np.random.default_rng(5)
    psf = gaussian_psf(25, 1.5)
    x, y = 30.38, 29.63
    placed = PlaceStamp((x, y), (1, 25, 25), (1, 60, 60))(torch.as_tensor(psf[None])[None])
    img = placed[0].numpy() * 3e4 + rng.normal(0, 1.0, (1, 60, 60))
    fit = star_or_galaxy(img, np.ones(img.shape), psf, (30.0, 30.0))
    assert fit.kind == "star", fit
    assert np.hypot(fit.position[0] - x, fit.position[1] - y) < 0.01, fit.position
    assert abs(float(fit.flux_star[0]) / 3e4 - 1.0) < 1e-3


def test_a_faint_star_on_a_galaxy_s_gradient_stays_a_star():
    """A faint star (signal-to-noise about 20) on the wing of a galaxy 50 times brighter
    15 px away (its light a curved gradient across the star's window, the galaxy's half
    masked as the scene does for a neighbour's pixels): the local background terms take
    the gradient, so the star is a star, at its position within 0.5 px."""
    rng = np.random.default_rng(6)
    psf = gaussian_psf(25, 1.5)
    wide = _gaussian_blur(psf[None], 6.0)
    frame = (1, 80, 80)
    star = PlaceStamp((40.2, 40.1), (1, 25, 25), frame)(torch.as_tensor(psf[None])[None])
    gal = PlaceStamp((55.0, 40.0), (1, 25, 25), frame)(torch.as_tensor(wide)[None])
    img = star[0].numpy() * 100 + gal[0].numpy() * 5000 + rng.normal(0, 1.0, frame)
    yy, xx = np.mgrid[:80, :80]
    valid = (np.hypot(xx - 40.2, yy - 40.1) < np.hypot(xx - 55.0, yy - 40.0))[None]
    fit = star_or_galaxy(img, np.ones(frame), psf, (40.0, 40.0), valid=valid)
    assert fit.kind == "star", fit
    assert np.hypot(fit.position[0] - 40.2, fit.position[1] - 40.1) < 0.5, fit.position


# -- real data -----------------------------------------------------------------------------


def test_detect_on_the_real_hsc_blend_finds_the_catalogued_sources(shared_data):
    """On the real five-band HSC blend (bad-pixel planes BAD, SAT, CR, EDGE, SUSPECT,
    NO_DATA masked) the default detection finds the five brightest catalogued sources
    within 1 px and groups the central four into one blend: otherwise the band coadd, the
    source-free background and noise estimate, or the deblending fails on real data."""
    with np.load(shared_data / "hsc" / "hsc_cosmos_35.npz") as npz:
        img, var, mask = npz["images"], npz["variance"], npz["mask"]
        catalogued = np.array([tuple(r) for r in npz["catalog"]], dtype=np.float64)
    bad_bits = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 7) | (1 << 8)
    valid = ((mask & bad_bits) == 0) & (var > 0)
    det = detect(img, var, valid)
    near = [np.hypot(det.table["x"] - x, det.table["y"] - y).min() for x, y in catalogued]
    # The scarlet catalogue's two faintest entries (22, 23) and (34, 5) are below 5 sigma.
    assert sum(d < 1.0 for d in near) >= 5, near
    ids = [
        int(det.table["id"][np.argmin(np.hypot(det.table["x"] - x, det.table["y"] - y))])
        for x, y in [(14.0, 33.0), (31.0, 36.0), (19.0, 47.0), (37.0, 51.0)]
    ]
    blends = group_blends(det.table, img.shape, (48, 48))
    assert any(set(ids) <= set(b.ids) for b in blends)


def test_catalog_sky_positions_with_a_cube_wcs():
    """A (band, y, x) cube's 3-axis WCS converts ra/dec with its celestial part: otherwise
    catalogues of multi-band images with a spectral axis in the WCS cannot be read."""
    from astropy.wcs import WCS

    w = WCS(naxis=3)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN", "WAVE"]
    w.wcs.crval, w.wcs.cdelt = [150.0, 2.0, 5e-7], [-1e-5, 1e-5, 1e-9]
    w.wcs.crpix = [10.0, 12.0, 1.0]
    got = normalize_catalog(Table({"ra": [150.0], "dec": [2.0]}), "c", shape=(3, 30, 30), wcs=w)
    np.testing.assert_allclose([got["x"][0], got["y"][0]], [9.0, 11.0], atol=1e-6)

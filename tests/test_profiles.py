"""The galaxies' fitted profiles: ownership of pixels and wings beyond the stamp."""

import math

import numpy as np
import pytest

from galprism.errors import ShapeError
from galprism.observation import Observation
from galprism.scene.model import wings
from galprism.scene.profiles import Profiles, fit_profiles, ownership


def _exponential(h, w, x, y, scale, flux):
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    return flux * np.exp(-np.hypot(xx - x, yy - y) / scale) / (2 * math.pi * scale**2)


def _gaussian_psf(size=11, sigma=1.0):
    yy, xx = np.mgrid[:size, :size] - size // 2
    g = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return g / g.sum()


def test_a_large_galaxy_owns_its_wing_beyond_a_compact_neighbour():
    """A split at the bisector would give the large galaxy's wing beyond the compact one
    to the compact one, which then comes out too bright; the profiles' ratio gives each
    galaxy its own center and the far side of the compact one back to the large one."""
    scales = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    fluxes = np.zeros((2, 1, 5))
    fluxes[0, 0, 3] = 1000.0  # large: 4 px scale
    fluxes[1, 0, 1] = 50.0  # compact: 1 px scale
    prof = Profiles(np.array([[30.0, 30.0], [40.0, 30.0]]), scales, fluxes)
    w = ownership(prof, (1, 48, 48)).numpy()
    # Stamp k is centered on galaxy k: stamp pixel (23.5 + dx, 23.5 + dy) is image point
    # (x_k + dx, y_k + dy); row 23/24 straddles y = 30.
    large, compact = w[0, 0], w[1, 0]
    assert large[24, 24] > 0.99 and compact[24, 24] > 0.8  # each owns its center
    assert large[24, 24 + 16] > 0.9  # 6 px beyond the compact one: the large one's
    assert compact[24, 24 + 6] < 0.1  # ... the same point seen from the compact stamp
    assert large[24, 24 + 5] > 0.5  # nearer the compact one than the large one, still its
    np.testing.assert_allclose(large[24, 24 + 10], 1.0 - compact[24, 24], atol=0.05)


def test_profile_fit_recovers_a_large_galaxys_light_beyond_its_stamp():
    """An exponential galaxy of 6 px scale puts about 13 % of its light on a 64 x 64 box
    outside a 32 x 32 stamp: the fitted profiles must give its light on the box within
    3 % and the part outside the stamp within 10 %, or the wing term would model the
    outskirts with the wrong shape and the flux would again fall short."""
    h = w = 64
    truth = _exponential(h, w, 31.6, 32.2, 6.0, 2000.0)
    noise = 0.05
    rng = np.random.default_rng(3)
    img = truth + rng.normal(0.0, noise, (h, w))
    obs = Observation(img[None], np.full((1, h, w), noise**2), _gaussian_psf())
    prof = fit_profiles(obs, np.array([[31.6, 32.2]]), np.zeros((0, 2)), np.array([1.0]))
    yy, xx = np.mgrid[:h, :w]
    fitted = sum(
        _exponential(h, w, 31.6, 32.2, r, f)
        for r, f in zip(prof.scales, prof.fluxes[0, 0], strict=True)
    )
    assert abs(fitted.sum() / truth.sum() - 1.0) < 0.03, (fitted.sum(), truth.sum())
    outside = (np.abs(xx - 31.6) >= 16) | (np.abs(yy - 32.2) >= 16)
    want = truth[outside].sum()
    assert 0.1 < want / truth.sum() < 0.2
    owners, shapes, flux = wings(prof, (1, h, w), (32, 32))
    assert list(owners) == [0]
    assert abs(flux[0] / want - 1.0) < 0.1, (flux[0], want)
    np.testing.assert_allclose(shapes[0].sum(), 1.0)
    assert shapes[0][~outside].max() == 0.0  # nothing inside the stamp


def test_a_compact_galaxy_gets_no_wing_term():
    """A galaxy whose light all falls inside its stamp must get no wing term: a wing there
    would be a free extra component fitting the noise around it."""
    h = w = 48
    truth = _exponential(h, w, 24.0, 24.0, 1.0, 500.0)
    obs = Observation(
        (truth + np.random.default_rng(0).normal(0, 0.05, (h, w)))[None],
        np.full((1, h, w), 0.05**2),
        _gaussian_psf(),
    )
    prof = fit_profiles(obs, np.array([[24.0, 24.0]]), np.zeros((0, 2)), np.array([1.0]))
    owners, _, _ = wings(prof, (1, h, w), (32, 32))
    assert len(owners) == 0


def test_profiles_reject_malformed_fluxes():
    """Negative fluxes or a shape that does not match the galaxies are errors."""
    scales = np.array([0.5, 1.0, 2.0])
    with pytest.raises(ShapeError, match="fluxes"):
        Profiles(np.zeros((2, 2)), scales, np.zeros((1, 1, 3)))
    with pytest.raises(ShapeError, match=">= 0"):
        Profiles(np.zeros((1, 2)), scales, -np.ones((1, 1, 3)))

"""Flux intervals of the scene catalogue (galprism.scene.run.flux_bound)."""

from __future__ import annotations

import numpy as np

from galprism.scene.run import flux_bound


def test_intervals_from_eight_draws_cover_one_more_draw_at_their_level():
    """A calibrated posterior's truth is one more draw of it. With 8 draws per source the
    68 % and 95 % intervals must cover a ninth draw 68 % and 95 % of the time (within 1
    point over 100,000 sources); the draws' own quantiles, which cover it 53 % and 75 %,
    would fail this, as would a bound that ignores the spread's own uncertainty."""
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(100_000, 9))
    draws, truth = x[:, :8, None], x[:, 8]
    for lo, hi, level in ((0.16, 0.84, 0.68), (0.025, 0.975, 0.95)):
        a, b = flux_bound(draws, lo)[:, 0], flux_bound(draws, hi)[:, 0]
        assert abs(float(((a <= truth) & (truth <= b)).mean()) - level) < 0.01
        q = np.quantile(draws[..., 0], [lo, hi], axis=1)
        assert float(((q[0] <= truth) & (truth <= q[1])).mean()) < level - 0.1


def test_one_draw_gives_the_draw_and_bounds_are_per_band():
    """With one draw the bounds are the draw; with several bands each band's bound uses
        its own draws (the shapes (N, S, C) -> (N, C)): a band whose draws are 100 times
    another's has a bound 100 times as large."""
    one = np.array([[[5.0, 7.0]]])
    assert np.array_equal(flux_bound(one, 0.16), np.array([[5.0, 7.0]]))
    draws = np.stack([np.linspace(0, 1, 8), np.linspace(0, 100, 8)], axis=-1)[None]
    lo = flux_bound(draws, 0.16)[0]
    assert np.isclose(lo[1], 100.0 * lo[0]) and lo[0] < 0.5

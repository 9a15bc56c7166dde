"""The random 1-D manifold problem follows docs/method.md section 6 and the reference definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from paper.manifold import (
    MAX_SPREAD,
    ManifoldConfig,
    contrastive_problem,
    make_manifold_problem,
    mixed_problem,
)
from scipy import stats

from galprism.errors import ConfigError
from galprism.operators import MatrixOperator, SourceSum, Zero

N_OBS = 4096


@pytest.fixture(scope="module")
def three() -> object:
    return contrastive_problem(3, N_OBS, seed=7)


@pytest.fixture(scope="module")
def mixed() -> object:
    return mixed_problem(0.1, 2, N_OBS, seed=7)


def test_shapes_and_operator_types(three):
    for k, view in enumerate(three.views, start=1):
        assert view.name == f"view{k}"
        assert view.x.shape == (N_OBS, 3, 5), "truth must be (N, K, feat_dim)"
        assert view.y.shape == (N_OBS, 3), "observations must be (N, obs_dim)"
        assert view.noise_var.shape == (N_OBS, 3)
        assert torch.allclose(view.noise_var, torch.tensor(1e-4)), (
            "noise variance must be sigma^2 = 1e-4"
        )
        assert isinstance(view.operator, SourceSum) and view.operator.n_sources == 3
        assert view.operator.batch_size == N_OBS, "operators must hold one matrix per observation"


def test_view_k_contains_sources_one_to_k(three):
    for k, view in enumerate(three.views, start=1):
        assert view.sources == tuple(range(k)), f"view {k} must hold sources 1..{k}"
        for b, op in enumerate(view.operator.ops):
            if b < k:
                assert isinstance(op, MatrixOperator), (
                    f"source {b + 1} is in view {k} and needs its matrix"
                )
                assert torch.isfinite(view.x[:, b]).all()
            else:
                assert isinstance(op, Zero), (
                    f"source {b + 1} is absent from view {k} and must map to zero"
                )
                assert torch.isnan(view.x[:, b]).all(), (
                    "truth of an absent source must be NaN, not data"
                )


def test_features_lie_in_and_span_minus_two_two(three):
    """Every feature is rescaled to [-2, 2]; a large draw must reach both ends (the map is the
    curve's range)."""
    for b in range(3):
        x = three.sample_source(b, 65536, seed=1, dtype=torch.float64)
        assert x.min() >= -2.0 and x.max() <= 2.0, "fresh samples left [-2, 2]"
        assert torch.all(x.min(0).values < -1.99) and torch.all(x.max(0).values > 1.99), (
            "the rescaling constants are not the curve's range: a large draw does not span [-2, 2]"
        )
    for view in three.views:
        present = view.x[:, list(view.sources)]
        assert present.min() >= -2.0 and present.max() <= 2.0


def test_curve_matches_the_formula(three):
    """x_j = sum_f a/f^alpha sin(2 pi (f b z + c)), rescaled with the stored constants, recomputed
    by loops."""
    for curve, alpha in zip(three.curves, (3.0, 4.0, 5.0), strict=True):
        assert curve.alpha == alpha
        assert curve.cutoff == math.ceil(1e-3 ** (-1 / alpha)), (
            "frequency cutoff is ceil(eps^(-1/alpha))"
        )
        for coef in (curve.a, curve.b, curve.c):
            assert coef.shape == (5, curve.cutoff) and coef.min() >= 0 and coef.max() < 1
        z = np.array([0.0, 0.123, 0.5, 0.987])
        expected = np.zeros((len(z), 5))
        for i, zi in enumerate(z):
            for j in range(5):
                raw = sum(
                    curve.a[j, f - 1]
                    / f**alpha
                    * math.sin(2 * math.pi * (f * curve.b[j, f - 1] * zi + curve.c[j, f - 1]))
                    for f in range(1, curve.cutoff + 1)
                )
                expected[i, j] = (
                    MAX_SPREAD * (raw - curve.lo[j]) / (curve.hi[j] - curve.lo[j]) - 2.0
                )
        np.testing.assert_allclose(curve(z), np.clip(expected, -2, 2), atol=1e-12)


def test_curve_distance_is_zero_on_the_curve_and_the_offset_off_it(three):
    """Points on the curve are at distance ~0 at their own z; a point moved along a normal
    by d is at distance d. If either failed, the thickness figures of docs/em.md would be
    measuring the grid, not the prior."""
    curve = three.curves[0]
    z = np.array([0.1, 0.37, 0.8])
    on = curve(z)
    dist, z_found = curve.distance(torch.from_numpy(on).float())
    assert dist.max() < 1e-3, "points on the curve must be (nearly) at distance 0"
    assert np.abs(z_found - z).max() < 1e-3, "the nearest curve position must be the point's own z"
    # A normal direction at z: orthogonal to the tangent, from a finite difference.
    h = 1e-6
    tangent = (curve(z + h) - curve(z - h)) / (2 * h)
    rng = np.random.default_rng(0)
    offset = 0.02
    for point, t in zip(on, tangent, strict=True):
        v = rng.normal(size=5)
        v -= v @ t / (t @ t) * t
        v /= np.linalg.norm(v)
        d, _ = curve.distance(point[None] + offset * v)
        # The curve bends, so a far part could be closer; for a small offset it is not.
        assert abs(d[0] - offset) < 2e-3, (
            f"a point {offset} off the curve along a normal reads {d[0]:.4f}"
        )
    with pytest.raises(ConfigError, match="shape"):
        curve.distance(np.zeros((3, 4)))


def test_matrices_have_unit_rows_and_are_shared_by_the_sources_of_an_observation(three):
    view = three.views[2]
    norms = torch.linalg.vector_norm(view.matrices, dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), "rows of A must have unit norm"
    assert torch.equal(view.matrices[:, 0], view.matrices[:, 1]), (
        "contrastive sources share one A per observation"
    )
    assert torch.equal(view.matrices[:, 0], view.matrices[:, 2])
    assert not torch.allclose(view.matrices[0, 0], view.matrices[1, 0]), (
        "each observation needs its own A"
    )


def test_operator_reproduces_y_up_to_noise(three):
    for view in three.views:
        x = torch.nan_to_num(view.x.double(), nan=0.0)
        resid = view.y.double() - view.operator.apply(x)
        chi2 = float((resid**2 / view.noise_var.double()).mean())
        assert abs(chi2 - 1) < 0.05, (
            f"{view.name}: y - A x is not N(0, 0.01^2) noise (chi2/dof {chi2:.3f})"
        )
        assert abs(float(resid.mean())) < 5 * 0.01 / math.sqrt(resid.numel())


def test_views_are_independent(three):
    """The reference reuses draws across views; here source positions, matrices and noise must
    differ."""
    v1, v2, v3 = three.views
    a, b = v1.x[:, 0].double(), v2.x[:, 0].double()
    assert not torch.allclose(a, b), "view 2 reuses view 1's draws of source 1"
    corr = np.corrcoef(a[:, 0].numpy(), b[:, 0].numpy())[0, 1]
    assert abs(corr) < 5 / math.sqrt(N_OBS), (
        f"source 1 draws of views 1 and 2 are correlated ({corr:.3f})"
    )
    assert not torch.allclose(v1.matrices[:, 0], v3.matrices[:, 0]), "views share matrices"
    n1 = v1.y.double() - v1.operator.apply(torch.nan_to_num(v1.x.double()))
    n2 = v2.y.double() - v2.operator.apply(torch.nan_to_num(v2.x.double()))
    corr = np.corrcoef(n1[:, 0].numpy(), n2[:, 0].numpy())[0, 1]
    assert abs(corr) < 5 / math.sqrt(N_OBS), f"views share their noise (correlation {corr:.3f})"


def test_reproducible_from_seed_and_seed_matters(three):
    again = contrastive_problem(3, N_OBS, seed=7)
    for a, b in zip(three.views, again.views, strict=True):
        assert torch.equal(a.y, b.y) and torch.equal(a.matrices, b.matrices)
        assert torch.equal(torch.nan_to_num(a.x), torch.nan_to_num(b.x))
    other = contrastive_problem(3, N_OBS, seed=8)
    assert not torch.allclose(three.views[0].y, other.views[0].y), (
        "a different seed must give different data"
    )
    assert torch.equal(three.sample_source(1, 100, seed=3), again.sample_source(1, 100, seed=3))
    assert not torch.equal(three.sample_source(1, 100, seed=3), three.sample_source(1, 100, seed=4))


def test_source_curves_do_not_depend_on_the_number_of_sources(three):
    two = contrastive_problem(2, 16, seed=7)
    for c2, c3 in zip(two.curves, three.curves[:2], strict=True):
        np.testing.assert_array_equal(c2.a, c3.a, err_msg="source curve changed with n_sources")


def test_fresh_samples_follow_the_view_truth_distribution(three):
    """sample_source must draw from the same curve and rescaling as the views (two-sample KS per
    feature)."""
    fresh = three.sample_source(0, N_OBS, seed=11, dtype=torch.float64).numpy()
    data = three.views[0].x[:, 0].double().numpy()
    for j in range(5):
        p = stats.ks_2samp(fresh[:, j], data[:, j]).pvalue
        assert p > 1e-3, f"feature {j}: fresh samples and view truth differ (KS p = {p:.2g})"
    other = three.sample_source(1, N_OBS, seed=11, dtype=torch.float64).numpy()
    assert min(stats.ks_2samp(other[:, j], data[:, j]).pvalue for j in range(5)) < 1e-6, (
        "the KS check cannot tell two different sources apart"
    )


def test_mixed_variant_weights_and_matrices(mixed):
    """View v: own source at weight 1, the other at f_mix, same A (reference
    train_mixing_matrix.get_dataset)."""
    v1, v2 = mixed.views
    assert v1.weights == (1.0, 0.1) and v2.weights == (0.1, 1.0)
    assert v1.sources == (0, 1) and v2.sources == (0, 1)
    torch.testing.assert_close(v1.matrices[:, 1], 0.1 * v1.matrices[:, 0])
    torch.testing.assert_close(v2.matrices[:, 0], 0.1 * v2.matrices[:, 1])
    resid = v1.y.double() - v1.operator.apply(v1.x.double())
    assert abs(float((resid**2).mean()) / 1e-4 - 1) < 0.05


def test_mixed_variant_options():
    varies = mixed_problem(1.0, 2, 64, seed=1, source_mix_varies=True)
    m = varies.views[0].matrices
    assert not torch.allclose(m[:, 0], m[:, 1]), "source_mix_varies must give each source its own A"
    clean = mixed_problem(0.0, 2, 64, seed=1)
    assert clean.views[0].sources == (0,) and isinstance(clean.views[0].operator.ops[1], Zero), (
        "f_mix = 0 leaves each view with its own source only"
    )


def test_config_is_recorded_and_bad_settings_are_refused():
    cfg = ManifoldConfig(n_sources=2, n_obs=8, seed=3)
    d = make_manifold_problem(cfg).config.to_dict()
    assert (
        d["seed"] == 3
        and d["n_obs"] == 8
        and d["noise_sigma"] == 0.01
        and d["alphas"] == [3.0, 4.0, 5.0]
    )
    with pytest.raises(ConfigError, match="n_sources"):
        ManifoldConfig(n_sources=4)
    with pytest.raises(ConfigError, match="f_mix"):
        ManifoldConfig(variant="mixed", f_mix=1.5)
    with pytest.raises(ConfigError, match="mixed variant"):
        ManifoldConfig(variant="contrastive", f_mix=0.1)
    with pytest.raises(ConfigError, match="source index"):
        make_manifold_problem(cfg).sample_source(2, 10)

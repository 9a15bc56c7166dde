"""Adversarial SVD: eigenproblem, unseen-basis fit, separation, errors, prior folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from galprism.asvd import (
    SecondMoment,
    adversarial_basis,
    adversarial_objective,
    fit_asvd,
    fit_unseen_basis,
    load_asvd,
    moment_mismatch,
    separate_with_bases,
    top_eigenvectors,
    wiener_split,
)
from galprism.errors import (
    CheckpointError,
    ConfigError,
    GalprismError,
    InputError,
    OutputExistsError,
    ShapeError,
)
from galprism.operators import Composition, Convolve, Downsample, Mask, SourceSum

torch.set_num_threads(1)


def _structured(n: int, p: int, rank: int, seed: int, noise: float = 0.05) -> torch.Tensor:
    """Rows with a decaying low-rank structure plus isotropic noise (float64)."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(p, rank, generator=gen, dtype=torch.float64)).Q
    scales = 2.0 ** -torch.arange(rank, dtype=torch.float64) * 3
    coeffs = torch.randn(n, rank, generator=gen, dtype=torch.float64) * scales
    return coeffs @ basis.T + noise * torch.randn(n, p, generator=gen, dtype=torch.float64)


def _random_orthonormal(p: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(p, d, generator=gen, dtype=torch.float64)).Q


def _subspace_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """||A^T B||_F^2 / d: 1 when the column spaces coincide, < 1 otherwise."""
    return float(torch.linalg.matrix_norm(a.T.double() @ b.double()) ** 2) / a.shape[1]


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    clean = _structured(400, 40, 8, seed=1)
    other = _structured(400, 40, 4, seed=2)
    mixed = _structured(400, 40, 8, seed=3) + other
    return clean, mixed


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.0])
def test_adversarial_basis_beats_random_bases_on_its_objective(pair, tau):
    """The eigen-solution must minimise the ASVD objective: if a random orthonormal basis
    did better, the eigenproblem would be set up or solved wrongly."""
    clean, mixed = pair
    cu, cv = SecondMoment(clean), SecondMoment(mixed)
    w = adversarial_basis(cu, cv, 6, tau).vectors
    best = adversarial_objective(w, cu, cv, tau)
    gen = torch.Generator().manual_seed(0)
    random_values = [
        adversarial_objective(_random_orthonormal(40, 6, gen), cu, cv, tau) for _ in range(200)
    ]
    assert best < min(random_values) - 1e-3, (
        "a random orthonormal basis matched the adversarial basis"
    )
    # The minimum is known in closed form: tr C_U - tau tr C_V - (sum of the top-6 eigenvalues).
    eig = torch.linalg.eigvalsh(cu.matrix - tau * cv.matrix).flip(0)[:6].sum()
    expected = cu.trace() - tau * cv.trace() - float(eig)
    assert best == pytest.approx(expected, rel=1e-9, abs=1e-9), (
        "objective is not at its closed-form minimum"
    )


@pytest.mark.parametrize("solver", ["dense", "krylov"])
def test_tau_zero_is_the_svd_subspace(pair, solver):
    """At tau = 0 the basis must span the top left singular vectors of the clean data
    (Eckart-Young); a different subspace means the moment or the solver is wrong."""
    clean, mixed = pair
    w = adversarial_basis(SecondMoment(clean), SecondMoment(mixed), 5, 0.0, solver=solver).vectors
    svd_basis = torch.linalg.svd(clean.T, full_matrices=False).U[:, :5]
    assert _subspace_overlap(w, svd_basis) == pytest.approx(1.0, abs=1e-8), (
        "tau=0 basis differs from the SVD basis"
    )
    assert torch.allclose(w.T @ w, torch.eye(5, dtype=w.dtype), atol=1e-10), (
        "basis is not orthonormal"
    )


def test_krylov_and_matrix_free_agree_with_dense():
    """The block Krylov solver (formed and matrix-free moments) must find the same
    eigenpairs as a dense eigh; otherwise large cutouts get a different model."""
    clean = _structured(600, 300, 30, seed=4)
    mixed = _structured(600, 300, 30, seed=5)
    formed_u, formed_v = SecondMoment(clean), SecondMoment(mixed)
    free_u, free_v = SecondMoment(clean, form=False), SecondMoment(mixed, form=False)
    dense = adversarial_basis(formed_u, formed_v, 12, 0.4, solver="dense")
    krylov = adversarial_basis(formed_u, formed_v, 12, 0.4, solver="krylov", tol=1e-8)
    free = adversarial_basis(free_u, free_v, 12, 0.4, solver="krylov", tol=1e-8)
    assert free.solver == "block-krylov (matrix-free)" and free_u.matrix is None
    for res in (krylov, free):
        assert torch.allclose(res.values, dense.values, rtol=1e-5, atol=1e-6), (
            "eigenvalues differ from dense eigh"
        )
        assert _subspace_overlap(res.vectors, dense.vectors) == pytest.approx(1.0, abs=1e-5)


def test_top_eigenvectors_handles_negative_spectrum():
    """Largest *algebraic* eigenvalues are wanted: an indefinite matrix with large negative
    eigenvalues must not make the solver return those."""
    gen = torch.Generator().manual_seed(6)
    q = _random_orthonormal(200, 200, gen)
    values = torch.cat([torch.tensor([5.0, 4.0, 3.0]), -torch.linspace(10, 20, 197)]).double()
    m = (q * values) @ q.T
    res = top_eigenvectors(lambda b: m @ b, 200, 3, solver="krylov", tol=1e-9, max_blocks=40)
    assert torch.allclose(res.values, torch.tensor([5.0, 4.0, 3.0], dtype=torch.float64), atol=1e-6)


def test_unseen_alternation_decreases_to_the_closed_form_optimum(pair):
    """Alternating minimisation from a random start must never increase its objective and
    must reach the closed-form minimum; a plateau above it means a wrong update."""
    clean, mixed = pair
    cu, cv = SecondMoment(clean), SecondMoment(mixed)
    w0 = adversarial_basis(cu, cv, 6, 0.3).vectors
    fit = fit_unseen_basis(
        w0, cv, 4, init="random", tol=1e-12, max_iter=2000, compute_optimum=True, seed=3
    )
    obj = np.array(fit.objective)
    assert fit.iterations > 1, "random start should need several iterations"
    assert np.all(np.diff(obj) <= 1e-9 * obj[:-1]), "objective increased during the alternation"
    assert obj[-1] == pytest.approx(fit.optimum, rel=1e-6), "did not reach the closed-form optimum"
    assert torch.allclose(fit.basis.T @ fit.basis, torch.eye(4, dtype=torch.float64), atol=1e-10)
    deflated = fit_unseen_basis(w0, cv, 4, init="deflated", compute_optimum=True)
    assert deflated.objective[0] == pytest.approx(deflated.optimum, rel=1e-9)
    assert deflated.iterations <= 1, "the closed-form start should already be stationary"


def _nonneg_problem(shape: tuple[int, ...], d0: int, d1: int, n: int, seed: int):
    """Bases spanning non-negative atoms, and sources = non-negative combinations of them."""
    gen = torch.Generator().manual_seed(seed)
    p = int(np.prod(shape))
    atoms = [torch.rand(p, d, generator=gen, dtype=torch.float64) * 0.5 for d in (d0, d1)]
    bases = [torch.linalg.qr(a).Q for a in atoms]
    coeffs = [torch.rand(n, d, generator=gen, dtype=torch.float64) / d for d in (d0, d1)]
    sources = torch.stack(
        [c @ a.T for c, a in zip(coeffs, atoms, strict=True)], dim=1
    )  # in [0, 0.5]
    return bases, sources.reshape(n, 2, *shape)


@pytest.mark.parametrize("split", ["wiener", "components"])
def test_separation_is_exact_when_sources_lie_in_their_bases(split):
    """Noise-free mixtures of sources inside the two spans must be separated exactly;
    any error means the least squares or the split is wrong."""
    shape = (1, 8, 8)
    bases, truth = _nonneg_problem(shape, 5, 3, 50, seed=7)
    mixtures = truth.sum(dim=1)
    est = separate_with_bases(mixtures, bases, shape, split=split)
    assert est.shape == truth.shape
    assert torch.allclose(est, truth, atol=1e-9), (
        f"max error {float((est - truth).abs().max()):.3g}"
    )


def test_separation_is_exact_through_operators():
    """Through PSF + downsampling (shared) and a per-observation mask (batched), with
    per-pixel noise variances and NaN in masked pixels, noise-free data must still give
    the exact sources: the operator must enter the least squares correctly."""
    shape = (1, 16, 16)
    n = 12
    bases, truth = _nonneg_problem(shape, 6, 4, n, seed=8)
    psf = torch.tensor([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]])
    shared = Composition([Downsample(2, shape), Convolve(psf, shape)])
    y = shared.apply(truth.sum(dim=1))
    est = separate_with_bases(y, bases, shape, operator=shared, projection="nonneg")
    assert torch.allclose(est, truth, atol=1e-8), "shared operator: separation is not exact"

    gen = torch.Generator().manual_seed(9)
    valid = torch.rand(n, *shape, generator=gen) > 0.3
    per_source = SourceSum([Mask(valid, shape), Mask(valid, shape)])
    y = per_source.apply(truth)
    y[~valid] = float("nan")  # masked pixels may hold anything
    var = torch.full((n, *shape), 0.01, dtype=torch.float64)
    est = separate_with_bases(y, bases, shape, operator=per_source, noise_var=var)
    assert torch.allclose(est, truth, atol=1e-8), "batched mask operator: separation is not exact"

    # Same through the no-operator path with a mask argument.
    est = separate_with_bases(y, bases, shape, mask=valid)
    assert torch.allclose(est, truth, atol=1e-8), "mask argument: separation is not exact"


def test_wiener_split_conserves_the_mixture_and_shares_zeros_equally():
    """The split must give sources that add up to the mixture, and split a pixel equally
    where both projected components vanish (instead of producing NaN)."""
    mixture = torch.tensor([[1.0, 2.0, 0.6]])
    comps = torch.tensor([[[0.2, -1.0, 0.3], [0.6, -2.0, 0.0]]])
    out = wiener_split(mixture, comps, "unit")
    assert torch.allclose(out.sum(dim=1), mixture)
    assert torch.allclose(out[0, :, 0], torch.tensor([0.25, 0.75]))
    assert torch.allclose(out[0, :, 1], torch.tensor([1.0, 1.0])), (
        "zero components must share equally"
    )
    with pytest.raises(ConfigError, match="projection"):
        wiener_split(mixture, comps, "none")


def test_moment_mismatch_known_answers():
    """Identical samples score 0; samples scaled by 2 have 4x the second moment: score 3.
    Both code paths (P x P and Gram identity) must agree."""
    gen = torch.Generator().manual_seed(10)
    a = torch.randn(50, 20, generator=gen, dtype=torch.float64)
    assert moment_mismatch(a, a) == pytest.approx(0.0, abs=1e-12)
    assert moment_mismatch(2 * a, a) == pytest.approx(3.0, rel=1e-12)
    wide = torch.randn(10, 200, generator=gen, dtype=torch.float64)
    other = torch.randn(12, 200, generator=gen, dtype=torch.float64)
    direct = torch.linalg.matrix_norm(
        wide.T @ wide / 10 - other.T @ other / 12
    ) / torch.linalg.matrix_norm(other.T @ other / 12)
    assert moment_mismatch(wide, other) == pytest.approx(float(direct), rel=1e-10)


def _images(n: int, seed: int) -> torch.Tensor:
    return (_structured(n, 64, 6, seed=seed).reshape(n, 1, 8, 8) * 0.1 + 0.5).float()


def test_fit_records_everything_and_is_reproducible():
    """A fit must record tau, ranks, solver, the objective history and the seed, and the
    same seed must give the same bases (reproducibility)."""
    clean, mixed = _images(300, 11), _images(300, 12) + 0.2 * _images(300, 13)
    a = fit_asvd(clean, mixed, 4, 2, 0.25, seed=5)
    b = fit_asvd(clean, mixed, 4, 2, 0.25, seed=5)
    assert torch.equal(a.clean_basis, b.clean_basis) and torch.equal(a.unseen_basis, b.unseen_basis)
    assert a.ranks == (4, 2) and a.tau == 0.25 and a.shape == (1, 8, 8)
    assert a.info["seed"] == 5 and a.info["eigensolver"] == "dense-eigh"
    assert len(a.info["unseen_fit"]["objective"]) >= 1
    out = a.separate(mixed[:7])
    assert out.shape == (7, 2, 1, 8, 8) and out.dtype == torch.float32


def test_tau_auto_picks_the_minimum_of_its_curve():
    """tau='auto' must return the grid value with the lowest held-out score and store
    the whole curve; a mismatch means the selection is not what is reported."""
    clean, mixed = _images(300, 14), _images(300, 15) + 0.3 * _images(300, 16)
    model = fit_asvd(clean, mixed, 4, 2, "auto", tau_grid=[0.0, 0.2, 0.5], seed=1)
    sel = model.info["tau_selection"]
    assert [r["tau"] for r in sel["curve"]] == [0.0, 0.2, 0.5]
    best = min(sel["curve"], key=lambda r: r["score"])
    assert model.tau == best["tau"]
    assert all(np.isfinite(r["score"]) and r["score"] >= 0 for r in sel["curve"])


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"tau": -0.1}, ConfigError, "tau must lie in"),
        ({"tau": 1.5}, ConfigError, "tau must lie in"),
        ({"tau": float("nan")}, ConfigError, "tau must lie in"),
        ({"tau": "high"}, ConfigError, "'auto'"),
        ({"rank_clean": 65}, ConfigError, "rank_clean=65"),
        ({"rank_clean": 0}, ConfigError, "positive integer"),
        ({"rank_unseen": 500}, ConfigError, "number of mixtures"),
        ({"rank_clean": 40, "rank_unseen": 30}, ConfigError, "exceeds the 64 pixels"),
        ({"projection": "box"}, ConfigError, "projection"),
        ({"projection": "none"}, ConfigError, "Wiener split needs"),
    ],
)
def test_bad_parameters_give_one_line_errors(kwargs, error, text):
    """Out-of-range settings must fail before any work with a one-line message naming the
    setting."""
    clean, mixed = _images(100, 17), _images(100, 18)
    args = {"rank_clean": 4, "rank_unseen": 2, "tau": 0.2}
    args.update(kwargs)
    with pytest.raises(error, match=text) as info:
        fit_asvd(
            clean, mixed, args.pop("rank_clean"), args.pop("rank_unseen"), args.pop("tau"), **args
        )
    assert "\n" not in str(info.value)


def test_bad_data_gives_one_line_errors():
    """Non-finite values, mismatched grids and wrong separation shapes must be refused
    with a message naming the data set, not crash inside torch."""
    clean, mixed = _images(100, 19), _images(100, 20)
    bad = clean.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(InputError, match="clean data: 1 non-finite value.*cutout 3"):
        fit_asvd(bad, mixed, 4, 2, 0.2)
    with pytest.raises(InputError, match="mixtures"):
        fit_asvd(clean, mixed.masked_fill(mixed > 0.55, float("inf")), 4, 2, 0.2)
    with pytest.raises(ShapeError, match="same grid"):
        fit_asvd(clean, mixed[:, :, :4], 4, 2, 0.2)
    with pytest.raises(ShapeError, match="expected \\(N, ...\\)"):
        fit_asvd(clean.reshape(-1), mixed, 4, 2, 0.2)
    model = fit_asvd(clean, mixed, 4, 2, 0.2)
    with pytest.raises(ShapeError, match="expected \\(batch, 1, 8, 8\\)"):
        model.separate(torch.zeros(3, 1, 8, 9))
    y = mixed[:2].clone()
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        model.separate(y)
    with pytest.raises(ShapeError, match="noise_var has shape"):
        model.separate(mixed[:2], noise_var=torch.ones(5))


def test_prior_folder_round_trip_and_safety(tmp_path):
    """Saving then loading must give the same model and separations; an existing folder
    is kept unless overwrite=True; a tampered or foreign folder is refused."""
    clean, mixed = _images(200, 21), _images(200, 22) + 0.2 * _images(200, 23)
    model = fit_asvd(clean, mixed, 4, 2, 0.3, sources=("sky", "galaxy"), pixel_scale=0.2, seed=2)
    folder = tmp_path / "prior"
    model.save(folder)
    manifest = json.loads((folder / "prior.json").read_text())
    for key, value in {
        "method": "asvd",
        "sources": ["sky", "galaxy"],
        "shape": [1, 8, 8],
        "pixel_scale": 0.2,
        "tau": 0.3,
        "ranks": [4, 2],
    }.items():
        assert manifest[key] == value, key
    loaded = load_asvd(folder)
    assert torch.equal(loaded.clean_basis, model.clean_basis) and torch.equal(
        loaded.unseen_basis, model.unseen_basis
    )
    assert torch.equal(loaded.separate(mixed[:5]), model.separate(mixed[:5]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior"], "temporary files left behind"

    with pytest.raises(OutputExistsError, match="overwrite"):
        model.save(folder)
    other = fit_asvd(clean, mixed, 3, 2, 0.1)
    other.save(folder, overwrite=True)
    assert load_asvd(folder).ranks == (3, 2)

    data = bytearray((folder / "asvd.npz").read_bytes())
    data[-10] ^= 0xFF
    (folder / "asvd.npz").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_asvd(folder)
    (folder / "prior.json").write_text(json.dumps({**manifest, "method": "diffusion"}))
    with pytest.raises(CheckpointError, match="not 'asvd'"):
        load_asvd(folder)
    with pytest.raises(CheckpointError, match="not a prior folder"):
        load_asvd(tmp_path / "missing")
    with pytest.raises(GalprismError, match="does not exist"):
        model.save(tmp_path / "no" / "such" / "place")

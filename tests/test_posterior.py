"""Joint MMPS posterior: exactness with Gaussian priors, CG, and input validation."""

import pytest
import torch

from galprism.diffusion.denoiser import DiffusionPrior
from galprism.diffusion.samplers import SamplerConfig, denoiser_calls
from galprism.diffusion.schedule import VESchedule
from galprism.errors import InputError, ShapeError
from galprism.gaussian import GaussianPrior
from galprism.linalg import conjugate_gradient, conjugate_gradient_with_products
from galprism.operators import Identity, Mask, SourceSum
from galprism.posterior import JointPosterior
from galprism.sampling import sample_posterior
from galprism.testing import exactness_errors, gaussian_problem


def test_posterior_samples_match_closed_form_gaussian_posterior():
    """Gaussian priors make MMPS exact: samples must reproduce the posterior mean and std.

    A bug in the operators' adjoints, the CG solve, the per-source VJPs or the sampler
    shows up as a bias of the mean or a wrong spread.
    """
    prob = gaussian_problem(size=4, seed=0)
    n = 2048
    x = sample_posterior(
        prob.priors,
        prob.operator,
        prob.y,
        prob.noise_var,
        SamplerConfig(
            method="pc", steps=32, n_samples=n, cg_iterations=prob.y[0].numel(), trust=4.0
        ),
        generators=torch.Generator().manual_seed(1),
    )
    mean_err, std_err = exactness_errors(x[0].reshape(n, -1), prob.post_mean, prob.post_cov)
    assert mean_err < 0.1, f"posterior mean off by {mean_err:.3f} sigma"
    assert std_err < 0.1, f"posterior std off by {std_err:.3f} (relative)"


def test_posterior_denoiser_equals_exact_gaussian_conditional():
    """At any noise level the MMPS denoiser must equal E[x | x_t, y] computed densely."""
    prob = gaussian_problem(size=4, seed=1)
    post = JointPosterior(
        prob.priors, prob.operator, prob.y, prob.noise_var, cg_iterations=prob.y[0].numel() + 4
    )
    t = torch.tensor(0.6, dtype=torch.float64)
    sig = post.sigma(t)
    x_t = (
        torch.randn(1, 2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        * 3
    )
    got = post(x_t, t).reshape(-1)
    # Dense: prior on (x) with observations x_t = x + sigma n and y = A x + n.
    d = 16
    mu = torch.cat([p.mean.reshape(-1) for p in prob.priors])
    s = torch.block_diag(*[p.covariance() for p in prob.priors])
    m_y = (
        prob.operator.apply(torch.eye(2 * d, dtype=torch.float64).reshape(2 * d, 2, 1, 4, 4))
        .reshape(2 * d, -1)
        .T
    )
    m = torch.cat([torch.eye(2 * d, dtype=torch.float64), m_y])
    noise = torch.cat(
        [sig[0] ** 2 * torch.ones(d), sig[1] ** 2 * torch.ones(d), prob.noise_var.reshape(-1)]
    ).to(torch.float64)
    obs = torch.cat([x_t.reshape(-1), prob.y.reshape(-1)])
    g = m @ s @ m.T + torch.diag(noise)
    want = mu + s @ m.T @ torch.linalg.solve(g, obs - m @ mu)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


def test_conjugate_gradient_solves_batched_spd_systems():
    """CG must converge per system in a batch, and stop cleanly on converged systems."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    a = q @ q.transpose(1, 2) + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    b[1] = 0.0  # an already-solved system must not produce NaNs
    x = conjugate_gradient(lambda v: torch.einsum("bij,bj->bi", a, v), b, iterations=12)
    assert torch.isfinite(x).all()
    assert torch.allclose(torch.einsum("bij,bj->bi", a, x), b, atol=1e-8)


def test_posterior_rejects_mismatched_or_bad_inputs():
    """Shape mismatches and non-finite data are reported, never silently broadcast."""
    prior = GaussianPrior.from_covariance(torch.zeros(1, 4, 4), torch.eye(16))
    op = SourceSum([Identity((1, 4, 4))])
    with pytest.raises(ShapeError, match="observations have shape"):
        JointPosterior([prior], op, torch.zeros(2, 1, 4, 5), 1.0)
    with pytest.raises(ShapeError, match="2 priors"):
        JointPosterior([prior, prior], op, torch.zeros(2, 1, 4, 4), 1.0)
    with pytest.raises(InputError, match="non-finite"):
        JointPosterior([prior], op, torch.full((2, 1, 4, 4), float("nan")), 1.0)
    with pytest.raises(InputError, match="noise variance"):
        JointPosterior([prior], op, torch.zeros(2, 1, 4, 4), 0.0)
    other = GaussianPrior.from_covariance(torch.zeros(1, 2, 2), torch.eye(4))
    with pytest.raises(ShapeError):
        JointPosterior([other], op, torch.zeros(2, 1, 4, 4), 1.0)


def test_per_observation_generators_make_samples_independent_of_batch():
    """A cutout's samples must not depend on which other cutouts share its batch."""
    prob = gaussian_problem(size=4, seed=3)
    y2 = torch.cat([prob.y, prob.y + 0.1])
    cfg = SamplerConfig(method="pc", steps=4, n_samples=3, trust=4.0)
    alone = sample_posterior(
        prob.priors,
        prob.operator,
        prob.y,
        prob.noise_var,
        cfg,
        generators=[torch.Generator().manual_seed(7)],
    )
    both = sample_posterior(
        prob.priors,
        prob.operator,
        y2,
        prob.noise_var.expand_as(y2),
        cfg,
        generators=[torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)],
    )
    assert torch.allclose(alone[0], both[0], atol=1e-10)


def test_denoiser_call_counts():
    """The cost model used by the speed benchmark: calls per sampler run."""
    assert denoiser_calls(SamplerConfig("ddim", steps=10)) == 11
    assert denoiser_calls(SamplerConfig("heun", steps=10)) == 21
    assert denoiser_calls(SamplerConfig("pc", steps=10, corrections=2)) == 31


def _unet_priors() -> list[DiffusionPrior]:
    """Two small float64 U-Net priors with random weights: a non-symmetric, non-trivial J."""
    torch.manual_seed(0)
    priors = []
    for sd in (0.3, 0.7):
        p = DiffusionPrior(
            (1, 8, 8),
            "unet",
            {"widths": [8, 8], "attention_levels": [], "channels": 1},
            VESchedule(1e-3, 20.0),
            sigma_data=sd,
        )
        for w in p.net.parameters():
            w.data.normal_(0.0, 0.2)
        priors.append(p.double().eval().requires_grad_(False))
    return priors


def _masked_problem(n: int = 3) -> tuple[SourceSum, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.rand((1, 8, 8), generator=g) > 0.2
    op = SourceSum([Mask(mask), Mask(mask)])
    y = torch.randn((n, 1, 8, 8), generator=g, dtype=torch.float64) * mask
    return op, y


def _explicit_twisted(post: JointPosterior, x_t: torch.Tensor, t: torch.Tensor):
    """MMPS written out directly: plain CG for v, then one more VJP per source for Cov A^T v."""
    sig = post.sigma(t).to(x_t.dtype)
    a = post.operator
    means, vjps = [], []
    for k, prior in enumerate(post.priors):
        d, vjp = torch.func.vjp(lambda x, p=prior, s=sig[k]: p.denoise(x, s), x_t[:, k])
        means.append(d)
        vjps.append(vjp)

    def cov(u: torch.Tensor) -> torch.Tensor:
        return torch.stack([sig[k] ** 2 * vjps[k](u[:, k])[0] for k in range(2)], dim=1)

    d = torch.stack(means, dim=1)
    residual = post.y - a.apply(d)
    v = conjugate_gradient(
        lambda p: post.noise_var * p + a.apply(cov(a.adjoint(p))),
        residual,
        iterations=post.cg_iterations,
        curvature_floor=lambda p: (post.noise_var * p * p).sum(
            dim=tuple(range(1, p.ndim)), keepdim=True
        ),
    )
    log_likelihood = -0.5 * (residual * v).flatten(1).sum(1)
    return d, d + cov(a.adjoint(v)), log_likelihood


@pytest.mark.parametrize("cg", [1, 2, 3])
def test_posterior_correction_from_cg_products_equals_explicit_one(cg):
    """The correction summed from the CG's products must equal Cov A^T v applied to the
    solved v (float64, to round-off); a difference means a wrong alpha or a lost term."""
    priors = _unet_priors()
    op, y = _masked_problem()
    post = JointPosterior(priors, op, y, 0.05, cg_iterations=cg, trust=0.0, jacobian="vjp")
    x = torch.randn((3, 2, 1, 8, 8), generator=torch.Generator().manual_seed(2)).double() * 0.5
    t = torch.tensor(0.6, dtype=torch.float64)
    got = post.twisted(x, t)
    want = _explicit_twisted(post, x, t)
    # The correction must be large enough for the comparison to mean something.
    assert (want[1] - want[0]).abs().max() > 1e-2
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.detach(), rtol=1e-10, atol=1e-12)


def test_posterior_spends_one_vjp_per_source_and_cg_iteration(monkeypatch):
    """A denoiser call must cost cg_iterations VJPs per source (the explicit correction costs
    one more); more calls mean the CG's products are no longer reused."""
    priors = _unet_priors()
    op, y = _masked_problem()
    calls = {"n": 0}
    vjp = torch.func.vjp

    def counted(fn, *primals):
        out, closure = vjp(fn, *primals)

        def call(*c):
            calls["n"] += 1
            return closure(*c)

        return out, call

    monkeypatch.setattr(torch.func, "vjp", counted)
    x = torch.randn((3, 2, 1, 8, 8)).double() * 0.5
    t = torch.tensor(0.5, dtype=torch.float64)
    for cg in (1, 2, 3):
        post = JointPosterior(priors, op, y, 0.05, cg_iterations=cg, jacobian="vjp")
        calls["n"] = 0
        post(x, t)
        assert calls["n"] == 2 * cg
        calls["n"] = 0
        _explicit_twisted(post, x, t)
        assert calls["n"] == 2 * (cg + 1)


def test_cg_with_products_matches_plain_cg_and_product_of_solution():
    """The CG variant must return plain CG's iterate and G x for a linear G (batched SPD
    systems, products with an extra axis); otherwise MMPS's v or correction is wrong."""
    g = torch.Generator().manual_seed(3)
    m = torch.randn(4, 6, 6, generator=g, dtype=torch.float64)
    gmat = torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64)
    a = m @ m.transpose(1, 2) + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(4, 6, generator=g, dtype=torch.float64)

    def product(p):
        return torch.einsum("bkij,bj->bki", gmat, p)

    def finish(p, gp):
        return torch.einsum("bij,bj->bi", a, p) + 0.0 * gp.sum(1)

    for iterations in (1, 3, 6):
        x, gx = conjugate_gradient_with_products(product, finish, b, iterations=iterations)
        ref = conjugate_gradient(lambda v: finish(v, product(v)), b, iterations=iterations)
        torch.testing.assert_close(x, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gx, product(x), rtol=1e-10, atol=1e-12)
    x, gx = conjugate_gradient_with_products(product, finish, b, iterations=0)
    assert gx is None and not x.any()


def test_difference_jacobian_spends_no_vjp_and_one_forward_per_source_and_cg_iteration(
    monkeypatch,
):
    """With the forward-difference Jacobian (`jacobian="difference"`) a denoiser call must run no
    autograd at all, and one network forward per source plus one per CG iteration; a VJP
    or an extra forward means the cheaper path is not the one taken."""
    priors = _unet_priors()
    op, y = _masked_problem()

    def no_vjp(*args, **kwargs):
        raise AssertionError("torch.func.vjp called on the forward-difference path")

    monkeypatch.setattr(torch.func, "vjp", no_vjp)
    forwards = {"n": 0}
    for p in priors:
        p.net.register_forward_hook(lambda *a: forwards.__setitem__("n", forwards["n"] + 1))
    x = torch.randn((3, 2, 1, 8, 8)).double() * 0.5
    t = torch.tensor(0.5, dtype=torch.float64)
    for cg in (1, 2, 3):
        post = JointPosterior(priors, op, y, 0.05, cg_iterations=cg, jacobian="difference")
        forwards["n"] = 0
        post(x, t)
        assert forwards["n"] == 2 * (1 + cg)

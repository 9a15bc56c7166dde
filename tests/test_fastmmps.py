"""The prototypes for faster posterior sampling agree with the reference code paths."""

from __future__ import annotations

import pytest
import torch

from galprism.diffusion.denoiser import DiffusionPrior
from galprism.diffusion.multistep import sample_multistep
from galprism.diffusion.samplers import SamplerConfig, sample
from galprism.diffusion.schedule import VESchedule
from galprism.fastmmps import CachedJointPosterior
from galprism.operators import Mask, SourceSum
from galprism.posterior import JointPosterior


def _priors() -> list[DiffusionPrior]:
    """Two small U-Net priors with random (non-zero) weights: a non-trivial Jacobian."""
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
        priors.append(p.eval().requires_grad_(False))
    return priors


def _problem(n: int = 3):
    g = torch.Generator().manual_seed(1)
    mask = torch.rand((1, 8, 8), generator=g) > 0.2
    op = SourceSum([Mask(mask), Mask(mask)])
    y = torch.randn((n, 1, 8, 8), generator=g) * mask
    return op, y


@pytest.mark.parametrize("cg", [0, 1, 2, 3])
def test_cached_posterior_equals_reference(cg: int) -> None:
    """Reusing the CG's covariance products must give the reference MMPS denoiser; a
    difference means the correction no longer equals Cov A^T v."""
    priors = _priors()
    op, y = _problem()
    ref = JointPosterior(priors, op, y, 0.05, cg_iterations=cg, trust=0.0)
    fast = CachedJointPosterior(priors, op, y, 0.05, cg_iterations=cg, trust=0.0)
    x = torch.randn((3, 2, 1, 8, 8), generator=torch.Generator().manual_seed(2)) * 0.5
    t = torch.tensor(0.6, dtype=torch.float64)
    for a, b in zip(ref.twisted(x, t), fast.twisted(x, t), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    if cg == 0:
        # Zero CG iterations leave v = 0: the posterior mean is the prior's.
        torch.testing.assert_close(fast(x, t), fast.twisted(x, t)[0])


def test_cached_posterior_uses_one_vjp_fewer(monkeypatch) -> None:
    """One CG iteration must cost one VJP per source and call, not two."""
    priors = _priors()
    op, y = _problem()
    calls = {"n": 0}
    vjp = torch.func.vjp

    def counted(fn, *primals):
        out, closure = vjp(fn, *primals)

        def call(*c):
            calls["n"] += 1
            return closure(*c)

        return out, call

    monkeypatch.setattr(torch.func, "vjp", counted)
    x = torch.randn((3, 2, 1, 8, 8)) * 0.5
    t = torch.tensor(0.5, dtype=torch.float64)
    JointPosterior(priors, op, y, 0.05, cg_iterations=1)(x, t)
    assert calls["n"] == 4
    calls["n"] = 0
    CachedJointPosterior(priors, op, y, 0.05, cg_iterations=1)(x, t)
    assert calls["n"] == 2


def test_multistep_first_order_is_ddim() -> None:
    """At order 1 on the log-linear grid the multistep sampler must be DDIM exactly (same
    noise, same steps); otherwise its order-2 results are not comparable with DDIM's."""
    priors = _priors()
    op, y = _problem(2)
    post = JointPosterior(priors, op, y, 0.05, cg_iterations=1, trust=0.0)
    config = SamplerConfig(method="ddim", steps=6)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    a = sample(post, (2, 2, 1, 8, 8), config, generators=gens())
    b = sample_multistep(post, (2, 2, 1, 8, 8), config, generators=gens(), order=1)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    c = sample_multistep(post, (2, 2, 1, 8, 8), config, generators=gens(), order=2)
    assert torch.isfinite(c).all() and not torch.allclose(c, a)

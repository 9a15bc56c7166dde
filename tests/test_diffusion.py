"""Diffusion priors: a U-Net learns a simple image distribution; training is resumable."""

import copy

import pytest
import torch

from galprism.diffusion import (
    DiffusionPrior,
    SamplerConfig,
    Trainer,
    VESchedule,
    denoising_loss,
    random_flux_scaling,
)
from galprism.gaussian import GaussianPrior
from galprism.nn import MLP, UNet
from galprism.sampling import sample_prior


def _bars():
    """Eight 8x8 templates: a horizontal or vertical bar at rows/columns 2..5."""
    out = []
    for r in range(2, 6):
        h = torch.zeros(1, 8, 8)
        h[0, r, :] = 1
        v = torch.zeros(1, 8, 8)
        v[0, :, r] = 1
        out += [h, v]
    return torch.stack(out)


def _match(x, templates):
    d = ((x[:, None] - templates[None]) ** 2).mean(dim=(2, 3, 4)).sqrt()
    dist, idx = d.min(1)
    return float((dist < 0.15).float().mean()), float((idx % 2 == 0).float().mean())


def test_unet_prior_learns_a_multimodal_image_distribution():
    """Samples of a briefly trained U-Net prior must look like the training bars.

    The distribution is a mixture of 8 bar images: a Gaussian with the same mean and
    covariance produces blurred superpositions (checked below as a control), so passing
    requires the network and sampler to capture the non-Gaussian structure, in both
    orientations.
    """
    gen = torch.Generator().manual_seed(0)
    templates = _bars()
    data = templates[torch.randint(8, (4096,), generator=gen)]
    prior = DiffusionPrior(
        (1, 8, 8),
        "unet",
        {"channels": 1, "widths": [16, 32], "blocks": 1, "emb_features": 32},
        VESchedule(1e-3, 10.0),
        sigma_data=0.35,
    )
    trainer = Trainer(prior, lr=2e-3, ema_decay=0.99, warmup=50)
    trainer.fit(data, 300, 64, generator=gen)
    x = sample_prior(
        [trainer.ema_prior],
        128,
        config=SamplerConfig("pc", 32),
        generators=torch.Generator().manual_seed(1),
    )
    matched, horizontal = _match(x[:, 0], templates)
    assert matched > 0.85, f"only {matched:.0%} of samples look like a bar"
    assert 0.25 < horizontal < 0.75, f"orientation balance {horizontal:.0%}: a mode was dropped"
    control, _ = _match(
        GaussianPrior.fit(data, 8).sample(128, torch.Generator().manual_seed(2)), templates
    )
    assert control < 0.2, "the test does not discriminate: a Gaussian passes it too"


def test_denoiser_preconditioning_starts_as_gaussian_optimum():
    """A zero-initialised backbone gives D = c_skip x, the optimum for N(0, sigma_data^2)."""
    prior = DiffusionPrior((5,), "mlp", {"features": 5}, sigma_data=0.5)
    x = torch.randn(7, 5)
    sigma = torch.tensor(0.3)
    expect = 0.25 / (0.09 + 0.25) * x
    assert torch.allclose(prior.denoise(x, sigma), expect, atol=1e-6)


def test_training_reduces_loss_and_resumes_exactly():
    """Loss must fall; a trainer restored from its state dict continues identically."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(512, 5) * torch.tensor([2.0, 1.0, 0.5, 0.1, 1.0])
    prior = DiffusionPrior(
        (5,), "mlp", {"features": 5, "hidden": 64, "blocks": 2, "emb_features": 16}
    )
    trainer = Trainer(prior, lr=1e-3, warmup=10)
    with torch.no_grad():
        before = float(
            sum(denoising_loss(prior, data, torch.Generator().manual_seed(i)) for i in range(5))
        )
    trainer.fit(data, 200, 64, generator=gen)
    with torch.no_grad():
        after = float(
            sum(denoising_loss(prior, data, torch.Generator().manual_seed(i)) for i in range(5))
        )
    assert after < before

    state = copy.deepcopy(trainer.state_dict())
    clone = Trainer(
        DiffusionPrior((5,), "mlp", {"features": 5, "hidden": 64, "blocks": 2, "emb_features": 16}),
        lr=1e-3,
        warmup=10,
    )
    clone.load_state_dict(state)
    trainer.fit(data, 5, 64, generator=torch.Generator().manual_seed(5))
    clone.fit(data, 5, 64, generator=torch.Generator().manual_seed(5))
    for a, b in zip(trainer.ema_prior.parameters(), clone.ema_prior.parameters(), strict=True):
        assert torch.equal(a, b)


def test_unet_rejects_sizes_not_divisible_by_its_downsampling():
    """A U-Net with 3 levels needs sizes divisible by 4; others must fail clearly."""
    net = UNet(1, (8, 16, 16))
    assert net(torch.randn(2, 1, 12, 20), torch.zeros(2)).shape == (2, 1, 12, 20)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(2, 1, 10, 12), torch.zeros(2))


def test_mlp_shapes():
    """The vector backbone maps (B, D) to (B, D) for any batch."""
    assert MLP(5)(torch.randn(3, 5), torch.zeros(3)).shape == (3, 5)


def test_flux_augmentation_teaches_the_prior_brighter_copies():
    """Trained with every sample scaled by 4 (``random_flux_scaling(4, 4)``), a prior must
    draw samples 4x as wide as its data; with ``fraction`` 0.5 half the rows of a batch
    must stay as they were. Otherwise EM's ``flux_augment`` would not do what it says."""
    scale = random_flux_scaling(4.0, 4.0, 0.5)
    batch = torch.ones(4000, 3)
    out = scale(batch, torch.Generator().manual_seed(0))
    rows = out[:, 0]
    assert torch.all((rows == 1) | (rows == 4)) and torch.equal(out, rows[:, None].expand(-1, 3))
    assert 0.45 < float((rows == 4).float().mean()) < 0.55
    with pytest.raises(ValueError, match="low <= high"):
        random_flux_scaling(2.0, 1.0)

    gen = torch.Generator().manual_seed(0)
    data = 0.5 * torch.randn(4096, 2, generator=gen)
    kwargs = {"features": 2, "hidden": 64, "blocks": 2, "emb_features": 16}
    stds = []
    for augment in (None, random_flux_scaling(4.0, 4.0)):
        prior = DiffusionPrior((2,), "mlp", kwargs, VESchedule(1e-3, 20.0), sigma_data=1.0)
        trainer = Trainer(prior, lr=2e-3, ema_decay=0.99, warmup=20)
        trainer.fit(data, 400, 256, generator=torch.Generator().manual_seed(1), augment=augment)
        x = sample_prior(
            [trainer.ema_prior],
            2048,
            config=SamplerConfig("pc", 32),
            generators=torch.Generator().manual_seed(2),
        )
        stds.append(float(x.std()))
    assert 0.35 < stds[0] < 0.65, f"plain prior std {stds[0]:.2f}, data 0.5"
    assert 1.6 < stds[1] < 2.4, f"augmented prior std {stds[1]:.2f}, expected 4 x 0.5"

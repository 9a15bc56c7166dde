"""Network precision of separation (float32, bf16, TF32) on the CPU and, where present, CUDA.

The CUDA tests are skipped with the reason "needs CUDA" on a machine without a GPU
(``benchmarks/gpu.sh`` runs them on one). The CPU tests run everywhere: bf16 autocast
exists on the CPU too, so the bf16 path itself is tested without a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fits_factory import FakePrior, make_cutout, run_cli
from torch import Tensor, nn

from galprism.diffusion.denoiser import DiffusionPrior
from galprism.diffusion.samplers import SamplerConfig
from galprism.errors import ConfigError
from galprism.gaussian import GaussianPrior
from galprism.priorset import load_priorset
from galprism.sampling import sample_posterior
from galprism.separate import (
    SeparateConfig,
    fit_to_prior,
    resolve_precision,
    separate_observations,
)
from galprism.separate import inference as inference_module
from galprism.separate.precision import LowPrecisionNet, network_precision
from galprism.testing import exactness_errors, gaussian_problem

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class GaussianBackbone(nn.Module):
    """The backbone ``F`` that makes a :class:`DiffusionPrior` the exact denoiser of a
    Gaussian prior: ``c_skip x_t + c_out F(c_in x_t, log(sigma) / 4) = E[x | x_t]``.

    Its matrix products are those of :meth:`GaussianPrior.denoise`, so autocast runs
    them in bf16 as it would a network's.
    """

    def __init__(self, gaussian: GaussianPrior, sigma_data: float) -> None:
        super().__init__()
        self.gaussian = gaussian
        self.sigma_data = sigma_data

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        sigma = torch.exp(4 * c_noise).reshape(-1, *([1] * (x_in.ndim - 1)))
        sd2 = self.sigma_data**2
        x_t = x_in * torch.sqrt(sigma**2 + sd2)
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / torch.sqrt(sigma**2 + sd2)
        return (self.gaussian.denoise(x_t, sigma.flatten()) - c_skip * x_t) / c_out


def gaussian_diffusion_prior(gaussian: GaussianPrior) -> DiffusionPrior:
    """A :class:`DiffusionPrior` whose backbone computes ``gaussian``'s exact denoiser."""
    prior = DiffusionPrior(
        gaussian.shape,
        backbone="mlp",
        backbone_kwargs={"features": 4, "hidden": 4, "blocks": 1, "emb_features": 4},
        schedule=gaussian.schedule,
        sigma_data=1.0,
    )
    prior.net = GaussianBackbone(gaussian, prior.sigma_data)
    return prior


def exact_gaussian_errors(device: str, precision: str, n: int = 2048) -> tuple[float, float]:
    """Largest errors (in posterior sigmas) of the sample mean and std of the closed-form
    two-source Gaussian problem, sampled through DiffusionPriors in ``precision``."""
    prob = gaussian_problem(size=4, seed=0, dtype=torch.float32)
    priors = [gaussian_diffusion_prior(p).to(device) for p in prob.priors]
    with network_precision(SimpleNamespace(priors=priors), precision, device) as swapped:
        assert swapped == (0 if precision == "float32" else 2)
        x = sample_posterior(
            priors,
            prob.operator,  # operators move their buffers to the state's device themselves
            prob.y.to(device),
            prob.noise_var.to(device),
            SamplerConfig(
                method="pc",
                steps=32,
                n_samples=n,
                cg_iterations=prob.y[0].numel(),
                trust=4.0,
                jacobian="vjp",
            ),
            generators=torch.Generator(device=device).manual_seed(1),
        )
    assert x.dtype == torch.float32, "the networks' precision leaked into the samples"
    return exactness_errors(x[0].reshape(n, -1).cpu(), prob.post_mean, prob.post_cov)


#: Largest error of the posterior mean (in posterior sigmas) and of its std (relative) per
#: precision. float32's is the sampler's own (Monte Carlo, 2048 samples). bfloat16 rounds
#: the networks' inputs and outputs to 8 significant bits (relative error 2**-9): on this
#: problem, whose posterior is much narrower than the prior, that moves the mean by about
#: 0.15 sigma at the worst pixel for the same draws while the spread changes by 2%.
LIMITS = {"float32": (0.1, 0.1), "tf32": (0.12, 0.1), "bf16": (0.25, 0.1)}


def test_bf16_networks_on_cpu_still_sample_the_exact_gaussian_posterior():
    """bf16 autocast of the networks alone (likelihood, CG and operators float32) must keep
    MMPS's Gaussian exactness; a cast that reached the solve, or a bf16 output fed back
    into the float32 state, would bias the mean or the spread."""
    mean_err, std_err = exact_gaussian_errors("cpu", "bf16")
    assert mean_err < LIMITS["bf16"][0], f"bf16 posterior mean off by {mean_err:.3f} sigma"
    assert std_err < LIMITS["bf16"][1], f"bf16 posterior std off by {std_err:.3f} (relative)"


@needs_cuda
@pytest.mark.parametrize("precision", ["float32", "tf32", "bf16"])
def test_exact_gaussian_posterior_on_cuda(precision):
    """On a GPU the sampler must reproduce the closed-form posterior in every precision:
    a device bug (generators, operator buffers left on the CPU, a precision applied to
    the solve) shows up as a wrong mean or spread."""
    mean_err, std_err = exact_gaussian_errors("cuda", precision)
    limit_mean, limit_std = LIMITS[precision]
    assert mean_err < limit_mean, f"{precision} posterior mean off by {mean_err:.3f} sigma"
    assert std_err < limit_std, f"{precision} posterior std off by {std_err:.3f} (relative)"


@pytest.fixture(scope="module")
def real_prior():
    return load_priorset("default")


def _cutouts(tmp_path, prior, n=2):
    from galprism.io.read import ReadOptions, read_cutout

    obs = []
    for i in range(n):
        path = make_cutout(
            tmp_path / f"c{i}.fits",
            shape=tuple(prior.frame.shape[1:]),
            seed=i,
            scale=prior.frame.pixel_scale,
            header={"MAGZERO": prior.frame.zeropoint},
        )
        obs.append(read_cutout(path, ReadOptions()))
    config = SeparateConfig(support={})
    return [fit_to_prior(o, prior, config)[0] for o in obs]


def _separate(observations, prior, precision, device="cpu"):
    config = SeparateConfig(
        # Exact VJPs: bf16 networks are refused with a forward-difference Jacobian.
        sampler=SamplerConfig(steps=6, n_samples=2, jacobian="vjp"),
        support={},
        precision=precision,
    )
    return separate_observations(observations, prior, config, [11, 12], device=device)


def test_float32_is_bit_identical_to_the_unwrapped_networks(tmp_path, real_prior, monkeypatch):
    """precision float32 (the CPU default) must leave the samples exactly as the networks
    give them without any precision handling; any wrapper or cast would change bits."""
    obs = _cutouts(tmp_path, real_prior)
    nets = [p.net for p in real_prior.priors]
    default = _separate(obs, real_prior, None)
    explicit = _separate(obs, real_prior, "float32")

    class Untouched:
        def __init__(self, *args):
            pass

        def __enter__(self):
            return 0

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(inference_module, "network_precision", Untouched)
    plain = _separate(obs, real_prior, "float32")
    for a, b, c in zip(default, explicit, plain, strict=True):
        assert (a.samples == c.samples).all() and (b.samples == c.samples).all()
    assert [p.net for p in real_prior.priors] == nets


def test_bf16_posterior_means_are_close_to_float32(tmp_path, real_prior):
    """bf16 networks change the draws by rounding only: the same seeds must give posterior
    means of the built-in U-Net prior within a few percent of the float32 ones' spread,
    and different from them (else bf16 did not run)."""
    obs = _cutouts(tmp_path, real_prior)
    f32 = _separate(obs, real_prior, "float32")
    bf16 = _separate(obs, real_prior, "bf16")
    for a, b in zip(f32, bf16, strict=True):
        assert b.samples.dtype == a.samples.dtype
        mean_a, mean_b = a.samples.mean(axis=0), b.samples.mean(axis=0)
        scale = float(abs(mean_a).max())
        diff = float(abs(mean_a - mean_b).max())
        assert diff > 0, "bf16 gave bit-identical samples: autocast did not apply"
        assert diff < 0.05 * scale, f"bf16 mean differs by {diff:.3g} (scale {scale:.3g})"
        assert abs(float(a.chi2_samples.mean()) - float(b.chi2_samples.mean())) < 0.05
    assert not any(isinstance(p.net, LowPrecisionNet) for p in real_prior.priors)


def test_network_precision_restores_the_backbones_after_an_error(real_prior):
    """A failing batch must not leave the shared prior's networks wrapped (the run retries
    cutouts alone and the next batch would silently run in bf16 or double-wrap)."""
    nets = [p.net for p in real_prior.priors]
    with pytest.raises(RuntimeError, match="boom"):
        with network_precision(real_prior, "bf16", "cpu"):
            assert all(isinstance(p.net, LowPrecisionNet) for p in real_prior.priors)
            raise RuntimeError("boom")
    assert [p.net for p in real_prior.priors] == nets


def test_precision_defaults_and_refusals():
    """bf16 is the CUDA default and float32 the CPU's; TF32 on a CPU and unknown names
    are errors naming the precision, not a silent float32 run."""
    assert resolve_precision(None, "cuda") == "bf16"
    assert resolve_precision(None, "cuda:1") == "bf16"
    assert resolve_precision(None, "cpu") == "float32"
    assert resolve_precision(None, "cuda", "difference") == "float32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="tf32"):
        resolve_precision("tf32", "cpu")
    with pytest.raises(ConfigError, match="fp8"):
        SeparateConfig(precision="fp8")


def test_difference_jacobian_keeps_float32_networks():
    """A forward difference of step 3e-3 through bf16 or TF32 networks measures their
    rounding, not their Jacobian: the default must then be float32 on CUDA too, and an
    explicit lower precision must be refused rather than give a meaningless posterior."""
    assert resolve_precision(None, "cuda", "difference") == "float32"
    assert resolve_precision(None, "cpu", "difference") == "float32"
    assert resolve_precision("float32", "cuda", "difference") == "float32"
    for precision in ("bf16", "tf32"):
        with pytest.raises(ConfigError, match="forward-difference"):
            resolve_precision(precision, "cuda", "difference")


def test_cli_tf32_on_cpu_is_a_one_line_usage_error(tmp_path, capsys, monkeypatch):
    """--precision tf32 --device cpu must stop before any work with exit status 2 and one
    line naming the flag, not run in float32 while the user believes TF32 was used."""
    p = make_cutout(tmp_path / "c.fits")
    code, recs, _, err = run_cli(
        ["separate", p, "--output-dir", tmp_path / "o", "--device", "cpu", "--precision", "tf32"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
    )
    assert code == 2 and recs == [], err
    assert len(err) == 1 and "--precision tf32" in err[0] and "CUDA" in err[0], err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_cuda_without_cuda_is_one_line_naming_the_device(tmp_path, capsys, monkeypatch):
    """--device cuda on a machine without CUDA: exactly one stderr line naming the device
    (exit 2), not a torch traceback from the first batch."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = make_cutout(tmp_path / "c.fits")
    code, recs, _, err = run_cli(
        ["separate", p, "--output-dir", tmp_path / "o", "--device", "cuda"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
    )
    assert code == 2 and recs == [], err
    assert len(err) == 1 and "--device cuda" in err[0] and "CUDA" in err[0], err


@needs_cuda
def test_separate_on_cuda_bf16_close_to_cpu_float32(tmp_path, real_prior):
    """The default GPU path (bf16 networks) must give posterior means near the CPU float32
    ones for the same cutouts: a device or precision bug in separation shows up here."""
    obs = _cutouts(tmp_path, real_prior)
    cpu = _separate(obs, real_prior, "float32")
    try:
        gpu = _separate(obs, real_prior, None, device="cuda")
    finally:
        real_prior.to("cpu")  # the module's other tests use the same prior on the CPU
    for a, b in zip(cpu, gpu, strict=True):
        mean_a, mean_b = a.samples.mean(axis=0), b.samples.mean(axis=0)
        scale = float(abs(mean_a).max())
        # CUDA generators draw other numbers than CPU ones: compare through chi2 and the
        # mean image's scale, which the data pin, not pixel by pixel.
        assert abs(float(a.chi2_samples.mean()) - float(b.chi2_samples.mean())) < 0.2
        assert abs(float(abs(mean_b).max()) - scale) < 0.2 * scale

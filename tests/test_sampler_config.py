"""One SamplerConfig: the library's default separation is the command line's."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits
from fits_factory import run_cli

import galprism.priorset
import galprism.sampling
from galprism.diffusion import SamplerConfig
from galprism.errors import ConfigError
from galprism.operators import Identity, SourceSum
from galprism.priorset import load_priorset
from galprism.separate import RunWarnings, SeparateConfig, run_separate

ROOT = Path(__file__).resolve().parents[1]
CUTOUT = ROOT / "sample_fits" / "sim_hsc_galaxies_test_000000.fits"


def _spy_samplers(monkeypatch) -> list[SamplerConfig]:
    """Record the SamplerConfig of every posterior sampler run."""
    seen: list[SamplerConfig] = []
    real = galprism.sampling.sample_posterior

    def spy(priors, operator, y, noise_var, sampler=None, **kw):
        seen.append(sampler)
        return real(priors, operator, y, noise_var, sampler, **kw)

    monkeypatch.setattr(galprism.sampling, "sample_posterior", spy)
    monkeypatch.setattr(galprism.priorset, "sample_posterior", spy)
    return seen


def test_separation_defaults_are_those_of_the_command_line():
    """The defaults are defined once: a changed default in one place would make the Python API
    and `galprism separate` sample different posteriors (PC-64 with a trust cap against DDIM-32
    without one, as they once did)."""
    d = SamplerConfig()
    assert (d.method, d.steps, d.n_samples, d.cg_iterations, d.trust, d.particles) == (
        "ddim",
        32,
        8,
        1,
        0.0,
        16,
    )
    assert (d.jacobian, d.rho) == ("vjp", 0.0)
    assert SeparateConfig().sampler == d


def test_sampler_config_refuses_bad_settings():
    """Each bad setting is a ConfigError naming it, not a failure deep inside a batch."""
    for kw, needle in (
        ({"method": "euler"}, "euler"),
        ({"steps": 0}, "steps"),
        ({"n_samples": 0}, "n_samples"),
        ({"cg_iterations": -1}, "cg_iterations"),
        ({"cg_iterations": 0}, "ignore the data"),
        ({"particles": 0}, "particles"),
        ({"trust": -1.0}, "trust"),
        ({"eta": 2.0}, "eta"),
        ({"tau": 0.0}, "tau"),
        ({"jacobian": "jvp"}, "jacobian"),
        ({"rho": -1.0}, "rho"),
    ):
        with pytest.raises(ConfigError, match=needle):
            SamplerConfig(**kw)
    assert SamplerConfig.from_dict(SamplerConfig(steps=5).to_dict()) == SamplerConfig(steps=5)
    with pytest.raises(ConfigError, match="unknown"):
        SamplerConfig.from_dict({"stpes": 5})


def test_python_default_separation_equals_the_cli_default(tmp_path, capsys, monkeypatch):
    """`galprism separate` with no sampler flag and run_separate with SeparateConfig() (same seed)
    must write the same samples, and PriorSet.separate with no sampler argument must run the
    same SamplerConfig: otherwise a user reproducing a CLI result in Python gets another
    posterior."""
    seen = _spy_samplers(monkeypatch)
    cli_out = tmp_path / "cli.fits"
    code, _, _, err = run_cli(
        ["separate", CUTOUT, "-o", cli_out, "--device", "cpu", "--seed", "11", "-q"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    # the built-in prior's adaptive galaxy support runs a pilot first; the main run is last
    assert seen[-1] == SamplerConfig(), seen
    prior = load_priorset("default")
    api_out = tmp_path / "api.fits"
    summary = run_separate(
        [str(CUTOUT)],
        prior,
        SeparateConfig(output=api_out, seed=11),
        warnings=RunWarnings(lambda m: None),
    )
    assert summary.exit_code == 0
    with fits.open(cli_out) as a, fits.open(api_out) as b:
        for name in prior.sources:
            np.testing.assert_array_equal(
                a[name.upper()].data, b[name.upper()].data, err_msg=f"{name} samples differ"
            )
    seen.clear()
    shape = prior.frame.shape
    y = torch.zeros((1, *shape))
    prior.separate(
        y,
        torch.ones_like(y),
        SourceSum([Identity(shape)] * len(prior.sources)),
        generators=[torch.Generator().manual_seed(0)],
    )
    assert seen == [SamplerConfig()], seen


def test_posterior_and_smc_do_not_import_each_other():
    """The sampler dispatch lives in galprism.sampling; an import of posterior from smc (or the
    reverse), even for type checking, would bring the cycle back."""
    src = ROOT / "src" / "galprism"
    for module, other in (("posterior", "smc"), ("smc", "posterior")):
        tree = ast.parse((src / f"{module}.py").read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n.split(".")[-1] == other for n in names), (
                f"galprism.{module} imports galprism.{other}"
            )


@pytest.mark.parametrize("sigma", [0.003, 0.1, 3.0])
def test_forward_difference_jacobian_matches_autograd_on_the_builtin_network(sigma):
    """`jacobian="difference"` replaces each VJP by a forward difference of the network: if its
    step were badly scaled (float32 round-off at low noise, curvature at high noise) the MMPS
    covariance products, hence every posterior draw, would be wrong. Against autograd's exact
    J u on the built-in galaxy network, at low, middle and high noise (the difference is
    within 1 % of it there; float32 round-off at high noise sets that floor)."""
    prior = load_priorset("default").priors[0]
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn((3, *prior.shape), generator=g).abs() * 0.5
    x_t = x0 + sigma * torch.randn(x0.shape, generator=g)
    u = torch.randn(x0.shape, generator=g)
    s = torch.tensor(sigma)
    mean, jvp = prior.linearize(x_t, s)
    with torch.no_grad():
        ref_mean = prior.denoise(x_t, s)
    _, exact = torch.func.jvp(lambda z: prior.denoise(z, s), (x_t,), (u,))
    approx = jvp(u)
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=1e-6)
    rel = float((approx - exact).norm() / exact.norm())
    assert rel < 1.5e-2, rel


def test_time_grid_spacing():
    """`rho=0` keeps the uniform grid in log sigma (so existing runs are unchanged); `rho>0`
    spaces sigma^(1/rho) uniformly between the schedule's ends, which are kept exactly."""
    from galprism.diffusion.samplers import time_grid

    class Joint:
        def sigma(self, t):
            return torch.stack([1e-3 * (2e4) ** torch.as_tensor(t, dtype=torch.float64)])

    torch.testing.assert_close(
        time_grid(SamplerConfig(steps=8), Joint()),
        torch.linspace(1.0, 0.0, 9, dtype=torch.float64),
    )
    t = time_grid(SamplerConfig(steps=8, rho=7.0), Joint())
    assert t[0] == 1.0 and t[-1] == 0.0 and bool((t.diff() < 0).all())
    root = Joint().sigma(t)[0] ** (1 / 7)
    torch.testing.assert_close(root.diff(), root.diff()[:1].expand(8))

"""``galprism separate``/``sample``/``priors`` with a real (small, Gaussian) prior folder.

Gaussian priors make the MMPS posterior exact when CG runs to convergence, so the samples
the CLI writes, read back from FITS in the input's units, must follow the closed-form
posterior computed here from the file's pixels, the AB zero points and the cutout's
operator. A wrong flux conversion, HDU order, operator (PSF, downsampling, mask) or seed
wiring shows up as a biased mean or a wrong spread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from astropy.io import fits
from fits_factory import gaussian_psf, make_cutout, run_cli, spy_smc_particles

from galprism.frame import Frame
from galprism.gaussian import GaussianPrior, gaussian_posterior
from galprism.io.read import read_cutout
from galprism.operators import SourceSum
from galprism.priorset import PriorSet, list_builtin_priors

N = 8  # prior grid (1, 8, 8) at 0.1"/px; cutouts 4x4 at 0.2"/px (downsampling 2)


def _smooth_cov(n: int, length: float, amplitude: float) -> torch.Tensor:
    """Squared-exponential covariance over an n x n pixel grid (plus a small diagonal)."""
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).to(torch.float64)
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    return amplitude * torch.exp(-d2 / (2 * length**2)) + 1e-3 * torch.eye(
        n * n, dtype=torch.float64
    )


def assert_follows(samples: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, what: str) -> None:
    """Samples ``(n, D)`` have the exact posterior's mean (rms z-score) and spread (std ratio)."""
    n = samples.shape[0]
    z = (samples.mean(0) - mean) / std * np.sqrt(n)
    rms_z = float(z.pow(2).mean().sqrt())
    ratio = float((samples.std(0) / std).mean())
    assert rms_z < 1.5, f"{what}posterior mean biased: rms z-score {rms_z:.2f} (1 expected)"
    assert 0.85 < ratio < 1.15, f"{what}posterior spread off: sample std / exact std = {ratio:.3f}"


@pytest.fixture(scope="module")
def prior_folder(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    priors = [
        GaussianPrior.from_covariance(
            0.5 + 0.3 * torch.randn((1, N, N), generator=g, dtype=dt), _smooth_cov(N, 2.0, 1.0)
        ),
        GaussianPrior.from_covariance(torch.zeros((1, N, N), dtype=dt), _smooth_cov(N, 0.7, 0.3)),
    ]
    folder = tmp_path_factory.mktemp("prior") / "tiny-gauss"
    PriorSet(
        name="tiny-gauss",
        method="gaussian",
        sources=["galaxy", "sky"],
        priors=priors,
        frame=Frame((1, N, N), pixel_scale=0.1, zeropoint=27.0),
    ).save(folder)
    return folder, priors


@pytest.mark.parametrize(
    "sampler", [[], ["--sampler", "smc", "--particles", "4", "--steps", "64"]], ids=["ddim", "smc"]
)
def test_cli_samples_follow_the_exact_posterior(
    tmp_path, capsys, monkeypatch, prior_folder, sampler
):
    """Output samples (nJy input, prior at AB 27, 2x finer grid) match the closed-form Gaussian
    posterior,
    with the default sampler and with SMC (whose particle weights and resampling must not bias
    it)."""
    folder, priors = prior_folder
    used = spy_smc_particles(monkeypatch)
    cut = make_cutout(
        tmp_path / "cut.fits",
        shape=(4, 4),
        scale=0.2,
        psf=gaussian_psf(3, 0.7),
        sigma=0.05,
        bunit="nJy",
    )
    out = tmp_path / "cut.galprism.fits"
    n = 64
    code, recs, _, err = run_cli(
        [
            "separate",
            cut,
            "--prior",
            folder,
            "-n",
            n,
            "--steps",
            32,
            "--cg-iterations",
            16,
            "-o",
            out,
            "--json",
            "-q",
            "--device",
            "cpu",
            *sampler,
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0 and recs[0]["status"] == "ok", err
    with fits.open(out) as h:
        assert (
            h[0].header["PRIOR"] == "tiny-gauss"
            and h[0].header["GRIDFAC"] == 2
            and h[0].header["NCGITER"] == 16
        )
        assert h[0].header["SAMPLER"] == ("smc" if sampler else "ddim")
        assert h[0].header["NPARTIC"] == (4 if sampler else 16), (
            "the particle count is not recorded"
        )
        x = np.stack([h["GALAXY"].data, h["SKY"].data], axis=1).astype(
            np.float64
        )  # (n, 2, 8, 8) in nJy
    assert used == ([4] if sampler else []), (
        f"SMC ran with particles {used}, not what --particles asked for"
    )
    # Reference, independently of the pipeline's stacking: data and noise on the prior's zero point.
    k = 10 ** (0.4 * (27.0 + 2.5 * np.log10(1e-9 / 3631.0)))  # nJy -> AB 27 (3631 Jy is AB 0)
    obs = read_cutout(cut)
    y = torch.from_numpy(fits.getdata(cut, "SCI").astype(np.float64) * k)[None, None]
    noise_var = torch.full_like(y, (0.05 * k) ** 2)
    op = obs.operator_for(Frame((1, N, N), pixel_scale=0.1), ["galaxy"]).ops[0]
    mean, cov = gaussian_posterior(priors, SourceSum([op, op]), y, noise_var)
    assert_follows(torch.from_numpy(x * k).reshape(n, -1), mean, cov.diagonal().sqrt(), "")


def test_real_prior_is_reproducible_and_batch_independent(
    tmp_path, capsys, monkeypatch, prior_folder
):
    """With the real sampler, the same seed gives the same files, whatever the batch size."""
    folder, _ = prior_folder
    cuts = [
        make_cutout(
            tmp_path / f"c{i}.fits",
            shape=(4, 4),
            scale=0.2,
            psf=gaussian_psf(3, 0.5 + 0.1 * i),
            seed=i,
            header={"MAGZERO": 27.0},
        )
        for i in range(3)
    ]
    outs = {}
    for tag, batch in (("a", 1), ("b", 3), ("c", 3)):
        code, _, _, err = run_cli(
            [
                "separate",
                *cuts,
                "--prior",
                folder,
                "-n",
                4,
                "--steps",
                8,
                "--batch-size",
                batch,
                "--output-dir",
                tmp_path / tag,
                "-q",
            ],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        outs[tag] = [
            fits.getdata(tmp_path / tag / f"c{i}.galprism.fits", "GALAXY") for i in range(3)
        ]
    for i in range(3):
        np.testing.assert_array_equal(
            outs["b"][i], outs["c"][i], err_msg="same seed and batch gave different samples"
        )
        # Batched PSFs are zero-padded to a common size, so FFT rounding may differ slightly.
        np.testing.assert_allclose(
            outs["a"][i],
            outs["b"][i],
            rtol=1e-4,
            atol=1e-5,
            err_msg="samples depend on the batch size",
        )


def test_priors_lists_builtins_and_describes_a_folder(tmp_path, capsys, monkeypatch, prior_folder):
    """`galprism priors --json` lists the built-in priors; given a folder it describes that
    prior."""
    folder, _ = prior_folder
    code, _, out, err = run_cli(["priors", "--json"], capsys, monkeypatch)
    assert code == 0, err
    listed = json.loads(out)["priors"]
    assert [p["name"] for p in listed] == list_builtin_priors()
    code, _, out, err = run_cli(["priors", folder, "--json"], capsys, monkeypatch)
    assert code == 0, err
    info = json.loads(out)["priors"][0]
    assert (
        info["sources"] == ["galaxy", "sky"]
        and info["pixel_scale"] == 0.1
        and info["shape"] == [1, N, N]
    )
    code, _, out, _ = run_cli(["priors", folder], capsys, monkeypatch)
    assert code == 0 and "galaxy, sky" in out and "0.1" in out
    code, _, _, err = run_cli(["priors", tmp_path / "nowhere"], capsys, monkeypatch)
    assert code == 1 and "nowhere" in err[-1]


def test_sample_draws_from_the_prior(tmp_path, capsys, monkeypatch, prior_folder):
    """`galprism sample` writes N draws per source whose mean matches the prior's mean."""
    folder, priors = prior_folder
    out = tmp_path / "s.fits"
    n = 256
    code, _, _, err = run_cli(
        ["sample", "--prior", folder, "-n", n, "--steps", 32, "-o", out, "--device", "cpu"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    with fits.open(out) as h:
        for k, name in enumerate(("GALAXY", "SKY")):
            x = torch.from_numpy(h[name].data.astype(np.float64)).reshape(n, -1)
            std = priors[k].covariance().diagonal().sqrt()
            z = (x.mean(0) - priors[k].mean.reshape(-1)) / std * np.sqrt(n)
            assert float(z.pow(2).mean().sqrt()) < 1.5, f"{name}: prior samples biased"


def test_support_confines_a_source_and_follows_the_exact_posterior(
    tmp_path, capsys, monkeypatch, prior_folder
):
    """A prior's ``support`` makes its galaxy zero outside a disk and the rest follow the confined
    model exactly.

    If the support were only applied to the outputs (not to the operator), the galaxy
    inside the disk and the sky would keep the unconstrained posterior and fail the
    comparison with the closed form of the confined model; ``--support none`` must give
    back the unconstrained posterior.
    """
    from galprism.operators import Mask
    from galprism.priorset import load_priorset
    from galprism.support import Support
    from galprism.support import disk as disk_support

    folder, priors = prior_folder
    confined = tmp_path / "tiny-gauss-confined"
    ps = load_priorset(folder)
    ps.support = {"galaxy": 2.5}
    ps.save(confined)
    assert load_priorset(confined).support == {"galaxy": Support(2.5)}, "support lost in prior.json"
    cut = make_cutout(
        tmp_path / "cut.fits",
        shape=(4, 4),
        scale=0.2,
        psf=gaussian_psf(3, 0.7),
        sigma=0.05,
        header={"MAGZERO": 27.0},
    )
    n = 64
    outs = {}
    # Every pixel of a 4x4 cutout is an edge pixel: its brightest peak would get a
    # free-form box, which the closed forms below do not model.
    no_ff = ["--freeform-edge", "none", "--freeform-bright", "none"]
    for tag, extra in (("prior", []), ("none", ["--support", "none"])):
        out = tmp_path / f"{tag}.fits"
        code, _, _, err = run_cli(
            [
                "separate",
                cut,
                "--prior",
                confined,
                "-n",
                n,
                "--steps",
                32,
                "--cg-iterations",
                16,
                "-o",
                out,
                "-q",
                *no_ff,
                *extra,
            ],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        with fits.open(out) as h:
            outs[tag] = (
                h[0].header["SUPPORT"],
                np.stack([h["GALAXY"].data, h["SKY"].data], axis=1).astype(np.float64),
            )
    assert outs["prior"][0] == "galaxy=2.5" and outs["none"][0] == "none"
    disk = disk_support((1, N, N), 2.5)
    assert 0 < int(disk.sum()) < N * N
    outside = ~disk[0].numpy()  # single-band outputs are (samples, H, W)
    assert np.all(outs["prior"][1][:, 0][:, outside] == 0), "galaxy light outside its support"
    assert np.abs(outs["none"][1][:, 0][:, outside]).max() > 0, (
        "--support none still confined the galaxy"
    )

    obs = read_cutout(cut)
    y = torch.from_numpy(fits.getdata(cut, "SCI").astype(np.float64))[None, None]
    noise_var = torch.full_like(y, 0.05**2)
    op = obs.operator_for(Frame((1, N, N), pixel_scale=0.1), ["galaxy"]).ops[0]
    for tag, galaxy_op in (("prior", op @ Mask(disk)), ("none", op)):
        mean, cov = gaussian_posterior(priors, SourceSum([galaxy_op, op]), y, noise_var)
        keep = (
            torch.cat([disk.flatten(), torch.ones(N * N, dtype=torch.bool)])
            if tag == "prior"
            else torch.ones(2 * N * N, dtype=torch.bool)
        )
        samples = torch.from_numpy(outs[tag][1]).reshape(n, -1)[:, keep]
        assert_follows(samples, mean[keep], cov.diagonal().sqrt()[keep], f"{tag}: ")


def test_bad_support_is_refused_with_one_line(tmp_path, capsys, monkeypatch, prior_folder):
    """A support naming an unknown source or a radius <= 0 is a usage error (exit 2) or a broken
    prior folder (exit 1)."""
    folder, _ = prior_folder
    cut = make_cutout(
        tmp_path / "cut.fits",
        shape=(4, 4),
        scale=0.2,
        psf=gaussian_psf(3, 0.7),
        header={"MAGZERO": 27.0},
    )
    for bad, needle in (("star=3", "star"), ("galaxy=0", "galaxy=0"), ("galaxy", "SOURCE=RADIUS")):
        code, _, _, err = run_cli(
            ["separate", cut, "--prior", folder, "--support", bad, "-o", tmp_path / "x.fits", "-q"],
            capsys,
            monkeypatch,
        )
        assert code == 2 and len(err) == 1 and needle in err[0], (bad, code, err)
    assert not (tmp_path / "x.fits").exists()
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(folder, broken)
    manifest = json.loads((broken / "prior.json").read_text())
    manifest["support"] = {"sky": -1}
    (broken / "prior.json").write_text(json.dumps(manifest))
    code, _, _, err = run_cli(
        ["separate", cut, "--prior", broken, "-o", tmp_path / "y.fits", "-q"], capsys, monkeypatch
    )
    assert code == 1 and len(err) == 1 and "prior.json" in err[0] and "sky" in err[0], (code, err)


def test_chi2_of_the_samples_is_one_when_the_data_follow_the_prior(tmp_path, capsys, monkeypatch):
    """CHI2 (each sample's predicted data against the data) has expectation 1 for data drawn
    from the prior itself; CHI2MOD (the mean model's) is lower by the parameters the data fix.

    If CHI2 were computed from the mean model, or with the wrong noise or units, its mean
    over cutouts would miss 1; if the per-sample models were wrong (not each sample's own
    light) it would too. 16 cutouts of 64 pixels: the mean's standard error is about 0.05.
    """
    n_prior, n_cut = 16, 8
    g = torch.Generator().manual_seed(5)
    dt = torch.float64
    priors = [
        GaussianPrior.from_covariance(
            torch.full((1, n_prior, n_prior), 0.3, dtype=dt), _smooth_cov(n_prior, 2.5, 1.0)
        ),
        GaussianPrior.from_covariance(
            torch.zeros((1, n_prior, n_prior), dtype=dt), _smooth_cov(n_prior, 1.0, 0.2)
        ),
    ]
    folder = tmp_path / "prior"
    PriorSet(
        name="g16",
        method="gaussian",
        sources=["galaxy", "sky"],
        priors=priors,
        frame=Frame((1, n_prior, n_prior), pixel_scale=0.1, zeropoint=27.0),
    ).save(folder)
    psf, sigma = gaussian_psf(5, 0.8), 0.1
    template = read_cutout(
        make_cutout(
            tmp_path / "t.fits",
            shape=(n_cut, n_cut),
            scale=0.2,
            psf=psf,
            sigma=sigma,
            header={"MAGZERO": 27.0},
        )
    )
    op = template.operator_for(Frame((1, n_prior, n_prior), pixel_scale=0.1), ["galaxy"]).ops[0]
    cuts = []
    for i in range(16):
        x = sum(p.sample(1, generator=g) for p in priors)  # (1, 1, N, N)
        y = (
            op.apply(x.to(dt))[0, 0].numpy()
            + sigma * torch.randn((n_cut, n_cut), generator=g, dtype=dt).numpy()
        )
        cuts.append(
            make_cutout(
                tmp_path / f"c{i:02d}.fits",
                shape=(n_cut, n_cut),
                scale=0.2,
                psf=psf,
                sigma=sigma,
                image=y,
                header={"MAGZERO": 27.0},
            )
        )
    code, recs, _, err = run_cli(
        [
            "separate",
            *cuts,
            "--prior",
            folder,
            "-n",
            8,
            "--steps",
            32,
            "--cg-iterations",
            16,
            "--output-dir",
            tmp_path / "out",
            "--json",
            "-q",
            "--freeform-edge",
            "none",
            "--freeform-bright",
            "none",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    chi2 = np.array([r["chi2"] for r in recs])
    chi2_model = np.array(
        [fits.getheader(tmp_path / "out" / f"c{i:02d}.galprism.fits")["CHI2MOD"] for i in range(16)]
    )
    assert abs(chi2.mean() - 1.0) < 0.2, (
        f"mean CHI2 {chi2.mean():.3f} over data drawn from the prior (1 expected)"
    )
    assert chi2_model.mean() < chi2.mean() - 0.05, (
        f"CHI2MOD {chi2_model.mean():.3f} not below CHI2 {chi2.mean():.3f}"
    )

"""Checkpoints and prior folders: round trips, no code execution, clear errors."""

import json
import pickle

import pytest
import torch

from galprism.checkpoint import PriorCheckpoint, load_prior, save_prior
from galprism.diffusion import DiffusionPrior, VESchedule
from galprism.errors import CheckpointError, OutputExistsError
from galprism.frame import Frame
from galprism.gaussian import GaussianPrior
from galprism.priorset import PriorSet, load_priorset


def _unet_prior():
    torch.manual_seed(0)
    p = DiffusionPrior(
        (1, 8, 8),
        "unet",
        {"channels": 1, "widths": [8, 16], "emb_features": 16},
        VESchedule(1e-3, 20.0),
        0.4,
    )
    with torch.no_grad():
        for q in p.parameters():
            q.add_(0.01 * torch.randn_like(q))
    return p


def test_diffusion_and_gaussian_priors_round_trip(tmp_path):
    """Saved then loaded priors must denoise identically and keep their metadata."""
    diff = _unet_prior()
    gauss = GaussianPrior.fit(torch.randn(50, 1, 8, 8), 4)
    x = torch.randn(3, 1, 8, 8)
    for prior in (diff, gauss):
        path = tmp_path / "p.pt"
        save_prior(PriorCheckpoint(prior, "galaxy", {"data": "unit test"}), path)
        got = load_prior(path)
        assert got.name == "galaxy" and got.metadata == {"data": "unit test"}
        assert torch.allclose(got.prior.denoise(x, 0.5), prior.denoise(x, 0.5), atol=1e-6)
        assert not any(p.requires_grad for p in got.prior.parameters())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_code_is_refused(tmp_path):
    """A pickle that would run code on load must be refused (weights_only=True)."""
    path = tmp_path / "evil.pt"
    torch.save(
        {"format": "galprism-prior", "x": _Evil()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL
    )
    with pytest.raises(CheckpointError, match="refused"):
        load_prior(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "version", "foreign", "weights"])
def test_damaged_checkpoints_give_one_line_errors(tmp_path, damage):
    """Corrupted, foreign, wrong-version or mismatched checkpoints name the file and problem."""
    path = tmp_path / "p.pt"
    save_prior(PriorCheckpoint(_unet_prior(), "sky"), path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
        match = "corrupted"
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
        match = "corrupted"
    elif damage == "version":
        payload = torch.load(path, weights_only=True)
        payload["format_version"] = 99
        torch.save(payload, path)
        match = "version 99"
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
        match = "not a galprism prior"
    else:
        payload = torch.load(path, weights_only=True)
        payload["config"]["backbone_kwargs"]["widths"] = [4, 8]
        torch.save(payload, path)
        match = "do not match"
    with pytest.raises(CheckpointError, match=match) as info:
        load_prior(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_prior_folder_round_trip_and_errors(tmp_path):
    """A prior folder reloads with its sources, units and a stable digest."""
    priors = [_unet_prior(), GaussianPrior.fit(torch.randn(40, 1, 8, 8), 3)]
    ps = PriorSet(
        "test",
        "diffusion",
        ["galaxy", "sky"],
        priors,
        Frame((1, 8, 8), pixel_scale=0.168, zeropoint=27.0, bunit="count", flux_scale=0.5),
        manifest={"training": {"data": "unit test"}},
    )
    ps.save(tmp_path / "prior")
    got = load_priorset(tmp_path / "prior")
    assert (
        got.sources == ["galaxy", "sky"] and got.frame.flux_scale == 0.5 and got.sha256 == ps.sha256
    )
    assert got.frame == ps.frame, "the frame must be stored once and read back whole"
    manifest = json.loads((tmp_path / "prior" / "prior.json").read_text())
    assert "pixel_scale" not in manifest and manifest["frame"]["pixel_scale"] == 0.168
    assert got.describe()["training"] == {"data": "unit test"}
    with pytest.raises(OutputExistsError, match="already holds"):
        ps.save(tmp_path / "prior")
    with pytest.raises(CheckpointError, match="no such prior"):
        load_priorset(tmp_path / "missing")
    (tmp_path / "prior" / "prior.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted manifest"):
        load_priorset(tmp_path / "prior")
    (tmp_path / "prior" / "prior.json").write_text(
        json.dumps({"format": "galprism-priorset", "format_version": 7})
    )
    with pytest.raises(CheckpointError, match="version 7"):
        load_priorset(tmp_path / "prior")


def test_priorset_separate_converts_flux_units():
    """Separating data in data units must equal separating scaled data in prior units."""
    from galprism.diffusion import SamplerConfig
    from galprism.testing import gaussian_problem

    prob = gaussian_problem(size=4, seed=0)
    ps = PriorSet("g", "gaussian", ["a", "b"], prob.priors, Frame((1, 4, 4), flux_scale=3.0))
    gens = [torch.Generator().manual_seed(1)]
    x = ps.separate(
        prob.y * 3.0,
        prob.noise_var * 9.0,
        prob.operator,
        SamplerConfig(n_samples=2, steps=4),
        generators=gens,
    )
    ps1 = PriorSet("g", "gaussian", ["a", "b"], prob.priors, Frame((1, 4, 4)))
    x1 = ps1.separate(
        prob.y,
        prob.noise_var,
        prob.operator,
        SamplerConfig(n_samples=2, steps=4),
        generators=[torch.Generator().manual_seed(1)],
    )
    assert torch.allclose(x, 3.0 * x1, atol=1e-8)

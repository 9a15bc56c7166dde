"""Frame: the one record of a prior's grid and flux convention."""

from __future__ import annotations

import json

import pytest
import torch

from galprism.errors import CheckpointError, ConfigError
from galprism.frame import Frame
from galprism.gaussian import GaussianPrior
from galprism.priorset import PriorSet, load_priorset


def test_frame_refuses_inconsistent_facts():
    """Each bad fact is a ConfigError naming it: a zero flux scale would divide the data by
    zero, a band list of the wrong length would mislabel channels, a pixel scale for a vector
    source has no meaning."""
    for kw, needle in (
        ({"shape": (1, 0, 4)}, "shape"),
        ({"shape": (2, 4)}, "shape"),
        ({"shape": (1, 4, 4.5)}, "shape"),
        ({"shape": (2, 4, 4), "bands": ("g",)}, "band"),
        ({"shape": (2, 4, 4), "bands": ("g", "g")}, "distinct"),
        ({"shape": (1, 4, 4), "pixel_scale": 0.0}, "pixel_scale"),
        ({"shape": (1, 4, 4), "pixel_scale": float("nan")}, "pixel_scale"),
        ({"shape": (5,), "pixel_scale": 0.2}, "image shape"),
        ({"shape": (1, 4, 4), "zeropoint": float("inf")}, "zeropoint"),
        ({"shape": (1, 4, 4), "bunit": " "}, "bunit"),
        ({"shape": (1, 4, 4), "flux_scale": 0.0}, "flux_scale"),
        ({"shape": (1, 4, 4), "flux_scale": -1.0}, "flux_scale"),
    ):
        with pytest.raises(ConfigError, match=needle):
            Frame(**kw)


def test_frame_round_trips_through_json():
    """to_json/from_json must give back the same frame, and unknown keys must not pass
    silently (a misspelt 'pixelscale' would otherwise leave the grid unknown)."""
    f = Frame((2, 8, 8), bands=("g", "r"), pixel_scale=0.168, zeropoint=27.0, bunit="nJy")
    assert Frame.from_json(json.loads(json.dumps(f.to_json()))) == f
    assert Frame((5,)).is_image is False and f.is_image
    with pytest.raises(ConfigError, match="pixelscale"):
        Frame.from_json({"shape": [1, 4, 4], "pixelscale": 0.2}, "x/prior.json")
    with pytest.raises(ConfigError, match="x/prior.json"):
        Frame.from_json({"pixel_scale": 0.2}, "x/prior.json")


def test_prior_folder_keeps_one_frame(tmp_path):
    """prior.json holds the frame; the checkpoints hold no copy of it. A folder without a frame
    (the old layout) or with a frame that disagrees with the networks is refused with a
    one-line CheckpointError naming the file."""
    g = GaussianPrior.fit(torch.randn(30, 1, 4, 4), 2)
    frame = Frame((1, 4, 4), pixel_scale=0.2, zeropoint=30.0, bunit="nJy", flux_scale=2.0)
    PriorSet("f", "gaussian", ["galaxy"], [g], frame).save(tmp_path / "p")
    got = load_priorset(tmp_path / "p")
    assert got.frame == frame
    payload = torch.load(tmp_path / "p" / "galaxy.pt", weights_only=True)
    assert "pixel_scale" not in payload and "normalisation" not in payload
    manifest = json.loads((tmp_path / "p" / "prior.json").read_text())
    manifest["frame"]["shape"] = [1, 5, 5]
    (tmp_path / "p" / "prior.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="prior.json.*shape"):
        load_priorset(tmp_path / "p")
    del manifest["frame"]
    (tmp_path / "p" / "prior.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="frame"):
        load_priorset(tmp_path / "p")
    with pytest.raises(ConfigError, match="frame"):
        PriorSet("f", "gaussian", ["galaxy"], [g], (1, 4, 4))


def test_builtin_priors_load_with_their_frame():
    """The shipped priors are in the frame layout: HSC i-band grid at 0.168"/px, ZP 27."""
    for name in ("hsc-galaxy", "hsc-galaxy-gaussian"):
        ps = load_priorset(name)
        assert ps.frame.shape == (1, 48, 48) and ps.frame.pixel_scale == 0.168
        assert ps.frame.zeropoint == 27.0 and ps.frame.flux_scale > 0

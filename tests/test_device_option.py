"""--device: auto by default in every command, and a missing CUDA named before any work."""

from __future__ import annotations

import click
import pytest
import torch
from fits_factory import FakePrior, make_cutout, run_cli

from galprism.cli.main import cli
from galprism.errors import ConfigError
from galprism.separate import resolve_device

COMMANDS = ("separate", "sample", "logprob", "fit", "evaluate")


def test_every_device_option_defaults_to_auto():
    """A command defaulting to cpu would ignore the GPU its siblings use."""
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        [option] = [p for p in command.params if p.name == "device"]
        assert option.default == "auto", f"galprism {name} --device defaults to {option.default}"


def test_cuda_asked_for_and_absent_is_named(tmp_path, capsys, monkeypatch):
    """Without CUDA, --device cuda:1 is a usage error naming the device, not a torch traceback
    from the first batch; the library says the same with a ConfigError."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="cuda:1"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == "cpu"
    p = make_cutout(tmp_path / "c.fits")
    code, recs, _, err = run_cli(
        ["separate", p, "--output-dir", tmp_path / "o", "--device", "cuda:1"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
    )
    assert code == 2 and recs == [], err
    assert any("--device cuda:1" in line and "CUDA" in line for line in err), err
    assert not (tmp_path / "o" / "c.galprism.fits").exists()

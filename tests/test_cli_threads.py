"""``--threads`` of separate, fit and evaluate: one shared option, validated before any work."""

from __future__ import annotations

import pytest
import torch
from fits_factory import FakePrior, make_cutout, run_cli

from galprism.cli._threads import set_threads
from galprism.errors import UsageError


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["separate", "fit", "evaluate"])
def test_threads_below_one_is_a_usage_error(
    command, tmp_path, capsys, monkeypatch, restore_threads
):
    """--threads 0 must stop with exit status 2 and one line naming the option, writing nothing."""
    argv = {
        "separate": ["separate", make_cutout(tmp_path / "c.fits"), "--output-dir", tmp_path / "o"],
        "fit": [
            "fit",
            "--view",
            f"v:a:{tmp_path / 'none.h5'}",
            "--sources",
            "a",
            "--size",
            "8",
            "-o",
            tmp_path / "o",
        ],
        "evaluate": ["evaluate", "-o", tmp_path / "o"],
    }[command]
    code, _, _, err = run_cli([*argv, "--threads", "0"], capsys, monkeypatch, prior=FakePrior())
    assert code == 2, f"{command} --threads 0 gave exit status {code}: {err}"
    assert len(err) == 1 and "--threads" in err[0], err
    assert not (tmp_path / "o").exists(), f"{command} wrote output before rejecting --threads"


def test_set_threads_defaults(monkeypatch, restore_threads):
    """separate defaults to one thread; fit/evaluate keep torch's count; an explicit value wins."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    set_threads(None, default_one=False)
    assert torch.get_num_threads() == 2, (
        "fit/evaluate changed torch's thread count without --threads"
    )
    set_threads(None, default_one=True)
    assert torch.get_num_threads() == 1, "separate did not default to one thread"
    set_threads(2, default_one=True)
    assert torch.get_num_threads() == 2, "--threads 2 was not applied"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    set_threads(None, default_one=True)
    assert torch.get_num_threads() == 2, "OMP_NUM_THREADS should leave torch's count alone"
    with pytest.raises(UsageError):
        set_threads(-1, default_one=False)

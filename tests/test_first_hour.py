"""What a new user meets in the first hour: each test names the mistake it guards against."""

from __future__ import annotations

import math

import numpy as np
from astropy.io import fits
from fits_factory import make_cutout, run_cli


def test_logprob_scores_sample_and_separate_outputs_of_the_builtin_prior(
    tmp_path, capsys, monkeypatch
):
    """`galprism logprob` on `sample`'s and on `separate`'s FITS output gives finite log p with the
    float32 built-in network (it crashed: float64 FITS pixels met float32 weights)."""
    drawn = tmp_path / "drawn.fits"
    code, _, _, err = run_cli(
        ["sample", "-n", "1", "--steps", "2", "--source", "galaxy", "-o", drawn, "--device", "cpu"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    cut = make_cutout(
        tmp_path / "cut.fits", shape=(48, 48), scale=0.168, sigma=0.5, header={"MAGZERO": 27.0}
    )
    separated = tmp_path / "cut.galprism.fits"
    code, _, _, err = run_cli(
        ["separate", cut, "-o", separated, "-n", "1", "--steps", "2", "--device", "cpu", "-q"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    for path in (drawn, separated):
        code, recs, _, err = run_cli(
            ["logprob", "--source", "galaxy", "--steps", "2", "--probes", "1", "--json", path],
            capsys,
            monkeypatch,
        )
        assert code == 0, f"{path.name}: {err}"
        assert len(recs) == 1 and math.isfinite(recs[0]["log_prob"]), recs

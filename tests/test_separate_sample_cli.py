"""``galprism sample``: prior samples as FITS cubes, seeded per source, no clobbering."""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from fits_factory import FakePrior, run_cli


def test_sample_writes_one_cube_per_source(tmp_path, capsys, monkeypatch):
    """-n N gives an (N, ny, nx) cube per source with the prior's provenance and per-source
    seeds."""
    out = tmp_path / "s.fits"
    code, recs, _, err = run_cli(
        ["sample", "--prior", "fake", "-n", "3", "-o", out, "--json", "--seed", "4"],
        capsys,
        monkeypatch,
        prior=FakePrior(bunit="nJy", zeropoint=31.4),
    )
    assert code == 0, err
    with fits.open(out, checksum=True) as h:
        assert [x.name for x in h] == ["PRIMARY", "GALAXY", "BACKGROUND"]
        assert h["GALAXY"].data.shape == (3, 16, 16) and h["GALAXY"].header["BUNIT"] == "nJy"
        assert (
            h[0].header["NSAMPLE"] == 3
            and h[0].header["RUNSEED"] == 4
            and h[0].header["PRIOR"] == "fake"
        )
        assert h["GALAXY"].header["SEED"] != h["BACKGROUND"].header["SEED"], "sources share a seed"
        first = np.array(h["GALAXY"].data)
    assert recs[0]["sources"]["galaxy"]["seed"] == fits.getval(out, "SEED", "GALAXY")
    code, _, _, err = run_cli(
        ["sample", "-n", "3", "-o", out], capsys, monkeypatch, prior=FakePrior()
    )
    assert code == 1 and "exists" in err[-1], "an existing output must not be overwritten"
    code, _, _, _ = run_cli(
        ["sample", "-n", "3", "-o", out, "--overwrite", "--seed", "4", "--source", "galaxy"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
    )
    assert code == 0
    with fits.open(out) as h:
        assert [x.name for x in h] == ["PRIMARY", "GALAXY"]
        np.testing.assert_array_equal(
            h["GALAXY"].data, first, err_msg="same seed gave different prior samples"
        )


def test_unknown_source_is_a_usage_error(tmp_path, capsys, monkeypatch):
    """Asking for a source the prior does not have exits 2 naming the known sources."""
    code, _, _, err = run_cli(
        ["sample", "-n", "2", "-o", tmp_path / "s.fits", "--source", "star"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
    )
    assert code == 2 and "star" in err[-1] and "galaxy" in err[-1]
    assert not (tmp_path / "s.fits").exists()


def test_unknown_sampler_is_a_usage_error(tmp_path, capsys, monkeypatch):
    """A misspelt --sampler exits 2 naming the choices before any prior is sampled, not a traceback
    from inside."""
    code, _, _, err = run_cli(
        ["sample", "-n", "2", "-o", tmp_path / "s.fits", "--sampler", "pcc"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
    )
    assert code == 2 and any("pcc" in line and "ddim" in line for line in err), err
    assert not (tmp_path / "s.fits").exists()

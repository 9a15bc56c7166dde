"""Atomic, checksummed, no-clobber output writing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.io import fits

from galprism.errors import OutputExistsError
from galprism.io.write import image_hdu, primary_hdu, source_hdus, write_atomic


def _hdul(value: float = 1.0) -> fits.HDUList:
    return fits.HDUList(
        [
            primary_hdu({"SEED": (5, "seed")}, ["galprism separate a.fits"]),
            image_hdu(np.full((4, 4), value), "X", wcs=None, bunit="nJy"),
        ]
    )


def test_write_has_checksums_and_refuses_to_clobber(tmp_path):
    """Outputs carry valid CHECKSUM/DATASUM; an existing file is kept unless overwrite=True."""
    out = tmp_path / "o.fits"
    write_atomic(_hdul(1.0), out)
    with fits.open(out, checksum=True) as h:  # astropy warns on a checksum mismatch
        assert "CHECKSUM" in h[1].header and "DATASUM" in h[1].header
        assert h[1].header["BUNIT"] == "nJy" and h[0].header["SEED"] == 5
    with pytest.raises(OutputExistsError, match="o.fits.*overwriting is not allowed"):
        write_atomic(_hdul(2.0), out)
    assert fits.getdata(out, "X")[0, 0] == 1.0, "existing output was modified"
    write_atomic(_hdul(2.0), out, overwrite=True)
    assert fits.getdata(out, "X")[0, 0] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.fits"], "temporary files left behind"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    """An exception during writing removes the temporary file and creates no output."""

    def boom(self, fileobj, **kw):
        with open(fileobj, "wb") as fh:
            fh.write(b"SIMPLE  =                    T" + b" " * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fits.HDUList, "writeto", boom)
    with pytest.raises(Exception, match="No space left"):
        write_atomic(_hdul(), tmp_path / "o.fits")
    assert list(tmp_path.iterdir()) == [], "partial or temporary file left after a failed write"


def test_crash_mid_write_leaves_no_partial_output(tmp_path):
    """A process killed while writing leaves no file under the final name (only a hidden .tmp)."""
    code = textwrap.dedent(
        f"""
        import os, numpy as np
        from astropy.io import fits
        from galprism.io.write import write_atomic, primary_hdu, image_hdu
        real = fits.HDUList.writeto
        def crash(self, fileobj, **kw):
            real(self, fileobj, **kw)
            with open(fileobj, "r+b") as fh:
                fh.truncate(1000)  # half-written
            os._exit(9)  # killed: no exception handler runs
        fits.HDUList.writeto = crash
        image = image_hdu(np.ones((64, 64)), "X", wcs=None, bunit=None)
        hdul = fits.HDUList([primary_hdu({{}}), image])
        write_atomic(hdul, {str(tmp_path / "o.fits")!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()
    assert not (tmp_path / "o.fits").exists(), "a crash left a partial file under the final name"
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(n.startswith(".o.fits.") and n.endswith(".tmp") for n in leftovers), leftovers


def test_source_hdus_layout():
    """Each source gives a float32 cube (n, ny, nx) plus MEAN and STD; a band axis is kept when C >
    1."""
    rng = np.random.default_rng(0)
    s = rng.normal(size=(5, 1, 6, 7))
    cube, mean, std = source_hdus("galaxy", s, wcs=None, bunit="nJy")
    assert (cube.name, mean.name, std.name) == ("GALAXY", "GALAXY_MEAN", "GALAXY_STD")
    assert cube.data.shape == (5, 6, 7) and cube.data.dtype == np.float32
    np.testing.assert_allclose(mean.data, s[:, 0].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std.data, s[:, 0].std(0, ddof=1), rtol=1e-5)
    cube, mean, _ = source_hdus("g", rng.normal(size=(4, 3, 6, 7)), wcs=None, bunit=None)
    assert cube.data.shape == (4, 3, 6, 7) and mean.data.shape == (3, 6, 7)
    cube, _, std = source_hdus("g", s[:1], wcs=None, bunit=None)
    assert cube.data.shape == (1, 6, 7) and np.all(std.data == 0), (
        "a point estimate has zero spread"
    )


def test_history_wraps_long_command_lines_at_spaces():
    """A long command line survives in HISTORY: joining the cards with spaces gives it back."""
    line = (
        "galprism separate "
        + " ".join(f"/data/survey/tract{i:04d}/cutout_{i:06d}.fits" for i in range(6))
        + " --n-samples 8"
    )
    hdu = primary_hdu({}, [line])
    cards = [str(c) for c in hdu.header["HISTORY"]]
    assert len(cards) > 1 and all(len(c) <= 72 for c in cards)
    assert " ".join(cards) == line

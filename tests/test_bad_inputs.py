"""Bad inputs in a batch: each gives one error line naming the file and the problem, the batch
completes.

Every case runs ``galprism separate`` through its real entry point on a batch of a good
file, the case's file, and another good file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from fits_factory import FakePrior, gaussian_psf, make_cutout, run_cli

ZP = {"MAGZERO": 27.0}
#: a 3-band cube names its bands, so that they can be matched to a prior's
BANDS = {"BANDS": "g,r,i"}


def _truncated(path: Path) -> Path:
    make_cutout(path, header=ZP)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_fits(path: Path) -> Path:
    path.write_text("id,ra,dec\n1,150.1,2.2\n")
    return path


def _empty_hdu(path: Path) -> Path:
    fits.PrimaryHDU().writeto(path)
    return path


def _nan_only(path: Path) -> Path:
    return make_cutout(path, image=np.full((16, 16), np.nan), header=ZP)


def _all_masked(path: Path) -> Path:
    return make_cutout(path, mask=np.ones((16, 16), int), header=ZP)


def _negative_variance(path: Path) -> Path:
    var = np.full((16, 16), 0.01)
    var[3, 3] = -0.01
    return make_cutout(path, noise="VARIANCE", noise_values=var, header=ZP)


def _zero_variance(path: Path) -> Path:
    return make_cutout(path, noise="VARIANCE", noise_values=np.zeros((16, 16)), header=ZP)


def _psf_larger_than_image(path: Path) -> Path:
    return make_cutout(path, psf=gaussian_psf(21, 2.0), header=ZP)


def _non_finite_psf(path: Path) -> Path:
    psf = gaussian_psf(9, 1.0)
    psf[4, 4] = np.nan
    return make_cutout(path, psf=psf, header=ZP)


def _off_center_psf(path: Path) -> Path:
    psf = np.zeros((11, 11))
    psf[1, 1] = 1.0
    return make_cutout(path, psf=psf, header=ZP)


def _wrong_band_count(path: Path) -> Path:
    return make_cutout(
        path, shape=(3, 16, 16), psf=gaussian_psf(9, 1.0, n_bands=2), header={**ZP, **BANDS}
    )


def _unnamed_cube(path: Path) -> Path:
    return make_cutout(path, shape=(3, 16, 16), header=ZP)


BAD = {
    "truncated FITS": (_truncated, "truncated"),
    "not a FITS file": (_not_fits, "not a readable FITS file"),
    "empty HDU": (_empty_hdu, "empty HDU"),
    "NaN-only image": (_nan_only, "no finite pixel"),
    "all pixels masked": (_all_masked, "all pixels are masked"),
    "negative variance": (_negative_variance, "zero or negative"),
    "zero variance": (_zero_variance, "zero or negative"),
    "PSF larger than the image": (_psf_larger_than_image, "larger than the 16x16 image"),
    "non-finite PSF": (_non_finite_psf, "non-finite"),
    "off-center PSF": (_off_center_psf, "off-center"),
    "wrong band count": (_wrong_band_count, "2 band"),
    "cube without band names": (_unnamed_cube, "no band names"),
}


def _batch(tmp_path: Path, bad: Path) -> list[Path]:
    return [
        make_cutout(tmp_path / "good1.fits", seed=1, header=ZP),
        bad,
        make_cutout(tmp_path / "good2.fits", seed=2, header=ZP),
    ]


def _check_rest_completed(recs: list[dict], tmp_path: Path) -> None:
    for name in ("good1", "good2"):
        rec = next(r for r in recs if Path(r["input"]).stem == name)
        assert rec["status"] == "ok", f"{name} did not complete: {rec}"
        assert (tmp_path / "out" / f"{name}.galprism.fits").exists()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_reported_and_the_batch_completes(tmp_path, capsys, monkeypatch, case):
    """One error line naming the file and the problem, exit status 1, the good files still
    separated."""
    make, problem = BAD[case]
    bad = make(tmp_path / "bad.fits")
    prior = FakePrior(shape=(3, 16, 16)) if case == "wrong band count" else FakePrior()
    paths = _batch(tmp_path, bad)
    if case == "wrong band count":  # a 3-band prior, so that the good files are 3-band too
        paths = [
            make_cutout(
                tmp_path / f"good{i}.fits", shape=(3, 16, 16), seed=i, header={**ZP, **BANDS}
            )
            for i in (1, 2)
        ]
        paths.insert(1, bad)
    code, recs, _, err = run_cli(
        ["separate", *paths, "--output-dir", tmp_path / "out", "--json", "-q"],
        capsys,
        monkeypatch,
        prior=prior,
    )
    assert code == 1, f"{case}: exit status {code}, expected 1"
    assert len(err) == 1, f"{case}: expected exactly one stderr line, got {err}"
    assert str(bad) in err[0] and problem in err[0], (
        f"{case}: error line does not name the file and the problem: {err[0]}"
    )
    bad_rec = next(r for r in recs if r["input"] == str(bad))
    assert (
        bad_rec["status"] == "error"
        and problem in bad_rec["error"]
        and "\n" not in bad_rec["error"]
    )
    assert not (tmp_path / "out" / "bad.galprism.fits").exists()
    _check_rest_completed(recs, tmp_path)


def test_missing_file_in_a_stdin_list(tmp_path, capsys, monkeypatch):
    """A path on stdin that does not exist is one error; the other listed files are separated."""
    paths = _batch(tmp_path, tmp_path / "nowhere" / "gone.fits")
    code, recs, _, err = run_cli(
        ["separate", "-", "--output-dir", tmp_path / "out", "--json", "-q"],
        capsys,
        monkeypatch,
        prior=FakePrior(),
        stdin="\n".join(map(str, paths)) + "\n",
    )
    assert code == 1
    assert len(err) == 1 and "gone.fits" in err[0] and "no such file" in err[0], err
    _check_rest_completed(recs, tmp_path)


def test_big_endian_data_works(tmp_path, capsys, monkeypatch):
    """Big-endian (FITS-native) float64 data in every HDU is separated like any other file."""
    img = np.random.default_rng(0).normal(size=(16, 16))
    bad = make_cutout(tmp_path / "be.fits", image=img, image_dtype=">f8", header=ZP)
    prior = FakePrior()
    code, recs, _, err = run_cli(
        [
            "separate",
            *_batch(tmp_path, bad),
            "--output-dir",
            tmp_path / "out",
            "--json",
            "-q",
            "--batch-size",
            "1",
        ],
        capsys,
        monkeypatch,
        prior=prior,
    )
    assert code == 0 and err == [], err
    assert all(r["status"] == "ok" for r in recs)
    np.testing.assert_allclose(
        prior.calls[1]["y"][0, 0].numpy(), img.astype(np.float32), err_msg="big-endian data misread"
    )


def test_scaled_integer_image_works(tmp_path, capsys, monkeypatch):
    """An int16 image with BSCALE/BZERO is separated with the scaling applied."""
    img = np.linspace(-1, 1, 256).reshape(16, 16)
    bad = make_cutout(tmp_path / "int.fits", image=img, int_scaled=True, header=ZP)
    assert fits.getheader(bad, "SCI")["BITPIX"] == 16
    prior = FakePrior()
    code, recs, _, err = run_cli(
        [
            "separate",
            *_batch(tmp_path, bad),
            "--output-dir",
            tmp_path / "out",
            "--json",
            "-q",
            "--batch-size",
            "1",
        ],
        capsys,
        monkeypatch,
        prior=prior,
    )
    assert code == 0 and err == [], err
    assert all(r["status"] == "ok" for r in recs)
    np.testing.assert_allclose(
        prior.calls[1]["y"][0, 0].numpy(), img, atol=1e-3, err_msg="BSCALE/BZERO not applied"
    )

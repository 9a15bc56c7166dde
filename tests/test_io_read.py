"""Every input convention of issue 4, read through :func:`galprism.io.read.read_cutout`."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from astropy.io import fits
from fits_factory import HSC_PLANES, gaussian_psf, make_cutout

from galprism.errors import InputError, PSFError
from galprism.io.masks import DEFAULT_BAD_PLANES
from galprism.io.read import ReadOptions, output_stem, read_cutout
from galprism.observation import NoteKind


def test_image_in_sci_image_or_primary_hdu(tmp_path):
    """The image is found in SCI, IMAGE, or the primary HDU; a wrong pick would change the
    pixels."""
    img = np.arange(256, dtype=float).reshape(16, 16)
    for ext in ("SCI", "IMAGE", None):
        p = make_cutout(tmp_path / f"{ext}.fits", image=img, image_ext=ext)
        obs = read_cutout(p)
        np.testing.assert_array_equal(obs.image[0], img, err_msg=f"image HDU {ext} not read")


def test_image_hdu_option_picks_another_hdu(tmp_path):
    """--image-hdu selects an HDU by name or index instead of the default search."""
    p = make_cutout(tmp_path / "a.fits", image_ext="OTHER")
    img = fits.getdata(p, "OTHER")
    for key in ("OTHER", "1"):
        obs = read_cutout(p, ReadOptions(image_hdu=key))
        np.testing.assert_allclose(obs.image[0], img, err_msg=f"--image-hdu {key} ignored")
    with pytest.raises(InputError, match="no image"):
        read_cutout(p)  # primary empty, no SCI/IMAGE: must not guess


def test_three_d_image_has_bands_first_and_per_band_psf(tmp_path):
    """A (C, H, W) image keeps its bands; a 2-D PSF is used for every band, a 3-D one per band."""
    bands = {"BANDS": "g,r,i"}
    p = make_cutout(tmp_path / "b.fits", shape=(3, 16, 16), psf=gaussian_psf(9, 1.0), header=bands)
    obs = read_cutout(p)
    assert obs.shape == (3, 16, 16)
    assert obs.psf.shape == (3, 9, 9) and np.allclose(obs.psf[0], obs.psf[2]), (
        "2-D PSF not broadcast to bands"
    )
    psfs = np.stack([gaussian_psf(9, s) for s in (0.8, 1.0, 1.4)])
    p = make_cutout(tmp_path / "c.fits", shape=(3, 16, 16), psf=psfs, header=bands)
    obs = read_cutout(p)
    np.testing.assert_allclose(
        obs.psf,
        psfs / psfs.sum(axis=(1, 2), keepdims=True),
        atol=1e-6,
        err_msg="per-band PSFs mixed up",
    )


def test_psf_sidecar_and_template(tmp_path):
    """--psf FILE replaces the PSF HDU, and {stem} templates give each input its own file."""
    fits.PrimaryHDU(gaussian_psf(7, 0.7)).writeto(tmp_path / "a.psf.fits")
    p = make_cutout(tmp_path / "a.fits", psf=None)
    with pytest.raises(PSFError, match="no PSF"):
        read_cutout(p)
    for spec in (str(tmp_path / "a.psf.fits"), str(tmp_path / "{stem}.psf.fits")):
        obs = read_cutout(p, ReadOptions(psf=spec))
        assert obs.psf.shape == (1, 7, 7), f"--psf {spec} not used"


def test_psf_is_normalised_with_a_note(tmp_path):
    """A PSF that does not sum to 1 is renormalised and the fact recorded (and later warned
    about)."""
    p = make_cutout(tmp_path / "a.fits", psf=gaussian_psf(9, 1.0, total=3.0))
    obs = read_cutout(p)
    assert abs(obs.psf.sum() - 1) < 1e-6, "PSF not normalised to unit sum"
    assert any(
        n.kind is NoteKind.PSF_RENORMALISED and "renormalised" in n.text for n in obs.notes
    ), f"renormalisation not reported: {obs.notes}"


def test_mask_planes_default_and_names(tmp_path):
    """MP_* planes: by default SAT/BAD/... are bad but DETECTED is not; names and numbers select
    bits."""
    mask = np.zeros((16, 16), int)
    mask[1, 1] = 1 << HSC_PLANES["SAT"]
    mask[2, 2] = 1 << HSC_PLANES["DETECTED"]
    mask[3, 3] = 1 << HSC_PLANES["INTRP"]
    p = make_cutout(tmp_path / "a.fits", mask=mask, mask_planes=HSC_PLANES)
    valid = read_cutout(p).valid[0]
    assert not valid[1, 1], "SAT pixel should be masked by default"
    assert valid[2, 2], "DETECTED must not be masked by default: it would hide the galaxy"
    assert "INTRP" not in DEFAULT_BAD_PLANES and valid[3, 3]
    valid = read_cutout(p, ReadOptions(mask_bits="INTRP,DETECTED")).valid[0]
    assert valid[1, 1] and not valid[2, 2] and not valid[3, 3], "named planes not honoured"
    valid = read_cutout(p, ReadOptions(mask_bits=str(1 << HSC_PLANES["SAT"]))).valid[0]
    assert not valid[1, 1] and valid[2, 2] and valid[3, 3], "numeric bit values not honoured"
    assert read_cutout(p, ReadOptions(mask_bits="none")).valid.all(), (
        "'none' should ignore the mask"
    )
    assert read_cutout(p, ReadOptions(mask_bits="all")).valid.sum() == 256 - 3
    with pytest.raises(InputError, match="NOPE.*MP_"):
        read_cutout(p, ReadOptions(mask_bits="NOPE"))


def test_dq_mask_without_planes_uses_every_bit_and_sidecar(tmp_path):
    """A DQ HDU without MP_* keywords masks any non-zero pixel; --mask FILE is read the same way."""
    dq = np.zeros((16, 16), int)
    dq[4, 5] = 4096
    p = make_cutout(tmp_path / "a.fits", mask=dq, mask_ext="DQ")
    valid = read_cutout(p).valid[0]
    assert not valid[4, 5] and valid.sum() == 255
    fits.PrimaryHDU(dq.astype(np.int16)).writeto(tmp_path / "m.fits")
    q = make_cutout(tmp_path / "b.fits")
    valid = read_cutout(q, ReadOptions(mask=str(tmp_path / "m.fits"))).valid[0]
    assert not valid[4, 5] and valid.sum() == 255, "--mask sidecar not applied"


def test_non_finite_pixels_are_masked(tmp_path):
    """NaN/inf pixels are masked automatically; the tensors stay finite (0 data, unit variance)."""
    img = np.ones((16, 16))
    img[0, 0] = np.nan
    img[5, 5] = np.inf
    obs = read_cutout(make_cutout(tmp_path / "a.fits", image=img))
    assert not obs.valid[0, 0, 0] and not obs.valid[0, 5, 5] and obs.valid.sum() == 254
    assert np.isfinite(obs.image).all() and np.isfinite(obs.variance).all()
    assert obs.image[0, 0, 0] == 0 and obs.variance[0, 5, 5] == 1.0


@pytest.mark.parametrize("ext", ["VARIANCE", "VAR", "ERR", "SIGMA", "IVAR", "WHT", "WEIGHT"])
def test_noise_conventions(tmp_path, ext):
    """Variance, standard deviation and inverse-variance HDUs all give the variance sigma**2."""
    obs = read_cutout(make_cutout(tmp_path / "a.fits", noise=ext, sigma=0.3))
    np.testing.assert_allclose(obs.variance, 0.09, rtol=1e-5, err_msg=f"{ext} misread")


def test_zero_inverse_variance_masks_the_pixel(tmp_path):
    """IVAR = 0 means 'no information': the pixel is masked rather than given infinite variance."""
    ivar = np.full((16, 16), 4.0)
    ivar[3, 4] = 0
    obs = read_cutout(make_cutout(tmp_path / "a.fits", noise="IVAR", noise_values=ivar))
    assert not obs.valid[0, 3, 4] and obs.valid.sum() == 255
    assert np.isfinite(obs.variance).all()


def test_noise_sigma_option_and_estimate(tmp_path):
    """--noise-sigma overrides; without any noise the sigma-clipped estimate is close and
    reported."""
    p = make_cutout(tmp_path / "a.fits", noise=None, shape=(64, 64), sigma=0.2, seed=3)
    obs = read_cutout(p)
    est = float(np.sqrt(obs.variance[0, 0, 0]))
    assert abs(est - 0.2) < 0.02, f"estimated sigma {est} far from the true 0.2"
    assert any(
        n.kind is NoteKind.NOISE_ESTIMATED and n.text.startswith("noise estimated")
        for n in obs.notes
    ), "estimation must be reported"
    obs = read_cutout(p, ReadOptions(noise_sigma="0.5"))
    np.testing.assert_allclose(obs.variance, 0.25)


def test_wcs_pixel_scale_and_override(tmp_path):
    """The pixel scale comes from --pixel-scale, else the WCS, else a PIXSCALE keyword."""
    p = make_cutout(tmp_path / "a.fits", scale=0.168)
    obs = read_cutout(p)
    assert obs.wcs is not None and abs(obs.pixel_scale - 0.168) < 1e-9
    assert read_cutout(p, ReadOptions(pixel_scale=0.5)).pixel_scale == 0.5
    q = make_cutout(tmp_path / "b.fits", wcs=None)
    assert read_cutout(q).wcs is None and read_cutout(q).pixel_scale is None
    r = make_cutout(tmp_path / "c.fits", wcs=None, header={"PIXSCALE": 0.168})
    assert read_cutout(r).pixel_scale == 0.168, "PIXSCALE keyword ignored when there is no WCS"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"MAGZERO": 27.0}, 27.0),
        ({"MAGZPT": 26.5}, 26.5),
        ({"ZP": 25.0}, 25.0),
        ({"BUNIT": "nJy"}, 31.4),
        ({"BUNIT": "uJy"}, 23.9),
        ({"BUNIT": "nanomaggy"}, 22.5),
        ({"MAGZERO": 27.0, "BUNIT": "nJy"}, 27.0),
        (
            {"BUNIT": "electron/s", "PHOTFLAM": 7.0e-20, "PHOTPLAM": 8045.0},
            25.95,
        ),  # STScI ABMAG formula
        ({}, None),
    ],
)
def test_zeropoint_sources(tmp_path, header, expected):
    """Zero points from MAGZERO/MAGZPT/ZP, a flux BUNIT (nJy is AB 31.4), or HST PHOTFLAM."""
    obs = read_cutout(make_cutout(tmp_path / "a.fits", header=header))
    if expected is None:
        assert obs.zeropoint is None
    else:
        assert obs.zeropoint == pytest.approx(expected, abs=0.01), f"{header} -> {obs.zeropoint}"
    assert (
        read_cutout(
            make_cutout(tmp_path / "b.fits", header=header), ReadOptions(zeropoint=20.0)
        ).zeropoint
        == 20.0
    )


def test_big_endian_and_scaled_integer_images(tmp_path):
    """Big-endian floats and int16 + BSCALE/BZERO read to the right native values."""
    img = np.linspace(-1, 1, 256).reshape(16, 16)
    obs = read_cutout(make_cutout(tmp_path / "be.fits", image=img, image_dtype=">f8"))
    assert obs.image.dtype.byteorder in ("=", "|") or obs.image.dtype.isnative
    np.testing.assert_array_equal(obs.image[0], img)
    obs = read_cutout(make_cutout(tmp_path / "le.fits", image=img, image_dtype="<f4"))
    np.testing.assert_allclose(obs.image[0], img, rtol=1e-6)
    obs = read_cutout(make_cutout(tmp_path / "int.fits", image=img, int_scaled=True))
    np.testing.assert_allclose(obs.image[0], img, atol=0.0006, err_msg="BSCALE/BZERO not applied")


def test_reading_never_modifies_the_input(tmp_path):
    """Input files are read-only for galprism: bytes unchanged, and the checksum is the file's
    SHA-256."""
    p = make_cutout(tmp_path / "a.fits", mask=np.zeros((16, 16), int))
    before = p.read_bytes()
    obs = read_cutout(p, ReadOptions(noise_sigma="0.1"))
    assert p.read_bytes() == before
    assert obs.checksum == hashlib.sha256(before).hexdigest()


def test_output_stem():
    """Output names drop the directory and any FITS suffix (compressed ones included)."""
    assert output_stem("a/b/cut.fits") == "cut"
    assert output_stem("cut.fits.gz") == "cut"
    assert output_stem("cut.v2.fits.fz") == "cut.v2"
    assert output_stem("plain") == "plain"


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.75, 0.999])
def test_truncated_files_are_refused(tmp_path, keep):
    """A file cut anywhere (inside a header or inside data) is an error naming it, never a partial
    read."""
    p = make_cutout(tmp_path / "a.fits")
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match=r"a\.fits.*(truncated|corrupted|damaged)"):
        read_cutout(p)


def test_noise_matched_zeropoint_brings_the_noise_to_the_reference_level():
    """An image with 10x the reference noise gets a zero point 2.5 mag larger, so that its
    noise, converted to the reference zero point, equals the reference noise. Fails if the
    sign or the factor of the log is wrong (evaluate's real-data case uses this)."""
    from galprism.io.flux import flux_factor, noise_matched_zeropoint

    zp = noise_matched_zeropoint(0.2, 0.02, 27.0)
    assert zp == pytest.approx(29.5)
    assert 0.2 * flux_factor(zp, 27.0) == pytest.approx(0.02)

"""Programmatic test fixtures: cutout FITS files in every input convention, and a stand-in prior.

Nothing here is stored on disk in the repository: each test writes the files it needs
into its own ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits
from astropy.wcs import WCS, Sip

from galprism.diffusion.samplers import SamplerConfig
from galprism.frame import Frame
from galprism.separate import Capabilities

HSC_PLANES = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}


def make_wcs(
    ny: int,
    nx: int,
    *,
    scale: float = 0.2,
    ra: float = 150.1,
    dec: float = 2.2,
    sip: bool = False,
    rotate: float = 0.3,
) -> WCS:
    """A TAN (optionally TAN-SIP) WCS with ``scale`` arcsec pixels, slightly rotated."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [nx / 2 + 0.3, ny / 2 - 0.2]
    s = scale / 3600.0
    c, sn = np.cos(rotate), np.sin(rotate)
    w.wcs.cd = np.array([[-s * c, s * sn], [s * sn, s * c]])
    if sip:
        a = np.zeros((3, 3))
        b = np.zeros((3, 3))
        a[2, 0], a[0, 2], a[1, 1] = 2e-5, -1e-5, 3e-6
        b[2, 0], b[0, 2], b[1, 1] = -1e-5, 2e-5, 1e-6
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def gaussian_psf(
    size: int = 11, sigma: float = 1.2, n_bands: int | None = None, total: float = 1.0
) -> np.ndarray:
    """Centered Gaussian kernel(s) summing to ``total``."""
    r = np.arange(size) - (size - 1) / 2
    k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    k = k / k.sum() * total
    return k if n_bands is None else np.stack([k] * n_bands)


def galaxy_image(
    shape: tuple[int, ...],
    *,
    flux: float = 100.0,
    radius: float = 2.5,
    seed: int = 0,
    sigma: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """A round exponential-ish blob plus Gaussian noise; returns (noisy image, noiseless)."""
    *lead, ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    r = np.hypot(x - nx // 2, y - ny // 2)
    clean = np.exp(-r / radius)
    clean = clean / clean.sum() * flux
    clean = np.broadcast_to(clean, shape).copy()
    noisy = clean + np.random.default_rng(seed).normal(0, sigma, shape)
    return noisy, clean


def make_cutout(
    path: str | Path,
    *,
    shape: Sequence[int] = (16, 16),
    seed: int = 0,
    sigma: float = 0.1,
    image: np.ndarray | None = None,
    image_ext: str | None = "SCI",
    image_dtype: str = ">f4",
    int_scaled: bool = False,
    psf: np.ndarray | None | bool = True,
    noise: str | None = "VARIANCE",
    noise_values: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    mask_ext: str = "MASK",
    mask_planes: dict[str, int] | None = None,
    wcs: WCS | None | bool = True,
    scale: float = 0.2,
    bunit: str | None = None,
    header: dict | None = None,
) -> Path:
    """Write a cutout FITS file.

    Parameters
    ----------
    shape
        ``(ny, nx)`` or ``(C, ny, nx)``.
    image
        Pixel values; default a noisy blob.
    image_ext
        EXTNAME of the image HDU, or None to put it in the primary HDU.
    image_dtype
        FITS dtype of the image (``>f4`` is what astropy writes anyway).
    int_scaled
        Store the image as int16 with BSCALE/BZERO.
    psf
        Kernel(s); True for a Gaussian, None/False for no PSF HDU.
    noise
        EXTNAME of the noise map (its kind is inferred by the reader), or None.
    noise_values
        Values of the noise map; default the matching transform of ``sigma``.
    mask, mask_ext, mask_planes
        Integer mask HDU, its EXTNAME and ``MP_*`` planes.
    wcs
        A WCS, True for :func:`make_wcs` with ``scale``, or None/False.
    bunit, header
        Extra header keywords of the image HDU.
    """
    path = Path(path)
    shape = tuple(int(s) for s in shape)
    if image is None:
        image, _ = galaxy_image(shape, seed=seed, sigma=sigma)
    hdr = fits.Header()
    if wcs is True:
        wcs = make_wcs(shape[-2], shape[-1], scale=scale)
    if wcs:
        hdr.update(wcs.to_header(relax=True))
    if bunit:
        hdr["BUNIT"] = bunit
    for k, v in (header or {}).items():
        hdr[k] = v
    if int_scaled:
        hdu_cls = fits.PrimaryHDU if image_ext is None else fits.ImageHDU
        img_hdu = hdu_cls(np.array(image, dtype=np.float64), header=hdr)  # scale() works in place
        img_hdu.scale("int16", bscale=0.001, bzero=10.0)
    else:
        data = np.asarray(image).astype(image_dtype)
        img_hdu = (
            fits.PrimaryHDU(data, header=hdr)
            if image_ext is None
            else fits.ImageHDU(data, header=hdr)
        )
    hdus: list = []
    if image_ext is None:
        hdus.append(img_hdu)
    else:
        img_hdu.name = image_ext
        hdus += [fits.PrimaryHDU(), img_hdu]
    if psf is True:
        psf = gaussian_psf(11, 1.2, None)
    if psf is not None and psf is not False:
        hdus.append(fits.ImageHDU(np.asarray(psf, dtype=">f4"), name="PSF"))
    if noise is not None:
        if noise_values is None:
            kind = noise.upper()
            base = np.full(shape, sigma, dtype=np.float64)
            noise_values = {
                "VARIANCE": base**2,
                "VAR": base**2,
                "ERR": base,
                "SIGMA": base,
                "IVAR": base**-2,
                "WHT": base**-2,
                "WEIGHT": base**-2,
            }[kind]
        hdus.append(fits.ImageHDU(np.asarray(noise_values, dtype=">f4"), name=noise))
    if mask is not None:
        mh = fits.ImageHDU(np.asarray(mask, dtype=">i4"), name=mask_ext)
        for name, bit in (mask_planes or {}).items():
            # Long plane names become HIERARCH cards, as in real LSST/HSC files.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fits.verify.VerifyWarning)
                mh.header[f"MP_{name}"] = bit
        hdus.append(mh)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


class FakePrior:
    """Stand-in for :class:`galprism.priorset.PriorSet` that exercises the plumbing.

    Each source's samples are ``A^T y`` spread evenly over the sources and rescaled from
    the cutout's grid to the prior's, plus ``jitter`` times standard normal noise drawn
    from the cutout's own generator, so results depend on the per-cutout seeds and not on
    batching. It records every call's arguments in ``calls``. A batch whose ``y`` holds
    ``fail_value`` raises, to test that the pipeline isolates the failing cutout.
    """

    def __init__(
        self,
        *,
        shape: tuple[int, int, int] = (1, 16, 16),
        sources: Sequence[str] = ("galaxy", "background"),
        pixel_scale: float | None = 0.2,
        zeropoint: float | None = 27.0,
        bunit: str | None = None,
        jitter: float = 0.05,
        method: str = "diffusion",
        fail_value: float | None = None,
        point_estimate: bool = False,
    ) -> None:
        self.name = "fake"
        self.sources = list(sources)
        self.shape = tuple(shape)
        self.frame = Frame(self.shape, pixel_scale=pixel_scale, zeropoint=zeropoint, bunit=bunit)
        self.method = method
        self.sha256 = hashlib.sha256(b"fake prior").hexdigest()
        self.jitter = jitter
        self.fail_value = fail_value
        self.point_estimate = point_estimate
        self.support: dict = {}
        # The stand-in's "samples" are no posterior: free-form components would whiten the
        # data it echoes, so it declares none.
        self.capabilities = (
            Capabilities(
                posterior_samples=False, source_supports=False, freeform=False, psf_included=True
            )
            if method == "asvd"
            else Capabilities(freeform=False)
        )
        self.calls: list[dict] = []

    def describe(self) -> dict:
        return {
            "name": self.name,
            "sources": self.sources,
            "pixel_scale": self.frame.pixel_scale,
            "training_data": "none (test stand-in)",
        }

    def sample_prior(self, source, n, *, steps, sampler="pc", generator=None, device="cpu"):
        assert source in self.sources, f"unknown source {source}"
        return torch.randn((n, *self.shape), generator=generator)

    def separate(
        self,
        y,
        noise_var,
        operator,
        sampler=None,
        *,
        generators=None,
        device="cpu",
    ):
        sampler = sampler if sampler is not None else SamplerConfig()
        n_samples = sampler.n_samples
        self.calls.append(
            {
                "y": y.clone(),
                "noise_var": noise_var.clone(),
                "operator": operator,
                "n_samples": n_samples,
                "sampler": sampler,
                "generators": generators,
            }
        )
        if self.fail_value is not None and bool((y == self.fail_value).any()):
            raise RuntimeError("fake sampler failure")
        assert generators is not None and len(generators) == y.shape[0], "one generator per cutout"
        assert torch.isfinite(noise_var).all() and (noise_var > 0).all(), (
            "noise variance handed to the sampler must be finite and positive"
        )
        k = len(self.sources)
        n = 1 if self.point_estimate else n_samples
        back = operator.ops[0].adjoint(y.to(torch.float64))  # (B, C, H, W) on the prior grid
        area = float(np.prod(y.shape[-2:])) / float(np.prod(self.shape[-2:]))
        base = back * area / k
        out = []
        for b, g in enumerate(generators):
            noise = torch.randn((n, k, *self.shape), generator=g, dtype=torch.float64)
            out.append(base[b][None, None] + self.jitter * noise)
        return torch.stack(out).to(torch.float32)


def run_cli(argv, capsys, monkeypatch, *, prior=None, stdin: str | None = None):
    """Run ``galprism argv`` in-process through its real entry point.

    ``prior`` replaces the prior loader of ``galprism separate`` (e.g. a FakePrior);
    ``stdin`` is the text on standard input. Returns (exit status, JSON records of
    stdout, stdout, non-empty stderr lines).
    """
    import io
    import json
    import sys

    import pytest

    from galprism.cli.main import main

    if prior is not None:
        monkeypatch.setattr("galprism.cli.separate.load_prior", lambda spec: prior)
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return exc.value.code, records, out, [line for line in err.splitlines() if line.strip()]


def spy_smc_particles(monkeypatch) -> list[int]:
    """Record the particle count of every SMC sampler run (``galprism.sampling.sample_smc``), so
    a test checks what SMC really ran with, not only the setting a header or summary claims."""
    import galprism.sampling

    used: list[int] = []
    real_smc = galprism.sampling.sample_smc
    monkeypatch.setattr(
        galprism.sampling,
        "sample_smc",
        lambda post, config, **kw: used.append(config.particles) or real_smc(post, config, **kw),
    )
    return used

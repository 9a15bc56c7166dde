"""The batch pipeline with a stand-in prior: outputs, WCS, flux units, seeds, resuming, shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from fits_factory import FakePrior, gaussian_psf, make_cutout

from galprism.diffusion import SamplerConfig
from galprism.errors import ConfigError
from galprism.io.inputs import in_shard
from galprism.separate import RunWarnings, SeparateConfig, run_separate

TOL_DEG = 1e-9


def run(paths, prior, *, n_samples=SamplerConfig.n_samples, **kw):
    records = []
    messages = []
    summary = run_separate(
        [str(p) for p in paths],
        prior,
        SeparateConfig(sampler=SamplerConfig(n_samples=n_samples), **kw),
        on_record=records.append,
        warnings=RunWarnings(messages.append),
    )
    return summary, records, messages


def data_of(path: Path) -> dict[str, np.ndarray]:
    with fits.open(path) as h:
        return {hdu.name: np.array(hdu.data) for hdu in h[1:]}


def test_output_layout_provenance_and_wcs(tmp_path):
    """One file per input with the documented HDUs, provenance, and the input's WCS to 1e-9 deg."""
    p = make_cutout(tmp_path / "cut.fits", shape=(20, 20), bunit="nJy")
    prior = FakePrior(shape=(1, 16, 16), zeropoint=31.4)
    summary, recs, _ = run(
        [p],
        prior,
        output_dir=tmp_path / "out",
        command_line="galprism separate cut.fits",
        n_samples=3,
        center=(10.0, 10.0),  # the image center: a larger image is modelled only when asked
    )
    assert summary.exit_code == 0 and recs[0].status == "ok", recs
    out = tmp_path / "out" / "cut.galprism.fits"
    with fits.open(out, checksum=True) as h:
        names = [hdu.name for hdu in h]
        assert names == [
            "PRIMARY",
            "GALAXY",
            "GALAXY_MEAN",
            "GALAXY_STD",
            "BACKGROUND",
            "BACKGROUND_MEAN",
            "BACKGROUND_STD",
            "MODEL",
            "RESID",
        ]
        p0 = h[0].header
        assert h[0].data is None
        assert p0["PRIOR"] == "fake" and p0["PRIORSHA"] == prior.sha256 and p0["NSAMPLE"] == 3
        assert (
            p0["NSTEPS"] == SamplerConfig().steps
            and p0["NCGITER"] == SamplerConfig().cg_iterations
            and p0["DEVICE"] == "cpu"
            and p0["METHOD"] == "diffusion"
        )
        assert p0["SEED"] == recs[0].seed and p0["INFILE"] == str(p)
        import hashlib

        assert p0["INSHA256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert "galprism separate cut.fits" in " ".join(str(c) for c in p0["HISTORY"])
        assert h["GALAXY"].data.shape == (3, 16, 16) and h["GALAXY"].data.dtype.kind == "f"
        assert h["GALAXY_MEAN"].data.shape == (16, 16) and h["MODEL"].data.shape == (16, 16)
        for hdu in h[1:]:
            assert "CHECKSUM" in hdu.header and hdu.header["EXTNAME"] == hdu.name
        assert h["GALAXY"].header["BUNIT"] == "nJy" and h["MODEL"].header["BUNIT"] == "nJy"
        assert "BUNIT" not in h["RESID"].header, "residuals are in units of sigma"
        x0, y0 = p0["CROPX0"], p0["CROPY0"]
        assert (x0, y0) == (2, 2)
        src = WCS(fits.getheader(p, "SCI"))
        for ext in ("GALAXY", "GALAXY_MEAN", "MODEL", "RESID"):
            w = WCS(h[ext].header).celestial
            a = np.array(src.all_pix2world([x0 + 3.0, x0 + 11.0], [y0 + 7.0, y0 + 0.0], 0))
            b = np.array(w.all_pix2world([3.0, 11.0], [7.0, 0.0], 0))
            assert np.abs(a - b).max() < TOL_DEG, (
                f"{ext}: WCS differs from the input's by {np.abs(a - b).max()} deg"
            )
        assert WCS(h["GALAXY"].header).wcs.ctype[2] == "SAMPLE"


def test_finer_prior_grid_gets_a_refined_wcs(tmp_path):
    """With a prior grid twice as fine, sources live on 16x16 fine pixels whose WCS nests in the
    8x8 cutout."""
    p = make_cutout(tmp_path / "c.fits", shape=(8, 8), scale=0.2, psf=gaussian_psf(5, 0.8))
    _, recs, _ = run([p], FakePrior(shape=(1, 16, 16), pixel_scale=0.1), output_dir=tmp_path)
    assert recs[0].status == "ok", recs
    with fits.open(tmp_path / "c.galprism.fits") as h:
        assert h["GALAXY"].data.shape[1:] == (16, 16) and h["MODEL"].data.shape == (8, 8)
        assert h[0].header["GRIDFAC"] == 2
        fine = WCS(h["GALAXY_MEAN"].header)
        coarse = WCS(h["MODEL"].header)
    q = np.array([0.0, 5.0, 15.0])
    c = (q + 0.5) / 2 - 0.5
    a = np.array(coarse.all_pix2world(c, c, 0))
    b = np.array(fine.all_pix2world(q, q, 0))
    assert np.abs(a - b).max() < TOL_DEG


def test_flux_is_converted_to_the_prior_and_back(tmp_path):
    """The sampler sees data on the prior's zero point; outputs come back in the input's units."""
    img = make_cutout(tmp_path / "ref.fits", header={"MAGZERO": 27.0})
    pix = fits.getdata(img, "SCI").astype(float)
    a = make_cutout(tmp_path / "a.fits", image=pix, header={"MAGZERO": 27.0})
    b = make_cutout(tmp_path / "b.fits", image=pix, bunit="nJy")
    prior = FakePrior(zeropoint=27.0, jitter=0.0)
    _, recs, _ = run([a, b], prior, output_dir=tmp_path / "o", batch_size=1)
    assert [r.status for r in recs] == ["ok", "ok"], recs
    zp_njy = -2.5 * np.log10(1e-9 / 3631.0)  # AB definition: 3631 Jy is magnitude 0
    k = 10 ** (0.4 * (27.0 - zp_njy))
    np.testing.assert_allclose(
        prior.calls[1]["y"].numpy()[0, 0],
        pix.astype(np.float32) * k,
        rtol=1e-5,
        err_msg="sampler got data in the input's units",
    )
    np.testing.assert_allclose(prior.calls[1]["noise_var"].numpy(), 0.01 * k**2, rtol=1e-4)
    da, db = (
        data_of(tmp_path / "o" / "a.galprism.fits"),
        data_of(tmp_path / "o" / "b.galprism.fits"),
    )
    for ext in ("GALAXY", "MODEL", "RESID"):
        np.testing.assert_allclose(
            db[ext],
            da[ext],
            rtol=1e-4,
            atol=1e-6,
            err_msg=f"{ext} not converted back to the input's units",
        )
    assert fits.getval(tmp_path / "o" / "b.galprism.fits", "ZPINPUT") == pytest.approx(
        31.4, abs=1e-3
    )


def test_missing_zero_point_assumes_the_prior_and_warns_once(tmp_path):
    """Inputs without any flux convention use the prior's, with one warning per run."""
    paths = [make_cutout(tmp_path / f"{i}.fits", seed=i) for i in range(3)]
    _, recs, messages = run(paths, FakePrior(zeropoint=27.0), output_dir=tmp_path / "o")
    assert all(r.status == "ok" for r in recs)
    zp_msgs = [m for m in messages if "zero point" in m]
    assert (
        len(zp_msgs) == 2
        and "assuming the prior's AB zero point 27" in zp_msgs[0]
        and "2 more" in zp_msgs[1]
    ), messages
    assert fits.getval(tmp_path / "o" / "0.galprism.fits", "ZPASSUME") is True


def test_same_seed_same_output_regardless_of_batching_and_order(tmp_path):
    """Each cutout's randomness derives from --seed and its name only: batch size and order do not
    matter."""
    paths = [
        make_cutout(tmp_path / f"c{i}.fits", seed=i, header={"MAGZERO": 27.0}) for i in range(5)
    ]
    run(paths, FakePrior(), output_dir=tmp_path / "a", batch_size=1)
    run(paths[::-1], FakePrior(), output_dir=tmp_path / "b", batch_size=3)
    run(paths, FakePrior(), output_dir=tmp_path / "c", seed=1)
    for i in range(5):
        da = data_of(tmp_path / "a" / f"c{i}.galprism.fits")
        db = data_of(tmp_path / "b" / f"c{i}.galprism.fits")
        dc = data_of(tmp_path / "c" / f"c{i}.galprism.fits")
        for ext in da:
            np.testing.assert_array_equal(
                da[ext], db[ext], err_msg=f"c{i} {ext} depends on batching/order"
            )
        assert not np.array_equal(da["GALAXY"], dc["GALAXY"]), (
            "a different --seed gave identical samples"
        )
    seeds = {fits.getval(tmp_path / "a" / f"c{i}.galprism.fits", "SEED") for i in range(5)}
    assert len(seeds) == 5, "cutouts share a seed"


def test_skip_existing_finishes_only_what_is_missing(tmp_path):
    """After a partial run, --skip-existing processes exactly the missing outputs and leaves the
    others alone."""
    paths = [make_cutout(tmp_path / f"c{i}.fits", seed=i) for i in range(5)]
    out = tmp_path / "o"
    run(paths, FakePrior(), output_dir=out)
    (out / "c1.galprism.fits").unlink()
    (out / "c3.galprism.fits").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    summary, recs, _ = run(paths, FakePrior(), output_dir=out, skip_existing=True)
    status = {Path(r.input).name: r.status for r in recs}
    assert status == {
        "c0.fits": "skipped",
        "c1.fits": "ok",
        "c2.fits": "skipped",
        "c3.fits": "ok",
        "c4.fits": "skipped",
    }
    assert summary.exit_code == 0
    for name, content in before.items():
        assert (out / name).read_bytes() == content, f"{name} was rewritten"


def test_existing_output_is_an_error_without_flags_and_replaced_with_overwrite(tmp_path):
    """No clobbering by default: the input fails (exit 1), the old file stays; --overwrite replaces
    it."""
    p = make_cutout(tmp_path / "c.fits")
    out = tmp_path / "o"
    out.mkdir()
    (out / "c.galprism.fits").write_bytes(b"old")
    summary, recs, _ = run([p], FakePrior(), output_dir=out)
    assert summary.exit_code == 1 and "output exists" in recs[0].error and str(p) in recs[0].error
    assert "--" not in recs[0].error, f"the library names a flag: {recs[0].error}"
    assert (out / "c.galprism.fits").read_bytes() == b"old"
    summary, recs, _ = run([p], FakePrior(), output_dir=out, overwrite=True)
    assert summary.exit_code == 0 and (out / "c.galprism.fits").read_bytes()[:6] == b"SIMPLE"


def test_shards_partition_the_batch_exactly(tmp_path):
    """--shard I/N over all I covers every input exactly once and gives the same files as one
    run."""
    paths = [make_cutout(tmp_path / f"c{i}.fits", seed=i) for i in range(9)]
    seen = []
    for i in range(3):
        _, recs, _ = run(paths, FakePrior(), output_dir=tmp_path / "sharded", shard=(i, 3))
        assert all(r.status == "ok" for r in recs)
        names = [Path(r.input).name for r in recs]
        assert all(in_shard(n, i, 3) for n in names)
        seen += names
    assert sorted(seen) == sorted(p.name for p in paths), "shards overlap or miss inputs"
    run(paths, FakePrior(), output_dir=tmp_path / "whole")
    for p in paths:
        stem = p.name.replace(".fits", ".galprism.fits")
        a, b = data_of(tmp_path / "sharded" / stem), data_of(tmp_path / "whole" / stem)
        for ext in a:
            np.testing.assert_array_equal(a[ext], b[ext], err_msg=f"{stem} depends on sharding")


def test_a_failing_cutout_does_not_take_its_batch_down(tmp_path):
    """When the sampler fails on a batch, the cutouts are retried alone and only the bad one
    fails."""
    paths = [
        make_cutout(tmp_path / f"c{i}.fits", seed=i, header={"MAGZERO": 27.0}) for i in range(4)
    ]
    img = fits.getdata(paths[0], "SCI").astype(float)
    img[5, 5] = 123.0
    paths[2] = make_cutout(tmp_path / "c2.fits", image=img, header={"MAGZERO": 27.0})
    summary, recs, _ = run(
        paths, FakePrior(fail_value=123.0), output_dir=tmp_path / "o", batch_size=4
    )
    status = {Path(r.input).name: r.status for r in recs}
    assert status == {"c0.fits": "ok", "c1.fits": "ok", "c2.fits": "error", "c3.fits": "ok"}
    bad = next(r for r in recs if r.status == "error")
    assert "c2.fits" in bad.error and "fake sampler failure" in bad.error
    assert summary.exit_code == 1


def test_duplicate_output_names_are_reported(tmp_path):
    """Two inputs that would write the same output file: the second is an error, the first is
    kept."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = make_cutout(tmp_path / "x" / "c.fits", seed=1)
    b = make_cutout(tmp_path / "y" / "c.fits", seed=2)
    summary, recs, _ = run([a, b], FakePrior(), output_dir=tmp_path / "o")
    assert [r.status for r in recs] == ["error", "ok"] or [r.status for r in recs] == [
        "ok",
        "error",
    ]
    err = next(r for r in recs if r.status == "error")
    assert str(b) in err.error and "same output" in err.error


def test_inputs_are_streamed_batch_by_batch(tmp_path):
    """The pipeline reads a batch, samples, writes, and only then reads on: memory stays flat."""
    paths = [make_cutout(tmp_path / f"c{i}.fits", seed=i) for i in range(6)]
    consumed = []

    def gen():
        for p in paths:
            consumed.append(p)
            yield str(p)

    seen_at_first_output = []

    def on_record(rec):
        if not seen_at_first_output:
            seen_at_first_output.append(len(consumed))

    run_separate(
        gen(),
        FakePrior(),
        SeparateConfig(output_dir=tmp_path / "o", batch_size=2),
        on_record=on_record,
        warnings=RunWarnings(lambda m: None),
    )
    assert seen_at_first_output == [2], (
        f"first output written after reading {seen_at_first_output} inputs, not one batch"
    )


def test_point_estimate_prior_writes_one_sample(tmp_path):
    """An asvd prior gives a single point estimate: a 1-sample cube, zero STD, and a header saying
    so."""
    p = make_cutout(tmp_path / "c.fits")
    _, recs, _ = run([p], FakePrior(point_estimate=True, method="asvd"), output_dir=tmp_path)
    with fits.open(tmp_path / "c.galprism.fits") as h:
        assert h["GALAXY"].data.shape == (1, 16, 16) and h[0].header["NSAMPLE"] == 1
        assert h[0].header["POINTEST"] is True and h[0].header["METHOD"] == "asvd"
        assert np.all(h["GALAXY_STD"].data == 0)
    assert recs[0].sources["galaxy"]["flux_std"] == [0.0]


def test_multiband_cubes_keep_a_band_axis(tmp_path):
    """With bands, source cubes are (n, C, ny, nx) with a BAND axis and MODEL is (C, ny, nx)."""
    p = make_cutout(tmp_path / "c.fits", shape=(3, 16, 16), header={"BANDS": "g,r,i"})
    _, recs, _ = run([p], FakePrior(shape=(3, 16, 16)), output_dir=tmp_path, n_samples=2)
    assert recs[0].status == "ok", recs
    with fits.open(tmp_path / "c.galprism.fits") as h:
        assert h["GALAXY"].data.shape == (2, 3, 16, 16) and h["MODEL"].data.shape == (3, 16, 16)
        assert list(WCS(h["GALAXY"].header).wcs.ctype)[2:] == ["BAND", "SAMPLE"]
    assert len(recs[0].sources["galaxy"]["flux_mean"]) == 3


def test_center_radec_equals_the_pixel_center(tmp_path):
    """--center-radec crops around the pixel the WCS gives for that position, like --center X,Y."""
    p = make_cutout(tmp_path / "c.fits", shape=(30, 30))
    w = WCS(fits.getheader(p, "SCI"))
    ra, dec = w.all_pix2world([[9.0, 20.0]], 0)[0]
    run([p], FakePrior(), output_dir=tmp_path / "a", center=(9.0, 20.0))
    run([p], FakePrior(), output_dir=tmp_path / "b", center_radec=(float(ra), float(dec)))
    ha = fits.getheader(tmp_path / "a" / "c.galprism.fits")
    hb = fits.getheader(tmp_path / "b" / "c.galprism.fits")
    assert (ha["CROPX0"], ha["CROPY0"]) == (9 - 8, 20 - 8) == (hb["CROPX0"], hb["CROPY0"])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"method": "euler"}, "unknown method 'euler'"),
        ({"method": "smc", "particles": 0}, "particles must be an integer >= 1"),
    ],
)
def test_bad_sampler_settings_are_refused_before_any_file_is_read(kw, message):
    """A misspelt sampler or zero SMC particles would otherwise fail deep inside the first batch
    (or, for particles, silently draw nothing), once per cutout of a million-file run."""
    with pytest.raises(ConfigError, match=message):
        SeparateConfig(sampler=SamplerConfig(**kw))

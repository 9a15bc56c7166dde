"""Source supports (galprism.support): disks, the adaptive radius rule, and their use in
separation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.io import fits
from fits_factory import FakePrior, galaxy_image, make_cutout

from galprism.cli.separate import parse_support
from galprism.diffusion import SamplerConfig
from galprism.errors import ConfigError, UsageError
from galprism.separate import RunWarnings, SeparateConfig, run_separate
from galprism.support import PILOT, Support, check_support, disk, enclosed_radius


def test_disk_is_centered_and_counts_the_right_pixels():
    """A disk of radius 0.75 on an even grid is the 4 central pixels; radius 100 covers
    everything."""
    d = disk((1, 8, 8), 0.75)
    assert d.shape == (1, 8, 8) and d.dtype == torch.bool
    assert d.sum() == 4 and d[0, 3:5, 3:5].all(), "disk not centered between the 4 central pixels"
    assert disk((2, 8, 8), 100).all()


def test_enclosed_radius_known_answers():
    """A point at the center needs radius 1 (+ pad); a ring at 6 px needs 6 (+ pad); no light gives
    the maximum."""
    img = torch.zeros(1, 16, 16)
    img[0, 7:9, 7:9] = 1.0
    assert enclosed_radius(img, 12, fraction=0.95, pad=4) == 5.0
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    r = torch.hypot(yy - 7.5, xx - 7.5)
    ring = ((r > 5.5) & (r <= 6.0)).float()[None]
    assert enclosed_radius(ring, 12, fraction=0.95, pad=4) == 10.0
    assert enclosed_radius(ring, 8, fraction=0.95, pad=4) == 8.0, "radius above the maximum"
    assert enclosed_radius(torch.zeros(1, 16, 16), 7) == 7.0
    assert enclosed_radius(-img, 7) == 7.0, (
        "negative net light must give the maximum, not a tiny disk"
    )


def test_support_values_parse_and_refuse():
    """Numbers are fixed radii, 'auto:R' adaptive; anything else is a one-line error naming the
    source."""
    got = check_support({"galaxy": "auto:20", "sky": 5}, ["galaxy", "sky"], "here")
    assert got == {"galaxy": Support(20.0, True), "sky": Support(5.0, False)}
    assert got["galaxy"].to_json() == "auto:20" and got["sky"].to_json() == 5.0
    for bad, needle in (
        ({"star": 3}, "star"),
        ({"galaxy": 0}, "galaxy"),
        ({"galaxy": "auto"}, "auto:R"),
        ({"galaxy": "big"}, "big"),
        ({"galaxy": True}, "True"),
    ):
        with pytest.raises(ConfigError, match=needle):
            check_support(bad, ["galaxy", "sky"], "here")
    assert parse_support(()) is None and parse_support(("none",)) == {}
    assert parse_support(("galaxy=auto:12", "sky=3")) == {"galaxy": "auto:12", "sky": 3.0}
    for bad in (("galaxy",), ("galaxy=auto",), ("galaxy=-1",), ("none", "galaxy=3")):
        with pytest.raises(UsageError):
            parse_support(bad)


def _separate(tmp_path, image, support, tag):
    path = make_cutout(
        tmp_path / f"{tag}.fits", shape=(32, 32), image=image, header={"MAGZERO": 27.0}
    )
    prior = FakePrior(shape=(1, 32, 32), pixel_scale=0.2, jitter=0.0)
    summary = run_separate(
        [str(path)],
        prior,
        SeparateConfig(output_dir=tmp_path, support=support, sampler=SamplerConfig(n_samples=2)),
        warnings=RunWarnings(lambda m: None),
    )
    assert summary.exit_code == 0
    with fits.open(tmp_path / f"{tag}.galprism.fits") as h:
        return h[0].header["SUPPORT"], h["GALAXY"].data, prior


def test_adaptive_support_follows_the_size_of_the_source(tmp_path):
    """With a stand-in prior whose posterior is the data, an adaptive support is small for a compact
    source and larger for an extended one, never above its maximum; the galaxy is zero beyond it,
    and the pilot run (2 samples, 8 steps) precedes the main run."""
    compact, _ = galaxy_image((32, 32), radius=1.0, sigma=1e-4)
    wide, _ = galaxy_image((32, 32), radius=5.0, sigma=1e-4)
    radii = {}
    for tag, image in (("compact", compact), ("wide", wide)):
        card, gal, prior = _separate(tmp_path, image, {"galaxy": "auto:12"}, tag)
        assert card.endswith("(auto:12)"), card
        radii[tag] = float(card.split("=")[1].split()[0])
        outside = ~disk((32, 32), radii[tag]).numpy()
        assert np.all(gal[:, outside] == 0) and np.any(gal[:, ~outside] != 0)
        assert [c["n_samples"] for c in prior.calls] == [PILOT["n_samples"], 2], (
            "pilot then main run expected"
        )
    assert PILOT["pad"] < radii["compact"] < radii["wide"] <= 12, radii
    card, _, prior = _separate(tmp_path, wide, {"galaxy": 9}, "fixed")
    assert card == "galaxy=9" and len(prior.calls) == 1, "a fixed support needs no pilot run"


def test_adaptive_supports_of_a_batch_are_per_cutout(tmp_path):
    """Cutouts sampled in one batch each get their own disk, the same as when sampled alone."""
    compact, _ = galaxy_image((32, 32), radius=1.0, sigma=1e-4)
    wide, _ = galaxy_image((32, 32), radius=5.0, sigma=1e-4)
    paths = [
        make_cutout(tmp_path / f"{t}.fits", shape=(32, 32), image=im, header={"MAGZERO": 27.0})
        for t, im in (("compact", compact), ("wide", wide), ("compact2", compact))
    ]
    cards = {}
    for batch in (3, 1):
        prior = FakePrior(shape=(1, 32, 32), pixel_scale=0.2, jitter=0.01)
        out = tmp_path / f"b{batch}"
        config = SeparateConfig(
            output_dir=out,
            support={"galaxy": "auto:12"},
            sampler=SamplerConfig(n_samples=3),
            batch_size=batch,
        )
        assert (
            run_separate(
                [str(p) for p in paths], prior, config, warnings=RunWarnings(lambda m: None)
            ).exit_code
            == 0
        )
        # one pilot and one main call per batch: a batch that fails is retried cutout by
        # cutout by run_separate, which would hide an error here
        assert [c["y"].shape[0] for c in prior.calls] == [batch, batch] * (3 // batch), [
            c["y"].shape for c in prior.calls
        ]
        for p in paths:
            with fits.open(out / f"{p.stem}.galprism.fits") as h:
                card = h[0].header["SUPPORT"]
                radius = float(card.split("=")[1].split()[0])
                outside = ~disk((32, 32), radius).numpy()
                assert np.all(h["GALAXY"].data[:, outside] == 0), (
                    f"{p.name}: light beyond its own disk"
                )
                cards.setdefault(p.stem, set()).add(card)
    assert all(len(c) == 1 for c in cards.values()), f"radius depends on the batching: {cards}"
    assert cards["compact"] == cards["compact2"] != cards["wide"], cards

"""operator_for: the whole operator of a batch, built in one piece from the frame and the
source-side pieces (supports, free-form whitening, a PSF already in the sources)."""

from __future__ import annotations

import numpy as np
import torch
from fits_factory import gaussian_psf

from galprism.frame import Frame
from galprism.freeform import FreeformConfig, build_freeform
from galprism.observation import Observation, stack_observations
from galprism.operators import Composition, Convolve, Downsample, Mask, SourceSum
from galprism.support import disk

SOURCES = ["galaxy", "sky"]


def _batch(factor: int = 2):
    """Two 8x8 cutouts at 0.2"/px of a 16x16 frame at 0.2/factor, one with a bright star."""
    rng = np.random.default_rng(4)
    obs = []
    for i in range(2):
        image = rng.normal(0.0, 0.1, size=(1, 8, 8))
        if i == 1:
            image[0, 3, 5] += 50.0
        valid = np.ones((1, 8, 8), bool)
        valid[0, i, :3] = False
        obs.append(
            Observation(
                image=image,
                variance=np.full((1, 8, 8), 0.01),
                psf=gaussian_psf(5, 0.8 + 0.3 * i),
                valid=valid,
                pixel_scale=0.2,
                zeropoint=27.0,
                name=f"c{i}",
            )
        )
    frame = Frame((1, 8 * factor, 8 * factor), pixel_scale=0.2 / factor, zeropoint=27.0)
    batch = stack_observations(obs, frame, dtype=torch.float64)
    psfs = [o.prior_grid_psf(batch.grid_factor) for o in obs]
    freeform = build_freeform(
        batch.y,
        batch.noise_var,
        batch.valid,
        psfs,
        frame.shape,
        batch.grid_factor,
        1.0,
        FreeformConfig(bright=5.0, edge=None),
    )
    assert freeform is not None and freeform.boxes[1], "the star must get a free-form box"
    supports = {"galaxy": torch.stack([disk(frame.shape, 4.0), disk(frame.shape, 6.0)])}
    return obs, frame, batch, freeform, supports


def test_operator_for_equals_the_composition_it_replaces():
    """Built in one piece, the operator must equal the old assembly step by step (base
    operator, then the whitening wrapped around it, then each support's mask): a piece in the
    wrong order or left out changes every posterior sample."""
    _, frame, batch, freeform, supports = _batch()
    got = batch.operator_for(SOURCES, supports=supports, whitening=freeform.whitening())
    m, w = freeform.whitening()
    base = Composition([Mask(batch.valid, shape=tuple(batch.valid.shape[1:])), *batch.forward.ops])
    old = SourceSum(
        [
            Composition([m, w, base]) @ Mask(supports["galaxy"], frame.shape),
            Composition([m, w, base]),
        ]
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 2, *frame.shape), generator=g, dtype=torch.float64)
    y = torch.randn(tuple(batch.y.shape), generator=g, dtype=torch.float64)
    assert torch.equal(got.apply(x), old.apply(x))
    assert torch.equal(got.adjoint(y), old.adjoint(y))


def test_operator_for_is_adjoint_with_every_piece():
    """<A x, y> = <x, A^T y> for the operator with supports, whitening and downsampling, and
    for the PSF-free variant: the sampler's CG solve and MMPS corrections need the exact
    adjoint."""
    _, frame, batch, freeform, supports = _batch()
    g = torch.Generator().manual_seed(1)
    for op in (
        batch.operator_for(SOURCES, supports=supports, whitening=freeform.whitening()),
        batch.operator_for(SOURCES, supports=supports, psf_included=True),
    ):
        x = torch.randn((2, 2, *frame.shape), generator=g, dtype=torch.float64)
        y = torch.randn(tuple(batch.y.shape), generator=g, dtype=torch.float64)
        lhs = float((op.apply(x) * y).sum())
        rhs = float((x * op.adjoint(y)).sum())
        assert abs(lhs - rhs) < 1e-10 * max(1.0, abs(lhs)), (lhs, rhs)


def test_psf_included_leaves_the_convolution_out_and_supports_zero_outside():
    """A prior whose sources contain the PSF gets Mask o Downsample only; a supported source
    contributes nothing from beyond its disk; each row of the batch is its own cutout's operator."""
    obs, frame, batch, _, supports = _batch()
    op = batch.operator_for(SOURCES, supports=supports, psf_included=True)
    assert not any(isinstance(o, Convolve) for term in op.ops for o in term.ops)
    x = torch.zeros((2, 2, *frame.shape), dtype=torch.float64)
    x[:, 0] = (~disk(frame.shape, 6.0)).to(torch.float64)  # galaxy light beyond both disks
    assert torch.equal(op.apply(x), torch.zeros_like(batch.y))
    x = torch.randn((2, 2, *frame.shape), dtype=torch.float64)
    plain = op.apply(x)
    for i, o in enumerate(obs):
        own = o.operator_for(
            frame, SOURCES, supports={"galaxy": supports["galaxy"][i]}, psf_included=True
        )
        torch.testing.assert_close(plain[i : i + 1], own.apply(x[i : i + 1]))
        assert isinstance(own.ops[1].ops[-1], Downsample)


def test_model_of_a_psf_included_prior_is_not_convolved_again(tmp_path):
    """For a prior whose sources already contain the PSF (asvd), MODEL is the sum of the
    sources on the cutout grid: convolving them again would blur the model and inflate the
    residuals and chi^2 of every asvd output."""
    from astropy.io import fits
    from fits_factory import FakePrior, make_cutout

    from galprism.separate import RunWarnings, SeparateConfig, run_separate

    p = make_cutout(tmp_path / "c.fits", header={"MAGZERO": 27.0})
    prior = FakePrior(method="asvd", point_estimate=True)
    assert prior.capabilities.psf_included
    summary = run_separate(
        [str(p)], prior, SeparateConfig(output_dir=tmp_path), warnings=RunWarnings(print)
    )
    assert summary.exit_code == 0
    with fits.open(tmp_path / "c.galprism.fits") as h:
        sources = h["GALAXY"].data[0].astype(np.float64) + h["BACKGROUND"].data[0]
        np.testing.assert_allclose(h["MODEL"].data, sources, rtol=1e-5, atol=1e-6)

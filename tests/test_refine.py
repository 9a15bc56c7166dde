"""The galaxies' fine-structure layer (galprism.scene.refine)."""

from __future__ import annotations

import numpy as np
import torch
from fits_factory import gaussian_psf

from galprism.operators import Convolve, SourceSum
from galprism.scene.refine import FineStructure, refine_galaxies

SHAPE = (1, 24, 24)


def _blob(sigma: float, flux: float, x: float = 11.5, y: float = 11.5) -> torch.Tensor:
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return torch.from_numpy(flux * g / g.sum()).reshape(SHAPE)


def _problem(seed: int = 0):
    """A PSF-blurred bright galaxy with a compact core and a companion, unit white noise."""
    psf = torch.from_numpy(np.asarray(gaussian_psf(9, 1.0), dtype=np.float64))
    op = SourceSum([Convolve(psf, SHAPE)])
    truth = _blob(3.0, 3000.0) + _blob(0.7, 1500.0, 13.0, 11.0)
    gen = torch.Generator().manual_seed(seed)
    y = op.apply(truth[None, None]) + torch.randn((1, *SHAPE), generator=gen, dtype=torch.float64)
    return op, y, truth


def test_a_draw_missing_the_core_is_corrected_to_the_noise_and_its_flux():
    """Draws of a smooth galaxy (no compact core, 30% of the light short) leave a chi^2
    per pixel in the hundreds; the layer must bring it to the noise (below 1.5), put the
    missing light back (total within 1% of the truth) and, without the spread to the
    wings, put no light where the draws have none (the corrections are multiplicative in
    the galaxy's own light)."""
    op, y, truth = _problem()
    n_s = 8
    gen = torch.Generator().manual_seed(1)
    smooth = _blob(3.0, 3000.0)
    x = smooth * (1 + 0.01 * torch.randn((n_s, 1, *SHAPE), generator=gen, dtype=torch.float64))
    x[..., :4, :] = 0.0  # rows the galaxy's draws leave dark
    valid = torch.ones(SHAPE, dtype=torch.bool)
    chi2_before = float(((y - op.apply(x)) ** 2).mean())
    out, alpha = refine_galaxies(op, y, valid, x, torch.Generator().manual_seed(2))
    chi2_after = float(((y - op.apply(out)) ** 2).mean())
    assert chi2_before > 100.0
    assert alpha > 0.0
    assert chi2_after < 1.5, (chi2_before, chi2_after, alpha)
    total = float(out.sum((-3, -2, -1)).mean())
    assert abs(total / float(truth.sum()) - 1.0) < 0.01, total
    # Without the spread to the wings, corrections stay exactly where the draws have light.
    local, _ = refine_galaxies(
        op, y, valid, x, torch.Generator().manual_seed(2), FineStructure(spread=0.0)
    )
    assert torch.equal(local[..., :4, :], torch.zeros_like(local[..., :4, :]))


def test_draws_that_fit_to_the_noise_are_left_alone():
    """Draws distributed as the truth given the data (the truth plus the posterior's
    spread is approximated by the truth itself plus tiny jitter) fit to the noise: the
    layer must not fire (alpha 0, draws returned unchanged), or a correct prior's
    posterior would be distorted."""
    op, y, truth = _problem(seed=3)
    gen = torch.Generator().manual_seed(4)
    x = truth[None, None] * (
        1 + 1e-4 * torch.randn((8, 1, *SHAPE), generator=gen, dtype=torch.float64)
    )
    valid = torch.ones(SHAPE, dtype=torch.bool)
    out, alpha = refine_galaxies(op, y, valid, x, torch.Generator().manual_seed(5))
    assert alpha == 0.0
    assert torch.equal(out, x)


def test_the_corrections_keep_a_posterior_spread_and_follow_the_seed():
    """The corrections are draws, not a point fit: the samples' flux spread must be
    positive (and far below the flux), and the same generator seed must give the same
    draws (reproducible from the recorded seed)."""
    op, y, _ = _problem()
    n_s = 8
    smooth = _blob(3.0, 3000.0)
    gen = torch.Generator().manual_seed(1)
    x = smooth * (1 + 0.01 * torch.randn((n_s, 1, *SHAPE), generator=gen, dtype=torch.float64))
    valid = torch.ones(SHAPE, dtype=torch.bool)
    a, _ = refine_galaxies(op, y, valid, x, torch.Generator().manual_seed(7), FineStructure())
    b, _ = refine_galaxies(op, y, valid, x, torch.Generator().manual_seed(7), FineStructure())
    assert torch.equal(a, b)
    flux = a.sum((-3, -2, -1))
    assert 0.0 < float(flux.std()) < 0.01 * float(flux.mean())

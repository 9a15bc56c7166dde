"""Separating the real HSC cutout with the HST view added, to see whether the posterior tightens.

galprism's operators map a prior grid to a cutout by convolution and *integer*
downsampling. The HST/HSC pixel-scale ratio is 0.168/0.03 = 5.6, not an integer, and the
HST grid is finer than the prior's (0.168"/px), so the HST image cannot enter as its own
view at its native resolution. What would be needed for that: a prior on a grid fine
enough for HST (e.g. 0.028"/px = 0.168/6, so that HSC is an integer 6x downsampling: a
288x288 prior, far beyond our CPU budget) plus a general resampling operator through
the two WCS with an exact adjoint for the HST view (0.03/0.028 is not an integer either),
e.g. a sparse pixel-overlap (drizzle-like) matrix.

What is done instead: the HST image is brought onto the prior's grid exactly as the
real-data truth is made (:mod:`galprism.evaluate.real`: HST PSF replaced by the priors'
0.2" truth kernel, pixel-integrated, scaled to HSC units). On that grid its forward
operator is the identity (masked outside the HST footprint), with the propagated HST
noise as a per-pixel variance (the HST noise is correlated; treating it as white
overstates that view's information somewhat). The two views are stacked as two channels
of one observation, so the same MMPS sampler handles them. Because the HST view is then
also the truth, only the posterior *width* is compared with the HSC-only run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..diffusion.samplers import SamplerConfig
from ..errors import ShapeError
from ..io.inputs import cutout_seed
from ..operators import Composition, Convolve, Identity, LinearOperator, Mask
from ..priorset import PriorSet
from ..separate import SeparateConfig, effective_support, prior_zeropoint
from ..support import resolve_support_masks, source_operator, zero_outside_supports
from .real import COVERAGE_MIN, RealCase

__all__ = ["ChannelStack", "TwoViewResult", "two_view_separation"]


class ChannelStack(LinearOperator):
    """``x -> concat_c(A_c x)`` along the channel axis: several views of one source.

    Every operator maps the same ``(C, H, W)`` source; outputs ``(C_c, H, W)`` are
    concatenated into ``(sum C_c, H, W)``. The adjoint sums the views' adjoints.
    """

    def __init__(self, ops: Sequence[LinearOperator]) -> None:
        ops = list(ops)
        if not ops:
            raise ShapeError("ChannelStack: needs at least one operator")
        spatial = {op.out_shape[1:] for op in ops}
        if len({op.in_shape for op in ops}) != 1 or len(spatial) != 1:
            raise ShapeError(f"ChannelStack: operators disagree on shapes: {ops!r}")
        sizes = {op.batch_size for op in ops} - {None}
        if len(sizes) > 1:
            raise ShapeError(f"ChannelStack: operators hold different batches {sorted(sizes)}")
        self.ops = ops
        self.in_shape = ops[0].in_shape
        self.splits = [int(op.out_shape[0]) for op in ops]
        self.out_shape = (sum(self.splits), *ops[0].out_shape[1:])
        self.batch_size = sizes.pop() if sizes else None

    def _apply(self, x: Tensor) -> Tensor:
        return torch.cat([op._apply(x) for op in self.ops], dim=1)

    def _adjoint(self, y: Tensor) -> Tensor:
        parts = torch.split(y, self.splits, dim=1)
        out = None
        for op, part in zip(self.ops, parts, strict=True):
            term = op._adjoint(part)
            out = term if out is None else out + term
        return out

    def take(self, index: Tensor) -> ChannelStack:
        return ChannelStack([op.take(index) for op in self.ops])


@dataclass
class TwoViewResult:
    """Posterior spread of the central galaxy with the HSC view alone and with HSC + HST."""

    prior: str
    flux_std_hsc: float
    flux_std_both: float
    pixel_std_hsc: float
    pixel_std_both: float
    flux_mean_hsc: float
    flux_mean_both: float
    truth_flux: float
    n_samples: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def two_view_separation(
    prior: PriorSet,
    case: RealCase,
    *,
    sampler: SamplerConfig | None = None,
    seed: int = 0,
    galaxy_source: str = "galaxy",
    support: dict[str, float | str] | None = None,
) -> TwoViewResult:
    """Sample the posterior of the real cutout with and without the HST view (same seed).

    ``support`` as :attr:`galprism.separate.SeparateConfig.support` (None: the prior's own);
    ``sampler`` every sampler setting (default: ``galprism separate``'s).
    """
    import time

    t0 = time.perf_counter()
    sampler = sampler if sampler is not None else SamplerConfig()
    cut = case.cutout
    obs = cut.observation
    shape = tuple(prior.frame.shape)
    if obs.shape != shape:
        raise ShapeError(f"{obs.name}: cutout {obs.shape} does not match prior {shape}")
    zp = prior_zeropoint(prior)
    flux_factor = obs.flux_factor_to(zp)
    offset = float(case.info.get("sky_offset", 0.0))
    # The HST view has no flat sky (it was fitted away), so remove the fitted offset from
    # the HSC data in both runs: the comparison then differs only by the HST view.
    y_hsc = (obs.image - offset) * flux_factor
    var_hsc = np.where(obs.valid, obs.variance, 1.0) * flux_factor**2
    hsc_op = Composition(
        [
            Mask(torch.from_numpy(obs.valid.copy())),
            Convolve(torch.from_numpy(np.array(obs.prior_grid_psf(1))), shape),
        ]
    )
    covered = (case.coverage > COVERAGE_MIN)[None]
    y_hst = np.where(covered, case.hst_truth_view[None], 0.0) * flux_factor
    var_hst = np.full(shape, (case.hst_truth_noise * flux_factor) ** 2)
    hst_op = Composition([Mask(torch.from_numpy(covered.copy())), Identity(shape)])
    k = prior.sources.index(galaxy_source)
    supports = effective_support(prior, SeparateConfig(support=support))
    gen_seed = cutout_seed(seed, cut.name)
    runs = {}
    for label, op, y, var in (
        ("hsc", hsc_op, y_hsc, var_hsc),
        (
            "both",
            ChannelStack([hsc_op, hst_op]),
            np.concatenate([y_hsc, y_hst]),
            np.concatenate([var_hsc, var_hst]),
        ),
    ):
        y_t, var_t = torch.from_numpy(y[None]).float(), torch.from_numpy(var[None]).float()

        def operator_for(masks, op=op):
            return source_operator(prior.sources, [op], masks)

        masks, _ = resolve_support_masks(
            supports, prior, y_t, var_t, operator_for, [gen_seed], sampler=sampler
        )
        gen = torch.Generator().manual_seed(gen_seed)
        x = prior.separate(y_t, var_t, operator_for(masks), sampler, generators=[gen])
        x = zero_outside_supports(x, prior.sources, masks)
        gal = x[0, :, k, 0].double().numpy() / flux_factor  # (S, H, W) in the cutout's units
        runs[label] = gal
    foot = cut.galaxy_conv >= cut.sigma
    flux = {k_: v.sum(axis=(1, 2)) for k_, v in runs.items()}
    pix = {
        k_: float(v.std(axis=0, ddof=1)[foot].mean()) if foot.any() else float("nan")
        for k_, v in runs.items()
    }
    return TwoViewResult(
        prior=prior.name,
        flux_std_hsc=float(flux["hsc"].std(ddof=1)),
        flux_std_both=float(flux["both"].std(ddof=1)),
        pixel_std_hsc=pix["hsc"],
        pixel_std_both=pix["both"],
        flux_mean_hsc=float(flux["hsc"].mean()),
        flux_mean_both=float(flux["both"].mean()),
        truth_flux=float(cut.galaxy.sum()),
        n_samples=sampler.n_samples,
        seconds=time.perf_counter() - t0,
    )

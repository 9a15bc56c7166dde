"""Source supports: a source confined to a disk around the cutout center.

A prior may say that one of its sources (the central galaxy) is zero beyond some radius
of the cutout center; the light there then belongs to the other sources. This is the
part a scarlet source's bounding box plays. The constraint enters the likelihood: the
source's term of the operator is masked (:func:`source_operator`), so the sampler sees
the source only through its disk, and the outputs are zero outside it
(:func:`zero_outside_supports`).

A support is either **fixed** (``20``: a disk of 20 prior pixels) or **adaptive**
(``"auto:20"``): a pilot posterior run (:data:`PILOT`: 2 samples, DDIM 8 steps, the
source confined to the maximum radius) gives a first posterior mean of the source, and
the disk is the smallest one holding ``PILOT["fraction"]`` of that mean's light, widened
by ``PILOT["pad"]`` pixels and capped at the maximum. Outside that disk the learned
galaxy prior would otherwise add a faint noise-like floor of light that the sky mirrors;
with it the total flux's posterior is as wide as the data allow (docs/evaluation.md,
"Source support").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .diffusion.samplers import SamplerConfig
from .errors import ConfigError
from .operators import Composition, LinearOperator, Mask, Scale, SourceSum

__all__ = [
    "PILOT",
    "Support",
    "check_support",
    "disk",
    "enclosed_radius",
    "resolve_support_masks",
    "source_operator",
    "zero_outside_supports",
]

#: Settings of the pilot run of adaptive supports. ``salt`` is XORed into each cutout's
#: seed, so the pilot's draws derive from the seed recorded in the output, yet differ
#: from the main run's.
PILOT: dict[str, Any] = {
    "n_samples": 2,
    "steps": 8,
    "sampler": "ddim",
    "fraction": 0.95,
    "pad": 4.0,
    "salt": 0x5EED,
}


@dataclass(frozen=True)
class Support:
    """A disk of ``radius`` prior pixels around the grid center, or adaptive up to it."""

    radius: float
    adaptive: bool = False

    @classmethod
    def parse(cls, value: Any, where: str) -> Support:
        """From a number (fixed radius) or ``"auto:R"`` (adaptive, at most R)."""
        if isinstance(value, str) and value.strip().lower().startswith("auto"):
            _, sep, rest = value.strip().partition(":")
            try:
                radius = float(rest) if sep else float("nan")
            except ValueError:
                radius = float("nan")
            if not (math.isfinite(radius) and radius > 0):
                raise ConfigError(
                    f"{where}: adaptive support must read 'auto:R' with a maximum radius R > 0 "
                    f"pixels, got {value!r}"
                )
            return cls(radius, True)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(
                f"{where}: support radius must be a number of pixels > 0 or 'auto:R', got {value!r}"
            )
        return cls(float(value), False)

    def to_json(self) -> float | str:
        return f"auto:{self.radius:g}" if self.adaptive else self.radius

    def __str__(self) -> str:
        return f"auto:{self.radius:g}" if self.adaptive else f"{self.radius:g}"


def check_support(support: Any, sources: Sequence[str], where: str) -> dict[str, Support]:
    """Validate a support mapping (source name -> radius in pixels or ``"auto:R"``)."""
    if support is None:
        return {}
    if not isinstance(support, Mapping):
        raise ConfigError(
            f"{where}: support must map source names to radii in pixels, got {support!r}"
        )
    out = {}
    for name, value in support.items():
        if name not in sources:
            raise ConfigError(
                f"{where}: support names source {name!r}, but the sources are {', '.join(sources)}"
            )
        out[str(name)] = (
            value if isinstance(value, Support) else Support.parse(value, f"{where}, {name!r}")
        )
    return out


def disk(shape: Sequence[int], radius: float) -> Tensor:
    """Boolean ``shape`` mask of the pixels within ``radius`` pixels of the grid center."""
    h, w = int(shape[-2]), int(shape[-1])
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    inside = torch.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= radius
    return inside.expand(*shape).clone()


def enclosed_radius(
    image: Tensor, max_radius: float, fraction: float = PILOT["fraction"], pad: float = PILOT["pad"]
) -> float:
    """``min(max_radius, r + pad)`` with ``r`` the smallest whole radius whose disk holds
    ``fraction``
    of the light of ``image`` (``(..., H, W)``, summed over leading axes) within ``max_radius``.

    An image with no net light within ``max_radius`` gets ``max_radius``.
    """
    img = image.reshape(-1, *image.shape[-2:]).sum(0).to(torch.float64)
    h, w = img.shape
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    r = torch.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    total = float(img[r <= max_radius].sum())
    if not total > 0:
        return float(max_radius)
    for radius in range(1, int(math.ceil(max_radius)) + 1):
        if float(img[r <= radius].sum()) >= fraction * total:
            return float(min(max_radius, radius + pad))
    return float(max_radius)


def source_operator(
    sources: Sequence[str],
    pieces: Sequence[LinearOperator],
    supports: Mapping[str, Tensor],
    amplitudes: Mapping[str, Tensor] | None = None,
) -> SourceSum:
    """The sum over ``sources`` of ``pieces`` (outermost first), each supported source's
    term ending in the mask of its support and each normalised source's in its amplitude
    (:mod:`galprism.amplitude`): the whole operator, built once.

    Masks are ``(C, H, W)`` (shared) or ``(B, C, H, W)`` (one per observation);
    amplitudes are ``(B,)``.
    """
    amplitudes = amplitudes or {}
    unknown = sorted((set(supports) | set(amplitudes)) - set(sources))
    if unknown:
        raise ConfigError(
            f"supports or amplitudes name unknown sources {unknown}; sources: {list(sources)}"
        )
    shared = Composition(list(pieces))
    terms: list[LinearOperator] = []
    for name in sources:
        if name not in supports and name not in amplitudes:
            terms.append(shared)
            continue
        term = list(pieces)
        if name in supports:
            m = supports[name]
            shape = tuple(m.shape[1:]) if m.ndim == len(shared.in_shape) + 1 else None
            term.append(Mask(m, shape))
        if name in amplitudes:
            term.append(Scale(amplitudes[name], shared.in_shape))
        terms.append(Composition(term))
    return SourceSum(terms)


def zero_outside_supports(x: Tensor, sources: Sequence[str], masks: Mapping[str, Tensor]) -> Tensor:
    """Samples ``(B, S, K, *shape)`` with every supported source set to zero outside its mask.

    Outside its support a source is zero by definition; the sampler's state there is an
    unconstrained prior draw that no pixel of the data sees.
    """
    for k, name in enumerate(sources):
        if name in masks:
            m = masks[name].to(device=x.device, dtype=x.dtype)
            if m.ndim == x.ndim - 2:  # (B, C, H, W): one per observation, broadcast over samples
                m = m[:, None]
            x[:, :, k] = x[:, :, k] * m
    return x


def resolve_support_masks(
    supports: Mapping[str, Support],
    prior: Any,
    y: Tensor,
    noise_var: Tensor,
    operator_for: Callable[[Mapping[str, Tensor]], SourceSum],
    seeds: Sequence[int],
    *,
    sampler: SamplerConfig | None = None,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, Tensor], dict[str, list[float]]]:
    """Per-observation masks ``(B, *shape)`` and radii of ``supports``.

    Parameters
    ----------
    supports
        Source name -> :class:`Support`.
    prior
        The prior (:class:`~galprism.priorset.PriorSet` interface: ``sources``, ``shape``,
        ``separate``); it draws the pilot run, once, only if a support is adaptive.
    y, noise_var
        The batch of B observations, in the prior's units.
    operator_for
        Builds the batch's operator with the given support masks (source name ->
        ``(B, *shape)``).
    seeds
        One seed per observation; the pilot's generators are seeded with
        ``seed ^ PILOT["salt"]``.
    sampler
        The main run's settings: the pilot keeps its ``cg_iterations``, ``trust`` and
        ``jacobian``.
    device
        As for the main run.
    """
    sources, shape, n_obs = list(prior.sources), tuple(prior.frame.shape), len(seeds)
    radii = {name: [s.radius] * n_obs for name, s in supports.items()}
    widest = {
        name: disk(shape, s.radius).expand(n_obs, *shape).clone() for name, s in supports.items()
    }
    adaptive = [name for name, s in supports.items() if s.adaptive]
    if adaptive:
        main = sampler if sampler is not None else SamplerConfig()
        pilot = SamplerConfig(
            method=PILOT["sampler"],
            steps=PILOT["steps"],
            n_samples=PILOT["n_samples"],
            cg_iterations=main.cg_iterations,
            trust=main.trust,
            jacobian=main.jacobian,
        )
        generators = [
            torch.Generator(device=device).manual_seed(int(s) ^ PILOT["salt"]) for s in seeds
        ]
        x = (
            prior.separate(
                y,
                noise_var,
                operator_for(widest),
                pilot,
                generators=generators,
                device=device,
            )
            .detach()
            .to("cpu", torch.float64)
        )
        x = zero_outside_supports(x, sources, widest)
        for name in adaptive:
            k = sources.index(name)
            radii[name] = [
                enclosed_radius(x[b, :, k].mean(0), supports[name].radius) for b in range(n_obs)
            ]
    masks = {
        name: torch.stack([disk(shape, r) for r in radii[name]])
        if name in adaptive
        else widest[name]
        for name in supports
    }
    return masks, radii

"""What the separation pipeline needs from a prior, and what it may ask of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError
from ..frame import Frame
from ..support import Support, check_support

if TYPE_CHECKING:
    from .config import SeparateConfig

__all__ = ["Capabilities", "Separator", "prior_zeropoint", "effective_support"]


@dataclass(frozen=True)
class Capabilities:
    """What a prior can do, declared by the prior so that the pipeline never guesses.

    Attributes
    ----------
    posterior_samples
        ``separate`` draws posterior samples; False: it returns one point estimate.
    source_supports
        A source may be confined to a disk (:mod:`galprism.support`).
    freeform
        Free-form components may be integrated out of its likelihood
        (:mod:`galprism.freeform`): needs priors in units of a known flux scale.
    psf_included
        Its source images already contain the survey's PSF (bases learned from observed
        cutouts): its operator leaves the PSF out.
    """

    posterior_samples: bool = True
    source_supports: bool = True
    freeform: bool = True
    psf_included: bool = False


class Separator(Protocol):
    """What the pipeline needs from a prior (see :class:`galprism.priorset.PriorSet`)."""

    name: str
    method: str
    sources: list[str]
    frame: Frame
    sha256: str
    support: Mapping[str, Support]
    capabilities: Capabilities

    def separate(
        self,
        y: torch.Tensor,
        noise_var: torch.Tensor,
        operator: Any,
        sampler: SamplerConfig | None = None,
        *,
        generators: Sequence[torch.Generator] | None = None,
        device: str = "cpu",
    ) -> torch.Tensor: ...


def prior_zeropoint(prior: Separator) -> float | None:
    """The prior's AB zero point, from its frame's ``zeropoint`` or else its ``bunit``."""
    return prior.frame.ab_zeropoint


def effective_support(prior: Separator, config: SeparateConfig) -> dict[str, Support]:
    """The supports a run uses: ``config.support`` when given (``{}`` = none), else the prior's.

    Raises
    ------
    ConfigError
        If ``config.support`` names an unknown source or a bad radius, or the prior does
        not take supports.
    """
    if config.support is None:
        return dict(prior.support)
    if config.support and not prior.capabilities.source_supports:
        raise ConfigError(
            f"support: prior {prior.name!r} is a {prior.method} prior, which takes no source "
            "supports"
        )
    return check_support(config.support, prior.sources, f"support for prior {prior.name!r}")

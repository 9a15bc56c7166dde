"""An adversarial-SVD prior folder seen through the interface of
:class:`~galprism.priorset.PriorSet`.

``galprism separate --method asvd`` then runs the same pipeline, with the same inputs and
outputs, as the diffusion method: the "sample" cube holds the single point estimate.
The bases are learned from observed cutouts, so they already contain the survey's PSF:
the prior set declares ``psf_included``, the pipeline builds each cutout's operator
without the PSF (mask and any downsampling only), and the separated sources are
PSF-convolved images (the output header says so).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError
from ..frame import Frame
from ..operators import SourceSum
from ..separate.prior import Capabilities
from ..support import Support
from .model import ASVDModel, load_asvd

__all__ = ["ASVDPriorSet", "load_asvd_priorset"]


class ASVDPriorSet:
    """Adapter from :class:`ASVDModel` to the separation pipeline's prior interface."""

    method = "asvd"
    #: One point estimate of PSF-convolved sources; no supports or free-form components.
    capabilities = Capabilities(
        posterior_samples=False, source_supports=False, freeform=False, psf_included=True
    )

    def __init__(self, model: ASVDModel, path: Path, manifest: dict[str, Any]) -> None:
        self.model = model
        self.path = path
        self.manifest = manifest
        self.name = str(manifest.get("name", path.name))
        self.sources = list(model.sources)
        # The bases are fitted in the data's own units: a flux scale of 1.
        self.frame = Frame(
            tuple(model.shape),
            pixel_scale=model.pixel_scale,
            zeropoint=model.zeropoint,
            bunit=model.bunit,
        )
        self.sha256 = str(manifest.get("sha256", ""))
        self.support: dict[str, Support] = {}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "sources": self.sources,
            "shape": list(self.frame.shape),
            "pixel_scale": self.frame.pixel_scale,
            "zeropoint": self.frame.zeropoint,
            "bunit": self.frame.bunit,
            "training": {"tau": self.manifest.get("tau"), "ranks": self.manifest.get("ranks")},
            "sha256": self.sha256,
            "path": str(self.path),
        }

    def separate(
        self,
        y: Tensor,
        noise_var: Tensor,
        operator: SourceSum,
        sampler: SamplerConfig | None = None,
        *,
        generators: Sequence[torch.Generator] | torch.Generator | None = None,
        device: str | torch.device = "cpu",
        callback: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Point estimate ``(B, 1, 2, *shape)``: no sampler setting applies.

        ``operator`` must leave the PSF out (``capabilities.psf_included``): the bases
        already contain it.
        """
        out = self.model.separate(y.to(torch.float64), operator, noise_var.to(torch.float64))
        return out[:, None].to(y.dtype)

    def sample_prior(self, source: str, n: int, **kwargs: Any) -> Tensor:
        raise ConfigError(
            f"prior {self.name!r}: adversarial-SVD bases are not a generative model; use a "
            "diffusion prior"
        )


def load_asvd_priorset(path: Path, manifest: dict[str, Any]) -> ASVDPriorSet:
    """Load an ``asvd`` prior folder for the separation pipeline."""
    return ASVDPriorSet(load_asvd(path), Path(path), manifest)

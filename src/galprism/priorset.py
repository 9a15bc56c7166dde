"""Prior folders: the sources a separation uses, with their flux convention.

A prior folder (what ``galprism fit`` writes and ``galprism separate --prior`` reads)
holds ``prior.json`` and one checkpoint per source::

    my-prior/
      prior.json        {"format": "galprism-priorset", "format_version": 2,
                         "name": ..., "method": "diffusion" | "gaussian",
                         "sources": ["galaxy", "sky"],
                         "frame": {"shape": [C, H, W], "bands": null,
                                   "pixel_scale": 0.168, "zeropoint": 27.0,
                                   "bunit": ..., "flux_scale": ...},
                         "support": {"galaxy": "auto:20"},
                         "amplitude": {"galaxy": {"radius": 6.0, "floor": 3.0}},
                         "training": {...}}
      galaxy.pt         checkpoints of :mod:`galprism.checkpoint`
      sky.pt

``support`` (optional) confines a source to a disk around the grid center, of a fixed
radius in prior pixels or adaptive up to one (``"auto:20"``): outside it the source is
zero (:mod:`galprism.support`). ``galprism separate --support`` overrides it.
``amplitude`` (optional) names the normalised sources: their priors draw a source at a
flux of order one, and each observation scales it by an amplitude measured on its data
(:mod:`galprism.amplitude`).

``frame`` (:class:`~galprism.frame.Frame`) is the one record of the grid and the flux
convention: the checkpoints hold networks and provenance only. Priors work in
normalised units ``data / flux_scale`` at the recorded zero point; a :class:`PriorSet`
converts on the way in and out.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import __version__
from .amplitude import Amplitude, check_amplitude
from .atomic import atomic_path
from .checkpoint import PriorCheckpoint, load_prior, save_prior
from .diffusion.samplers import SamplerConfig
from .errors import CheckpointError, ConfigError, OutputExistsError
from .frame import Frame
from .operators import SourceSum
from .priors.catalog import (  # torch-free, so that `galprism priors` lists without torch
    DEFAULT_PRIOR,
    SET_FORMAT,
    SET_FORMAT_VERSION,
    builtin_prior_path,
    folder_digest,
    list_builtin_priors,
    read_manifest,
    resolve_prior_folder,
)
from .sampling import sample_posterior, sample_prior
from .separate.prior import Capabilities
from .support import Support, check_support

__all__ = [
    "PriorSet",
    "load_priorset",
    "list_builtin_priors",
    "builtin_prior_path",
    "DEFAULT_PRIOR",
]

#: Entries of prior.json written from the PriorSet itself (never copied from ``manifest``).
_OWN_KEYS = (
    "format",
    "format_version",
    "galprism_version",
    "name",
    "method",
    "sources",
    "frame",
    "support",
    "amplitude",
)


@dataclass
class PriorSet:
    """The priors of every source of a separation, and the conventions they share.

    Attributes
    ----------
    name
        Prior name (folder name for user priors).
    method
        ``"diffusion"`` or ``"gaussian"`` (``"asvd"`` folders load through
        :mod:`galprism.asvd`).
    sources
        Source names in the order of the stacked state.
    priors
        One prior module per source.
    frame
        The grid of every source and the flux convention of the data the priors were
        learned from (:class:`~galprism.frame.Frame`).
    support
        Source name -> :class:`~galprism.support.Support`: the disk around the grid
        center (fixed radius in prior pixels, or adaptive up to one) outside which that
        source is zero; sources not named are unconstrained.
    amplitude
        Source name -> :class:`~galprism.amplitude.Amplitude`: the normalised sources and
        how their amplitude is measured on the data.
    manifest
        The full ``prior.json`` content (training provenance included).
    sha256
        Digest of the folder's files, recorded in every output.
    """

    name: str
    method: str
    sources: list[str]
    priors: list[nn.Module]
    frame: Frame
    manifest: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: Path | None = None
    support: dict[str, Support] = field(default_factory=dict)
    amplitude: dict[str, Amplitude] = field(default_factory=dict)

    #: Diffusion and Gaussian priors draw posterior samples of intrinsic source images.
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.priors):
            raise ConfigError(
                f"prior {self.name!r}: {len(self.sources)} source names for {len(self.priors)} "
                "priors"
            )
        if len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"prior {self.name!r}: duplicate source names {self.sources}")
        if not isinstance(self.frame, Frame):
            raise ConfigError(
                f"prior {self.name!r}: frame must be a Frame, got {type(self.frame).__name__}"
            )
        for s, p in zip(self.sources, self.priors, strict=True):
            if tuple(p.shape) != self.frame.shape:
                raise ConfigError(
                    f"prior {self.name!r}: source {s!r} has shape {tuple(p.shape)}, "
                    f"the frame {self.frame.shape}"
                )
        self.support = check_support(self.support, self.sources, f"prior {self.name!r}")
        self.amplitude = check_amplitude(self.amplitude, self.sources, f"prior {self.name!r}")

    # -- description --------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Summary for ``galprism priors``: sources, pixel scale, size, training data."""
        return {
            "name": self.name,
            "method": self.method,
            "sources": list(self.sources),
            "shape": list(self.frame.shape),
            "pixel_scale": self.frame.pixel_scale,
            "zeropoint": self.frame.zeropoint,
            "bunit": self.frame.bunit,
            "bands": None if self.frame.bands is None else list(self.frame.bands),
            "flux_scale": self.frame.flux_scale,
            "support": {k: str(v) for k, v in self.support.items()},
            "amplitude": {k: str(v) for k, v in self.amplitude.items()},
            "training": self.manifest.get("training", {}),
            "sha256": self.sha256,
            "path": str(self.path) if self.path else None,
        }

    def to(self, device: str | torch.device) -> PriorSet:
        for p in self.priors:
            p.to(device)
        return self

    # -- sampling -----------------------------------------------------------------------
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
        """Joint posterior samples ``(B, n_samples, K, *shape)`` in the prior's flux units.

        ``y`` and ``noise_var`` are ``(B, *obs_shape)`` at the prior's zero point;
        ``operator`` maps the K sources on the prior's grid to the observations.
        ``sampler`` holds every sampler setting; its default is the default of
        ``galprism separate``.
        """
        sampler = sampler if sampler is not None else SamplerConfig()
        scale = self.frame.flux_scale
        dtype = torch.float32 if y.dtype != torch.float64 else torch.float64
        self.to(device)
        x = sample_posterior(
            self.priors,
            operator,
            (y / scale).to(device=device, dtype=dtype),
            (noise_var / scale**2).to(device=device, dtype=dtype),
            sampler,
            generators=generators,
            callback=callback,
        )
        return x * scale

    def sample_prior(
        self,
        source: str,
        n: int,
        *,
        steps: int = 64,
        sampler: str = "pc",
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
    ) -> Tensor:
        """``n`` prior samples ``(n, *shape)`` of one source, in the prior's flux units."""
        if source not in self.sources:
            raise ConfigError(
                f"prior {self.name!r} has no source {source!r}; sources: {', '.join(self.sources)}"
            )
        prior = self.priors[self.sources.index(source)].to(device)
        x = sample_prior(
            [prior],
            n,
            config=SamplerConfig(method=sampler, steps=steps),
            generators=generator,
            device=device,
        )
        return x[:, 0] * self.frame.flux_scale

    def log_prob(
        self,
        source: str,
        images: Tensor,
        *,
        steps: int = 128,
        exact: bool = False,
        probes: int = 8,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
    ) -> Tensor:
        """Log-density ``(n,)`` in nats of images ``(n, *shape)`` (prior's flux units).

        The density is of the data units: ``log p(x) = log p_norm(x / s) - D log s``
        with ``s`` the flux scale and ``D`` the number of pixels.
        """
        from .diffusion.likelihood import log_prob  # local: only logprob needs it

        if source not in self.sources:
            raise ConfigError(
                f"prior {self.name!r} has no source {source!r}; sources: {', '.join(self.sources)}"
            )
        if tuple(images.shape[1:]) != tuple(self.frame.shape):
            raise ConfigError(
                f"candidate images have shape {tuple(images.shape[1:])}, prior {self.name!r} "
                f"expects {tuple(self.frame.shape)}"
            )
        prior = self.priors[self.sources.index(source)].to(device)
        # The ODE runs in the network's own dtype: a float32 denoiser cannot take float64
        # candidates (FITS images are read as float64), a float64 prior keeps float64.
        params = [t for t in prior.parameters() if t.is_floating_point()]
        if params:
            dtype = params[0].dtype
        else:
            dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        lp = log_prob(
            prior,
            (images / self.frame.flux_scale).to(device=device, dtype=dtype),
            steps=steps,
            exact=exact,
            probes=probes,
            generator=generator,
        )
        return lp.cpu() - images[0].numel() * math.log(self.frame.flux_scale)

    # -- persistence --------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the prior folder (one checkpoint per source, then ``prior.json``)."""
        folder = Path(folder)
        if (folder / "prior.json").exists() and not overwrite:
            raise OutputExistsError(
                f"{folder}: already holds a prior and overwriting is not allowed"
            )
        folder.mkdir(parents=True, exist_ok=True)
        for name, prior in zip(self.sources, self.priors, strict=True):
            save_prior(
                PriorCheckpoint(prior, name, self.manifest.get("training", {})),
                folder / f"{name}.pt",
            )
        manifest = {
            **{k: v for k, v in self.manifest.items() if k not in _OWN_KEYS},
            "format": SET_FORMAT,
            "format_version": SET_FORMAT_VERSION,
            "galprism_version": __version__,
            "name": self.name,
            "method": self.method,
            "sources": list(self.sources),
            "frame": self.frame.to_json(),
        }
        self.support = check_support(self.support, self.sources, f"prior {self.name!r}")
        if self.support:
            manifest["support"] = {k: v.to_json() for k, v in self.support.items()}
        else:
            manifest.pop("support", None)
        if self.amplitude:
            manifest["amplitude"] = {k: v.to_json() for k, v in self.amplitude.items()}
        with atomic_path(folder / "prior.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        self.manifest = manifest
        self.sha256 = folder_digest(folder)
        self.path = folder
        return folder


def _manifest_support(manifest: dict[str, Any], path: Path) -> dict[str, Support]:
    try:
        return check_support(manifest.get("support"), manifest["sources"], f"{path}/prior.json")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def _manifest_amplitude(manifest: dict[str, Any], path: Path) -> dict[str, Amplitude]:
    try:
        return check_amplitude(manifest.get("amplitude"), manifest["sources"], f"{path}/prior.json")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def load_priorset(
    name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> PriorSet:
    """Load a built-in prior by name, or a prior folder written by ``galprism fit``.

    Raises
    ------
    CheckpointError
        Unknown name, missing/corrupted files, incompatible versions.
    """
    path = resolve_prior_folder(name_or_path)
    manifest = read_manifest(path)
    method = manifest.get("method")
    if method == "asvd":
        from .asvd import load_asvd_priorset  # local: only asvd folders need it

        return load_asvd_priorset(path, manifest)
    if method not in ("diffusion", "gaussian"):
        raise CheckpointError(f"{path}: unknown method {method!r} in prior.json")
    sources = manifest.get("sources")
    if not isinstance(sources, list) or not sources:
        raise CheckpointError(f"{path}/prior.json: no sources listed")
    ckpts = []
    for s in sources:
        ckpt = load_prior(path / f"{s}.pt", map_location)
        if ckpt.name != s:
            raise CheckpointError(
                f"{path / (s + '.pt')}: holds source {ckpt.name!r}, manifest says {s!r}"
            )
        ckpts.append(ckpt)
    try:
        frame = Frame.from_json(manifest.get("frame"), f"{path}/prior.json")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        return PriorSet(
            name=str(manifest.get("name", path.name)),
            method=method,
            sources=list(sources),
            priors=[c.prior for c in ckpts],
            frame=frame,
            support=_manifest_support(manifest, path),
            amplitude=_manifest_amplitude(manifest, path),
            manifest=manifest,
            sha256=folder_digest(path),
            path=path,
        )
    except ConfigError as exc:
        raise CheckpointError(f"{path}/prior.json: {exc}") from None

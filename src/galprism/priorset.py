"""Prior folders: the sources a separation uses, with their flux convention.

A prior folder (what ``galprism fit`` writes and ``galprism separate --prior`` reads)
holds ``prior.json`` and one checkpoint per source::

    my-prior/
      prior.json        {"format": "galprism-priorset", "format_version": 1,
                         "name": ..., "method": "diffusion" | "gaussian",
                         "sources": ["galaxy", "sky"], "shape": [C, H, W],
                         "pixel_scale": 0.168, "zeropoint": 27.0, "bunit": ...,
                         "flux_scale": ..., "support": {"galaxy": "auto:20"},
                         "training": {...}}
      galaxy.pt         checkpoints of :mod:`galprism.checkpoint`
      sky.pt

``support`` (optional) confines a source to a disk around the grid centre, of a fixed
radius in prior pixels or adaptive up to one (``"auto:20"``): outside it the source is
zero (:mod:`galprism.support`). ``galprism separate --support`` overrides it.

Priors work in normalised units ``data / flux_scale`` at the recorded zero point; a
:class:`PriorSet` converts on the way in and out.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__
from .atomic import atomic_path
from .checkpoint import PriorCheckpoint, load_prior, save_prior
from .diffusion.samplers import SamplerConfig
from .errors import CheckpointError, ConfigError
from .operators import SourceSum
from .posterior import sample_posterior, sample_prior
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
from .support import Support, check_support

__all__ = [
    "PriorSet",
    "load_priorset",
    "compose_priorsets",
    "list_builtin_priors",
    "builtin_prior_path",
    "DEFAULT_PRIOR",
]


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
    shape
        Event shape ``(C, H, W)`` (or ``(D,)``) of each source on the prior's grid.
    pixel_scale
        Arcseconds per pixel of that grid (None for non-image sources).
    zeropoint, bunit
        Flux convention of the data the priors were learned from.
    flux_scale
        Data units per normalised prior unit.
    support
        Source name -> :class:`~galprism.support.Support`: the disk around the grid
        centre (fixed radius in prior pixels, or adaptive up to one) outside which that
        source is zero; sources not named are unconstrained.
    manifest
        The full ``prior.json`` content (training provenance included).
    sha256
        Digest of the folder's files, recorded in every output.
    """

    name: str
    method: str
    sources: list[str]
    priors: list[nn.Module]
    shape: tuple[int, ...]
    pixel_scale: float | None = None
    zeropoint: float | None = None
    bunit: str | None = None
    flux_scale: float = 1.0
    manifest: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: Path | None = None
    support: dict[str, Support] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.priors):
            raise ConfigError(
                f"prior {self.name!r}: {len(self.sources)} source names for {len(self.priors)} priors"
            )
        if len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"prior {self.name!r}: duplicate source names {self.sources}")
        for s, p in zip(self.sources, self.priors, strict=True):
            if tuple(p.shape) != tuple(self.shape):
                raise ConfigError(
                    f"prior {self.name!r}: source {s!r} has shape {tuple(p.shape)}, expected {tuple(self.shape)}"
                )
        if not self.flux_scale > 0:
            raise ConfigError(f"prior {self.name!r}: flux_scale must be > 0, got {self.flux_scale}")
        self.support = check_support(self.support, self.sources, f"prior {self.name!r}")

    # -- description --------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Summary for ``galprism priors``: sources, pixel scale, size, training data."""
        return {
            "name": self.name,
            "method": self.method,
            "sources": list(self.sources),
            "shape": list(self.shape),
            "pixel_scale": self.pixel_scale,
            "zeropoint": self.zeropoint,
            "bunit": self.bunit,
            "support": {k: str(v) for k, v in self.support.items()},
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
        *,
        n_samples: int = 8,
        steps: int = 64,
        cg_iterations: int = 1,
        sampler: str = "pc",
        generators: Sequence[torch.Generator] | torch.Generator | None = None,
        device: str | torch.device = "cpu",
        callback=None,
        trust: float = 0.0,
        particles: int = 16,
    ) -> Tensor:
        """Joint posterior samples ``(B, n_samples, K, *shape)`` in the prior's flux units.

        ``y`` and ``noise_var`` are ``(B, *obs_shape)`` at the prior's zero point;
        ``operator`` maps the K sources on the prior's grid to the observations.
        ``trust`` caps the MMPS corrections of diffusion priors
        (:mod:`galprism.posterior`; 0 = no cap, the default here: EM needs the cap
        against rare exploding E-step samples, but on cutouts brighter than the
        training data it keeps the posterior from fitting them). ``particles`` is the
        number of chains per sample of ``sampler="smc"`` (:mod:`galprism.smc`).
        """
        scale = self.flux_scale
        dtype = torch.float32 if y.dtype != torch.float64 else torch.float64
        self.to(device)
        x = sample_posterior(
            self.priors,
            operator,
            (y / scale).to(device=device, dtype=dtype),
            (noise_var / scale**2).to(device=device, dtype=dtype),
            n_samples=n_samples,
            config=SamplerConfig(method=sampler, steps=steps, particles=particles),
            cg_iterations=cg_iterations,
            generators=generators,
            callback=callback,
            trust=trust,
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
        return x[:, 0] * self.flux_scale

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
        if tuple(images.shape[1:]) != tuple(self.shape):
            raise ConfigError(
                f"candidate images have shape {tuple(images.shape[1:])}, prior {self.name!r} expects {tuple(self.shape)}"
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
            (images / self.flux_scale).to(device=device, dtype=dtype),
            steps=steps,
            exact=exact,
            probes=probes,
            generator=generator,
        )
        return lp.cpu() - images[0].numel() * math.log(self.flux_scale)

    # -- persistence --------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the prior folder (one checkpoint per source, then ``prior.json``)."""
        folder = Path(folder)
        if (folder / "prior.json").exists() and not overwrite:
            raise ConfigError(f"{folder}: already holds a prior; pass --overwrite to replace it")
        folder.mkdir(parents=True, exist_ok=True)
        normalisation = {
            "flux_scale": self.flux_scale,
            "zeropoint": self.zeropoint,
            "bunit": self.bunit,
        }
        for name, prior in zip(self.sources, self.priors, strict=True):
            save_prior(
                PriorCheckpoint(
                    prior, name, self.pixel_scale, normalisation, self.manifest.get("training", {})
                ),
                folder / f"{name}.pt",
            )
        manifest = {
            **self.manifest,
            "format": SET_FORMAT,
            "format_version": SET_FORMAT_VERSION,
            "galprism_version": __version__,
            "name": self.name,
            "method": self.method,
            "sources": list(self.sources),
            "shape": list(self.shape),
            "pixel_scale": self.pixel_scale,
            "zeropoint": self.zeropoint,
            "bunit": self.bunit,
            "flux_scale": self.flux_scale,
        }
        self.support = check_support(self.support, self.sources, f"prior {self.name!r}")
        if self.support:
            manifest["support"] = {k: v.to_json() for k, v in self.support.items()}
        else:
            manifest.pop("support", None)
        with atomic_path(folder / "prior.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        self.manifest = manifest
        self.sha256 = folder_digest(folder)
        self.path = folder
        return folder


def compose_priorsets(
    name: str,
    parts: Sequence[tuple[str, PriorSet]],
    support: dict[str, Any] | None = None,
) -> PriorSet:
    """A prior set taking each source from another prior set, with one shared convention.

    Used when one source is retrained alone: e.g. a new ``sky`` learned from a richer sky
    view, paired with the ``galaxy`` of an earlier stage-wise run (whose galaxy stage saw
    the sky frozen, so it is a prior of galaxies whatever sky it is later paired with).

    Parameters
    ----------
    name
        Name of the new prior.
    parts
        ``(source, prior set)`` pairs, in the order of the new set's sources.
    support
        Supports of the new set (as in ``prior.json``); None keeps the parts' own.

    Returns
    -------
    PriorSet
        Not yet saved; ``manifest["training"]["composed_from"]`` records, per source, the
        part's name, digest and training record.

    Raises
    ------
    ConfigError
        A source missing from its part, a repeated source, or parts that differ in method,
        shape, pixel scale, zero point, unit or flux scale (the networks would then not
        share one normalisation of the data).
    """
    if not parts:
        raise ConfigError(f"prior {name!r}: nothing to compose")
    first = parts[0][1]
    keys = ("method", "shape", "pixel_scale", "zeropoint", "bunit", "flux_scale")
    priors, record, own_support = [], {}, {}
    for source, part in parts:
        if source not in part.sources:
            raise ConfigError(
                f"prior {part.name!r} has no source {source!r} (it has {', '.join(part.sources)})"
            )
        for key in keys:
            a, b = getattr(first, key), getattr(part, key)
            if (tuple(a) if key == "shape" else a) != (tuple(b) if key == "shape" else b):
                raise ConfigError(
                    f"priors {first.name!r} and {part.name!r} differ in {key}: {a} vs {b}"
                )
        priors.append(part.priors[part.sources.index(source)])
        record[source] = {
            "prior": part.name,
            "sha256": part.sha256,
            "training": part.manifest.get("training", {}),
        }
        if source in part.support:
            own_support[source] = part.support[source]
    return PriorSet(
        name=name,
        method=first.method,
        sources=[s for s, _ in parts],
        priors=priors,
        shape=tuple(first.shape),
        pixel_scale=first.pixel_scale,
        zeropoint=first.zeropoint,
        bunit=first.bunit,
        flux_scale=first.flux_scale,
        manifest={"training": {"composed_from": record}},
        support=own_support if support is None else support,
    )


def _manifest_support(manifest: dict[str, Any], path: Path) -> dict[str, Support]:
    try:
        return check_support(manifest.get("support"), manifest["sources"], f"{path}/prior.json")
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
    return PriorSet(
        name=str(manifest.get("name", path.name)),
        method=method,
        sources=list(sources),
        priors=[c.prior for c in ckpts],
        shape=tuple(manifest["shape"]),
        pixel_scale=manifest.get("pixel_scale"),
        zeropoint=manifest.get("zeropoint"),
        bunit=manifest.get("bunit"),
        flux_scale=float(manifest.get("flux_scale", 1.0)),
        support=_manifest_support(manifest, path),
        manifest=manifest,
        sha256=folder_digest(path),
        path=path,
    )

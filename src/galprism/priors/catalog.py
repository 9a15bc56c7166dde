"""Prior folders as files: where the built-in ones are, their manifests, their digests.

Nothing here imports torch, so that ``galprism priors`` lists and describes priors from
their ``prior.json`` alone, in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

__all__ = [
    "SET_FORMAT",
    "SET_FORMAT_VERSION",
    "DEFAULT_PRIOR",
    "builtin_root",
    "list_builtin_priors",
    "builtin_prior_path",
    "resolve_prior_folder",
    "read_manifest",
    "folder_digest",
    "describe_folder",
]

#: ``format`` and ``format_version`` of the ``prior.json`` of diffusion and Gaussian priors
SET_FORMAT = "galprism-priorset"
SET_FORMAT_VERSION = 2
#: the built-in prior used when none is named
DEFAULT_PRIOR = "hsc-galaxy"


def builtin_root() -> Path:
    """The folder of the priors shipped inside the package."""
    return Path(str(resources.files("galprism") / "priors" / "builtin"))


def list_builtin_priors() -> list[str]:
    """Names of the priors shipped inside the package."""
    root = builtin_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "prior.json").is_file())


def builtin_prior_path(name: str) -> Path:
    """The folder of the built-in prior ``name`` (it may not exist)."""
    return builtin_root() / name


def resolve_prior_folder(name_or_path: str | os.PathLike[str]) -> Path:
    """The folder of a prior given as a path, a built-in name or ``default``.

    Raises
    ------
    CheckpointError
        If it is neither an existing path nor a built-in prior.
    """
    path = Path(name_or_path)
    if not path.exists():
        if str(name_or_path) == "default":
            path = builtin_prior_path(DEFAULT_PRIOR)
        elif (builtin_prior_path(str(name_or_path)) / "prior.json").is_file():
            path = builtin_prior_path(str(name_or_path))
        else:
            known = ", ".join(list_builtin_priors()) or "none installed"
            raise CheckpointError(
                f"{name_or_path}: no such prior folder or built-in prior (built-in: {known})"
            )
    if path.is_file() and path.name == "prior.json":
        path = path.parent
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    """``prior.json`` of a prior folder, checked to be a galprism manifest of this version.

    Raises
    ------
    CheckpointError
        Missing, unreadable, of another format or of another format version.
    """
    path = folder / "prior.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a prior folder (no prior.json)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path}: corrupted manifest ({exc.msg if hasattr(exc, 'msg') else exc})"
        ) from exc
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: not a galprism prior manifest")
    if manifest.get("method") == "asvd":
        return manifest  # adversarial-SVD folders carry their own format (galprism.asvd)
    if manifest.get("format") != SET_FORMAT:
        raise CheckpointError(f"{path}: not a galprism prior manifest")
    if manifest.get("format_version") != SET_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: prior folder format version {manifest.get('format_version')}; "
            f"this galprism reads {SET_FORMAT_VERSION}"
        )
    return manifest


def folder_digest(folder: Path) -> str:
    """SHA-256 over the names and contents of a prior folder's files."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if f.suffix not in (".json", ".pt", ".npz"):
            continue
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _support_text(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


def describe_folder(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``galprism priors`` shows of a prior, read from its ``prior.json`` only.

    The same fields as the loaded prior's ``describe()``: name, method, sources, shape,
    pixel_scale, zeropoint, bunit, support, training, sha256 and path.

    Raises
    ------
    CheckpointError
        If the folder is missing or its manifest unusable.
    """
    folder = resolve_prior_folder(name_or_path)
    manifest = read_manifest(folder)
    sources = manifest.get("sources")
    if not isinstance(sources, list) or not sources:
        raise CheckpointError(f"{folder}/prior.json: no sources listed")
    method = manifest.get("method")
    if method == "asvd":
        training: dict[str, Any] = {"tau": manifest.get("tau"), "ranks": manifest.get("ranks")}
        digest = str(manifest.get("sha256", ""))
        support: dict[str, str] = {}
        frame = manifest  # adversarial-SVD manifests keep the grid at their top level
    else:
        training = manifest.get("training", {})
        digest = folder_digest(folder)
        support = {k: _support_text(v) for k, v in (manifest.get("support") or {}).items()}
        frame = manifest.get("frame")
        if not isinstance(frame, dict):
            raise CheckpointError(f"{folder}/prior.json: no frame (grid and flux convention)")
    return {
        "name": str(manifest.get("name", folder.name)),
        "method": method,
        "sources": [str(s) for s in sources],
        "shape": list(frame.get("shape") or []),
        "pixel_scale": frame.get("pixel_scale"),
        "zeropoint": frame.get("zeropoint"),
        "bunit": frame.get("bunit"),
        "bands": frame.get("bands"),
        "flux_scale": frame.get("flux_scale"),
        "support": support,
        "training": training,
        "sha256": digest,
        "path": str(folder),
    }

"""The ASVD model: fitting, separating, and the prior folder it is stored in.

A prior folder holds two files:

* ``prior.json``: the manifest, ``{"method": "asvd", "sources": [clean, unseen],
  "shape": [C, H, W], "pixel_scale": ..., "tau": ..., "ranks": [d0, d1], ...}`` plus how the
  model was fitted (solver, objective per iteration, tau curve, seed, timings);
* ``asvd.npz``: the two bases as plain float32 arrays, read back with
  ``allow_pickle=False`` and checked against the SHA-256 recorded in the manifest.

The folder is written under a temporary name and renamed into place, so a reader never
sees half a prior; an existing folder is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from ..errors import CheckpointError, ConfigError, GalprismError, OutputExistsError
from ..operators import LinearOperator
from . import _validate as v
from .eigen import SecondMoment, adversarial_basis
from .separate import pseudo_inverse, separate_with_bases
from .tau import select_tau
from .unseen import fit_unseen_basis

__all__ = ["ASVDModel", "fit_asvd", "load_asvd", "MANIFEST", "BASES_FILE", "FORMAT_VERSION"]

MANIFEST = "prior.json"
BASES_FILE = "asvd.npz"
FORMAT_VERSION = 1
_ORTHO_TOL = 1e-3


@dataclass(eq=False)
class ASVDModel:
    """Two orthonormal bases and how to separate with them.

    Attributes
    ----------
    clean_basis, unseen_basis
        ``(P, d0)`` and ``(P, d1)`` float32, ``P = prod(shape)``.
    shape
        Event shape of one cutout, e.g. ``(C, H, W)``.
    tau
        Adversarial weight the clean basis was fitted with.
    sources
        Names of the clean and the unseen source.
    projection, split
        Defaults of :meth:`separate` (see :mod:`galprism.asvd.separate`).
    pixel_scale, zeropoint, bunit
        The grid and flux convention of the training cutouts, when known.
    info
        How the model was fitted (solver, objectives, tau curve, seed, timings...).
    """

    clean_basis: Tensor
    unseen_basis: Tensor
    shape: tuple[int, ...]
    tau: float
    sources: tuple[str, str] = ("clean", "unseen")
    projection: str = "unit"
    split: str = "wiener"
    pixel_scale: float | None = None
    zeropoint: float | None = None
    bunit: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _pinv: Tensor | None = field(default=None, repr=False)

    method = "asvd"

    @property
    def ranks(self) -> tuple[int, int]:
        return int(self.clean_basis.shape[1]), int(self.unseen_basis.shape[1])

    def separate(
        self,
        mixtures: Tensor | np.ndarray,
        operator: LinearOperator | None = None,
        noise_var: float | Tensor | None = None,
        *,
        mask: Tensor | None = None,
        projection: str | None = None,
        split: str | None = None,
    ) -> Tensor:
        """Separate mixtures into the two sources.

        Parameters
        ----------
        mixtures
            ``(B, *shape)`` mixtures, or ``(B, *operator.out_shape)`` observations when an
            operator is given.
        operator
            Optional observation operator (mask, PSF, downsampling...): one operator for
            both sources or a two-source ``SourceSum``; shared or one per observation.
        noise_var
            Scalar or per-pixel variance (``inf`` marks pixels to ignore).
        mask
            Boolean valid-pixel mask of the observations.
        projection, split
            Override the model's defaults.

        Returns
        -------
        Tensor
            ``(B, 2, *shape)``: the clean source then the unseen source.
        """
        projection = self.projection if projection is None else projection
        split = self.split if split is None else split
        v.check_projection_split(projection, split)
        if isinstance(mixtures, np.ndarray):
            mixtures = torch.from_numpy(np.ascontiguousarray(mixtures))
        bases = [self.clean_basis, self.unseen_basis]
        pinv = None
        if operator is None and mask is None:
            if self._pinv is None:
                self._pinv = pseudo_inverse(bases)
            pinv = self._pinv
        return separate_with_bases(
            mixtures,
            bases,
            self.shape,
            operator=operator,
            noise_var=noise_var,
            mask=mask,
            projection=projection,
            split=split,
            pinv=pinv,
        )

    # -- prior folder ------------------------------------------------------------------
    def manifest(self, sha256: str) -> dict[str, Any]:
        """The ``prior.json`` content for a bases file with digest ``sha256``."""
        return {
            "method": "asvd",
            "format_version": FORMAT_VERSION,
            "sources": list(self.sources),
            "shape": list(self.shape),
            "pixel_scale": self.pixel_scale,
            "zeropoint": self.zeropoint,
            "bunit": self.bunit,
            "tau": self.tau,
            "ranks": list(self.ranks),
            "projection": self.projection,
            "split": self.split,
            "files": {"bases": BASES_FILE},
            "sha256": sha256,
            "galprism_version": __version__,
            "fit": self.info,
        }

    def save(self, folder: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the prior folder atomically; refuse to replace one unless ``overwrite``."""
        dest = Path(os.fspath(folder))
        if dest.exists() and not overwrite:
            raise OutputExistsError(
                f"{dest}: prior folder exists and overwriting is not allowed (overwrite=False)"
            )
        if dest.exists() and not dest.is_dir():
            raise GalprismError(f"{dest}: exists and is not a folder")
        if not dest.parent.is_dir():
            raise GalprismError(f"{dest}: parent folder {dest.parent} does not exist")
        token = f"{os.getpid()}.{secrets.token_hex(4)}"
        tmp = dest.parent / f".{dest.name}.{token}.tmp"
        old = dest.parent / f".{dest.name}.{token}.old"
        buffer = io.BytesIO()
        np.savez(
            buffer,
            clean_basis=self.clean_basis.detach().cpu().to(torch.float32).numpy(),
            unseen_basis=self.unseen_basis.detach().cpu().to(torch.float32).numpy(),
        )
        payload = buffer.getvalue()
        try:
            tmp.mkdir()
            with open(tmp / BASES_FILE, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
                json.dump(
                    self.manifest(hashlib.sha256(payload).hexdigest()),
                    fh,
                    indent=2,
                    allow_nan=False,
                )
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            if dest.exists():
                os.rename(dest, old)
                os.rename(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, dest)
        except OSError as exc:
            if old.exists() and not dest.exists():
                os.rename(old, dest)  # put the previous prior back
            raise GalprismError(
                f"{dest}: cannot write the prior folder ({exc.strerror or exc})"
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest


def _require(manifest: dict[str, Any], key: str, path: Path) -> Any:
    if key not in manifest:
        raise CheckpointError(f"{path}: manifest lacks the required key {key!r}")
    return manifest[key]


def load_asvd(folder: str | os.PathLike[str]) -> ASVDModel:
    """Read a prior folder written by :meth:`ASVDModel.save` (no pickle anywhere).

    Raises
    ------
    CheckpointError
        Missing files, another method, a format from another version, a digest that
        does not match, or bases of the wrong shape, non-finite or not orthonormal.
    """
    root = Path(os.fspath(folder))
    path = root / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{root}: not a prior folder ({MANIFEST} not found)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: manifest is not a JSON object")
    method = _require(manifest, "method", path)
    if method != "asvd":
        raise CheckpointError(f"{path}: prior method is {method!r}, not 'asvd'")
    version = _require(manifest, "format_version", path)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this galprism reads "
            f"{FORMAT_VERSION})"
        )
    try:
        shape = tuple(int(s) for s in _require(manifest, "shape", path))
        ranks = tuple(int(r) for r in _require(manifest, "ranks", path))
        tau = float(_require(manifest, "tau", path))
        sources = v.check_sources(tuple(_require(manifest, "sources", path)))
        projection = str(manifest.get("projection", "unit"))
        split = str(manifest.get("split", "wiener"))
        v.check_projection_split(projection, split)
    except (TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: invalid manifest entry ({exc})") from exc
    bases_path = root / str(manifest.get("files", {}).get("bases", BASES_FILE))
    try:
        payload = bases_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(
            f"{bases_path}: cannot read the bases ({exc.strerror or exc})"
        ) from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != _require(manifest, "sha256", path):
        raise CheckpointError(
            f"{bases_path}: SHA-256 does not match the manifest (file changed or corrupted)"
        )
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            w0 = torch.from_numpy(np.array(arrays["clean_basis"], dtype=np.float32))
            w1 = torch.from_numpy(np.array(arrays["unseen_basis"], dtype=np.float32))
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{bases_path}: not a valid bases archive ({exc})") from exc
    p = math.prod(shape)
    for label, w, d in (("clean_basis", w0, ranks[0]), ("unseen_basis", w1, ranks[1])):
        if tuple(w.shape) != (p, d):
            raise CheckpointError(
                f"{bases_path}: {label} has shape {tuple(w.shape)}, the manifest says ({p}, {d})"
            )
        if not torch.isfinite(w).all():
            raise CheckpointError(f"{bases_path}: {label} contains non-finite values")
        gram = w.to(torch.float64).T @ w.to(torch.float64)
        if float((gram - torch.eye(d, dtype=torch.float64)).abs().max()) > _ORTHO_TOL:
            raise CheckpointError(f"{bases_path}: {label} is not orthonormal")
    return ASVDModel(
        clean_basis=w0,
        unseen_basis=w1,
        shape=shape,
        tau=tau,
        sources=sources,
        projection=projection,
        split=split,
        pixel_scale=manifest.get("pixel_scale"),
        zeropoint=manifest.get("zeropoint"),
        bunit=manifest.get("bunit"),
        info=dict(manifest.get("fit") or {}),
    )


def fit_asvd(
    clean: Tensor | np.ndarray,
    mixed: Tensor | np.ndarray,
    rank_clean: int,
    rank_unseen: int,
    tau: float | str = "auto",
    *,
    sources: Sequence[str] = ("clean", "unseen"),
    projection: str = "unit",
    split: str = "wiener",
    pixel_scale: float | None = None,
    zeropoint: float | None = None,
    bunit: str | None = None,
    tau_grid: Sequence[float] | None = None,
    holdout: float = 0.2,
    solver: str = "auto",
    unseen_init: str = "deflated",
    tol: float = 1e-6,
    max_iter: int = 300,
    seed: int = 0,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> ASVDModel:
    """Fit the adversarial-SVD model on clean cutouts of one source and on mixtures.

    Parameters
    ----------
    clean
        ``(N_U, *shape)`` cutouts of the clean source alone.
    mixed
        ``(N_V, *shape)`` mixtures (clean source + unseen source).
    rank_clean, rank_unseen
        Sizes ``d0`` and ``d1`` of the two bases.
    tau
        Adversarial weight in ``[0, 1]`` (``0`` = plain SVD), or ``"auto"`` to choose it on
        held-out data (:func:`galprism.asvd.tau.select_tau`); the curve goes to ``info``.
    sources
        Names of the clean and unseen sources (stored in the manifest).
    projection, split
        Separation defaults: valid range (``"unit"``, ``"nonneg"``, ``"none"``) and
        ``"wiener"`` or ``"components"``.
    pixel_scale, zeropoint, bunit
        Grid and flux convention of the cutouts, recorded in the manifest.
    tau_grid, holdout
        Grid and held-out fraction of ``tau="auto"``.
    solver
        Eigensolver: ``"auto"``, ``"dense"`` or ``"krylov"`` (see :mod:`galprism.asvd.eigen`).
    unseen_init
        Start of the unseen-basis iterations: ``"deflated"`` (the closed-form minimiser;
        default) or ``"random"``.
    tol, max_iter
        Convergence tolerance (relative objective decrease) and iteration cap of the
        unseen-basis alternating minimisation.
    seed
        Seed of every random choice (Krylov start, random init, hold-out split); recorded.
    progress
        Called with ``(stage, details)`` as the fit advances (for a CLI progress display).

    Returns
    -------
    ASVDModel

    Raises
    ------
    InputError, ShapeError
        Non-finite data, or shapes that do not agree.
    ConfigError
        Ranks the data cannot support, ``tau`` outside ``[0, 1]``, unknown options.
    """
    start = time.perf_counter()
    u = v.as_data(clean, "clean data")
    w = v.as_data(mixed, "mixtures")
    shape = v.check_pair(u, w)
    dim = math.prod(shape)
    d0, d1 = v.check_ranks(rank_clean, rank_unseen, u.shape[0], w.shape[0], dim)
    tau_value = v.check_tau(tau)
    names = v.check_sources(tuple(sources))
    v.check_projection_split(projection, split)
    v.check_choice(solver, ("auto", "dense", "krylov"), "solver")
    v.check_choice(unseen_init, ("deflated", "random"), "unseen_init")
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"ASVD: holdout must be a fraction in (0, 1), got {holdout!r}")
    if int(max_iter) != max_iter or max_iter < 0 or not tol >= 0:
        raise ConfigError(
            f"ASVD: max_iter must be an integer >= 0 and tol >= 0, got {max_iter!r}, {tol!r}"
        )
    u_flat, w_flat = u.reshape(u.shape[0], -1), w.reshape(w.shape[0], -1)

    def report(stage: str, **details: Any) -> None:
        if progress is not None:
            progress(stage, details)

    curve = None
    if tau_value == "auto":
        n_fit_u = u.shape[0] - max(1, int(round(holdout * u.shape[0])))
        n_fit_v = w.shape[0] - max(1, int(round(holdout * w.shape[0])))
        if n_fit_u < d0 or n_fit_v < d1:
            raise ConfigError(
                f"ASVD: tau='auto' holds out {holdout:.0%} of the data, leaving {n_fit_u} clean "
                "cutouts "
                f"and {n_fit_v} mixtures, too few for ranks ({d0}, {d1})"
            )
        if tau_grid is not None:
            tau_grid = [float(v.check_tau(t)) for t in tau_grid]  # type: ignore[arg-type]
        chosen, curve = select_tau(
            u_flat,
            w_flat,
            d0,
            d1,
            shape=shape,
            grid=tau_grid,
            holdout=holdout,
            seed=seed,
            projection=projection,
            split=split,
            solver=solver,
            unseen_init=unseen_init,
            tol=tol,
            max_iter=max_iter,
            progress=lambda t, s: report("tau", tau=t, score=s),
        )
        tau_value = chosen
    assert isinstance(tau_value, float)
    t_moments = time.perf_counter()
    moment_u = SecondMoment(u_flat)
    moment_v = SecondMoment(w_flat)  # needed for the unseen basis even when tau = 0
    report("moments", seconds=time.perf_counter() - t_moments)
    eig = adversarial_basis(moment_u, moment_v, d0, tau_value, solver=solver, seed=seed)
    report("clean_basis", solver=eig.solver, residual=eig.max_residual)
    unseen = fit_unseen_basis(
        eig.vectors,
        moment_v,
        d1,
        init=unseen_init,
        tol=tol,
        max_iter=max_iter,
        seed=seed,
        solver=solver,
    )
    report("unseen_basis", iterations=unseen.iterations, objective=unseen.objective[-1])
    info: dict[str, Any] = {
        "seed": int(seed),
        "n_clean": int(u.shape[0]),
        "n_mixed": int(w.shape[0]),
        "moments": "formed" if moment_u.formed else "matrix-free",
        "eigensolver": eig.solver,
        "eigen_max_residual": eig.max_residual,
        "krylov_dim": eig.krylov_dim,
        "clean_eigenvalues": [float(x) for x in eig.values],
        "unseen_fit": {
            "init": unseen_init,
            "tol": tol,
            "max_iter": int(max_iter),
            "iterations": unseen.iterations,
            "converged": unseen.converged,
            "objective": unseen.objective,
        },
        "tau_selection": None
        if curve is None
        else {"criterion": "heldout_moment_mismatch", "holdout": holdout, "curve": curve},
        "fit_seconds": time.perf_counter() - start,
    }
    return ASVDModel(
        clean_basis=eig.vectors.to(torch.float32),
        unseen_basis=unseen.basis.to(torch.float32),
        shape=shape,
        tau=float(tau_value),
        sources=names,
        projection=projection,
        split=split,
        pixel_scale=None if pixel_scale is None else float(pixel_scale),
        zeropoint=None if zeropoint is None else float(zeropoint),
        bunit=bunit,
        info=info,
    )

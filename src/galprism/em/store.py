"""The run folder of an EM run: config, per-lap checkpoints, history, sample grids.

::

    run/
      config.json              the EMConfig (resuming with other settings is refused)
      checkpoints/lap-0007.pt  state after lap 7 (priors, optimisers, random stream)
      history.jsonl            one JSON line per completed lap
      grids/lap-0007-<source>-{prior,posterior}.png
      prior/, prior-gaussian/  the learned prior folders (written at the end)

Every file is written to a temporary name and renamed, so killing the process at any
moment leaves the last completed lap intact; history lines of laps whose checkpoint
never landed are dropped on resume.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..checkpoint import safe_torch_load
from ..errors import CheckpointError, ConfigError
from .config import EMConfig

__all__ = ["RunStore"]

_CKPT = re.compile(r"^lap-(\d{4,})\.pt$")


class RunStore:
    """Reads and writes one run folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.grids = self.root / "grids"
        self.history_path = self.root / "history.jsonl"
        self.config_path = self.root / "config.json"

    # -- config -------------------------------------------------------------------------
    def init(
        self,
        config: EMConfig,
        *,
        resume: bool = True,
        extends: Callable[[EMConfig, int], bool] | None = None,
    ) -> int:
        """Prepare the folder for ``config``; return the number of completed laps.

        ``extends(stored, done)`` says whether ``config`` plans the same first ``done``
        laps as the ``stored`` configuration. When it does, lap counts and flux
        augmentation (``EMConfig.EXTENDABLE``) may differ: the run continues under the new
        settings (more laps for a stage that is not finished, or for the last stage; another
        augmentation for the laps to come) and ``config.json`` is rewritten to them.

        Raises
        ------
        ConfigError
            If the folder holds a run with other settings (naming them), or holds a run
            and ``resume`` is false.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if self.config_path.exists():
            try:
                raw = json.loads(self.config_path.read_text())
                former = EMConfig.former_key(raw) if isinstance(raw, dict) else None
                if former is not None:
                    raise ConfigError(
                        f"{self.config_path}: run folder of an older format (loose E-step "
                        f"sampler setting {former!r}); start a new run folder"
                    )
                stored = EMConfig.from_dict(raw)
            except (json.JSONDecodeError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"{self.config_path}: unreadable run configuration ({exc})"
                ) from exc
            diff = config.differences(stored)
            a, b = config.flat(), stored.flat()
            if diff and all(k in EMConfig.EXTENDABLE for k in diff):
                done = self.last_lap()
                if extends is None or not extends(stored, done):
                    detail = "; ".join(f"{k}: run has {b[k]!r}, now {a[k]!r}" for k in diff)
                    raise ConfigError(
                        f"{self.root}: lap counts and flux augmentation may change on resume only "
                        "after the last completed lap "
                        f"({done}) ({detail})"
                    )
                if resume or done == 0:
                    self._write_json(self.config_path, config.to_dict())
                diff = []
            if diff:
                detail = "; ".join(f"{k}: run has {b[k]!r}, now {a[k]!r}" for k in diff[:4])
                raise ConfigError(f"{self.root}: was written by another configuration ({detail})")
            if not resume and self.last_lap() > 0:
                raise ConfigError(
                    f"{self.root}: holds a run already; resume it or choose another folder"
                )
        else:
            self._write_json(self.config_path, config.to_dict())
        self.checkpoints.mkdir(exist_ok=True)
        last = self.last_lap()
        self._trim_history(last)
        return last

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint_path(self, lap: int) -> Path:
        return self.checkpoints / f"lap-{lap:04d}.pt"

    def last_lap(self) -> int:
        if not self.checkpoints.is_dir():
            return 0
        laps = [int(m.group(1)) for p in self.checkpoints.iterdir() if (m := _CKPT.match(p.name))]
        return max(laps, default=0)

    def save_checkpoint(self, lap: int, state: dict[str, Any], keep: int = 0) -> Path:
        path = self.checkpoint_path(lap)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        if keep:
            old = sorted(p for p in self.checkpoints.iterdir() if _CKPT.match(p.name))[:-keep]
            for p in old:
                p.unlink(missing_ok=True)
        return path

    def checkpoint_laps(self) -> list[int]:
        """Laps with a checkpoint file, oldest first (readable or not)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(
            int(m.group(1)) for p in self.checkpoints.iterdir() if (m := _CKPT.match(p.name))
        )

    def load_latest(
        self, lap: int, apply: Callable[[dict[str, Any]], None], notify: Callable[[str], None]
    ) -> int:
        """Resume from the newest checkpoint at or before ``lap`` that loads.

        ``apply(state)`` restores a checkpoint (raising if it does not fit). A checkpoint
        that cannot be read or applied is reported through ``notify`` (naming the file) and
        the one before it is tried; the history is trimmed to the lap resumed from, and
        the bad file is left in place for the rerun of its lap to replace.

        Returns
        -------
        int
            The lap resumed from; 0 when none loads (the run starts again).
        """
        laps = [n for n in self.checkpoint_laps() if n <= lap]
        for n in reversed(laps):
            try:
                apply(self.load_checkpoint(n))
            except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as exc:
                notify(f"{self.checkpoint_path(n)}: unusable checkpoint, skipped ({exc})")
                continue
            if n != lap:
                self._trim_history(n)
            return n
        notify(f"{self.root}: no usable checkpoint; starting the run again from lap 1")
        self._trim_history(0)
        return 0

    def load_checkpoint(self, lap: int) -> dict[str, Any]:
        state = safe_torch_load(self.checkpoint_path(lap))
        if not isinstance(state, dict) or state.get("lap") != lap:
            raise CheckpointError(f"{self.checkpoint_path(lap)}: not the checkpoint of lap {lap}")
        return state

    # -- history ------------------------------------------------------------------------
    def append_history(self, record: dict[str, Any]) -> None:
        with open(self.history_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.exists():
            return []
        out = []
        for line in self.history_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-append
        return out

    def _trim_history(self, last: int) -> None:
        if not self.history_path.exists():
            return
        keep = [r for r in self.history() if r.get("lap", 0) <= last]
        with atomic_path(self.history_path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))

    # -- misc ---------------------------------------------------------------------------
    @staticmethod
    def _write_json(path: Path, data: Any) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")

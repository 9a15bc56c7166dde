"""Planning an EM run: which sources each stage learns, and the sequence of laps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError, ShapeError
from .config import EMConfig
from .views import View

__all__ = ["Stage", "LapPlan", "plan_stages", "plan_laps"]


@dataclass(frozen=True)
class Stage:
    """Sources learned together, and the views whose E-step samples teach them."""

    learn: tuple[str, ...]
    views: tuple[str, ...]


@dataclass(frozen=True)
class LapPlan:
    """One lap: its number (from 1), stage, phase (``"gaussian"`` or ``"diffusion"``),
    number within that phase of that stage (from 0), and the flux augmentations of its
    M-step as ``(source, spec)`` (``EMConfig.augment_of``).

    The augmentations are part of the plan so that a resumed run which changes them is
    accepted only where the laps already done stay the same laps."""

    lap: int
    stage: int
    phase: str
    phase_lap: int
    augment: tuple[tuple[str, tuple[float, ...]], ...] = ()


def plan_stages(views: Sequence[View], config: EMConfig) -> list[Stage]:
    """Which sources each stage learns, and from which views.

    ``joint``: one stage learns every source from every view. ``stagewise``: views are
    taken by increasing number of sources; each stage learns the sources its view adds to
    those learned before (which stay frozen); a view adding nothing helps the stage that
    learned the last of its sources.

    Raises
    ------
    ConfigError
        A view naming an unknown source, two views with one name, or a source no view
        contains.
    ShapeError
        A view whose operator expects sources of another shape than the config's.
    """
    names = [v.name for v in views]
    if not views:
        raise ConfigError("EM: needs at least one view")
    if len(set(names)) != len(names):
        raise ConfigError(f"EM: view names must be unique, got {names}")
    for v in views:
        for s in v.sources:
            if s not in config.sources:
                raise ConfigError(
                    f"view {v.name!r}: names unknown source {s!r} (sources: "
                    f"{', '.join(config.sources)})"
                )
        if v.source_shape != tuple(config.shape):
            raise ShapeError(
                f"view {v.name!r}: operator expects sources of shape {v.source_shape}, config "
                f"says {tuple(config.shape)}"
            )
    seen = {s for v in views for s in v.sources}
    missing = [s for s in config.sources if s not in seen]
    if missing:
        raise ConfigError(f"EM: no view contains source(s) {missing}")
    if config.arrangement == "joint":
        return [Stage(tuple(config.sources), tuple(names))]
    stages: list[Stage] = []
    known: set[str] = set()
    for v in sorted(views, key=lambda v: len(v.sources)):
        new = tuple(s for s in config.sources if s in v.sources and s not in known)
        if not new:
            last = max(i for i, st in enumerate(stages) if set(st.learn) & set(v.sources))
            stages[last] = Stage(stages[last].learn, stages[last].views + (v.name,))
            continue
        match = [i for i, st in enumerate(stages) if st.learn == new]
        if match:
            stages[match[0]] = Stage(new, stages[match[0]].views + (v.name,))
        else:
            stages.append(Stage(new, (v.name,)))
        known |= set(new)
    return stages


def plan_laps(stages: Sequence[Stage], config: EMConfig) -> list[LapPlan]:
    """The run's laps: per stage, its Gaussian laps then its diffusion laps.

    Raises
    ------
    ConfigError
        If a per-stage list of lap counts does not have one entry per stage.
    """
    laps: list[LapPlan] = []
    for i, stage in enumerate(stages):
        for phase in ("gaussian", "diffusion"):
            for j in range(config.laps_of(phase, i, len(stages))):
                augment = config.augment_of(stage.learn, j) if phase == "diffusion" else ()
                laps.append(LapPlan(len(laps) + 1, i, phase, j, augment))
    return laps

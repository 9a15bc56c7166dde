"""Expectation-maximisation: learn one prior per source from views of their mixtures."""

from .config import EMConfig
from .estep import EStepResult, posterior_samples
from .plan import LapPlan, Stage, plan_laps, plan_stages
from .run import EMResult, LapHook, run_em
from .state import EMState
from .store import RunStore
from .views import View

__all__ = [
    "EMConfig",
    "EMResult",
    "EMState",
    "EStepResult",
    "LapHook",
    "LapPlan",
    "RunStore",
    "Stage",
    "View",
    "plan_laps",
    "plan_stages",
    "posterior_samples",
    "run_em",
]

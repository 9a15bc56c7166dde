"""Expectation-maximisation: learn one prior per source from views of their mixtures."""

from .config import EMConfig
from .run import EMResult, plan_laps, plan_stages, run_em
from .store import RunStore
from .views import View

__all__ = ["EMConfig", "EMResult", "RunStore", "View", "plan_laps", "plan_stages", "run_em"]

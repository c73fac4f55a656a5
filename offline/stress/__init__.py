"""Paper A's drift stress suite: operators, the factorial sweep, plots."""

from silentwatch.offline.stress.operators import DRIFT_KINDS, DriftOperator
from silentwatch.offline.stress.sweep import StressModel, StressResult, StressSettings, run_stress

__all__ = [
    "DRIFT_KINDS",
    "DriftOperator",
    "StressModel",
    "StressResult",
    "StressSettings",
    "run_stress",
]

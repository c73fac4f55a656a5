"""Paper A's drift stress suite: operators, the factorial sweep, plots."""

from .operators import DRIFT_KINDS, DriftOperator
from .sweep import StressModel, StressResult, StressSettings, run_stress

__all__ = [
    "DRIFT_KINDS",
    "DriftOperator",
    "StressModel",
    "StressResult",
    "StressSettings",
    "run_stress",
]

"""Label-free drift detectors: each fitted once on the reference, calibrated on held-out data.

One module per detector; :mod:`.suite` builds the set, calibrates thresholds and stores
them in the bundle; :mod:`silentwatch.monitor.engine` runs them over live windows.
"""

from .base import ReferenceSample, WindowDetector
from .suite import ALL_DETECTORS, DRIFT_DETECTORS, CalibrationError, DetectorSuite

__all__ = [
    "ALL_DETECTORS",
    "DRIFT_DETECTORS",
    "CalibrationError",
    "DetectorSuite",
    "ReferenceSample",
    "WindowDetector",
]

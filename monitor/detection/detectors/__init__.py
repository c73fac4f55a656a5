"""Label-free drift detectors, one module each: fitted once on the bundle's reference
sample, calibrated on held-out data (:mod:`silentwatch.monitor.detection.suite`), declared
in :mod:`silentwatch.monitor.detection.registry` and run over live windows by
:mod:`silentwatch.monitor.detection.engine`."""

from silentwatch.monitor.detection.detectors.base import ReferenceSample, WindowDetector

__all__ = ["ReferenceSample", "WindowDetector"]

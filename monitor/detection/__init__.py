"""The worker path: live windows, the registered detectors and their calibrated
thresholds, the detection engine and canaries."""

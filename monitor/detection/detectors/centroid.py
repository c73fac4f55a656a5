"""Angle between the window's mean embedding and the reference mean, in degrees.

``theta = arccos( <mu_w, mu_ref> / (||mu_w|| ||mu_ref||) ) * 180 / pi``

Reported in degrees so it can be read against paper A's drift magnitudes ("I Can't
Believe It's Not Robust", arXiv 2603.01297, section 4: per-dimension Gaussian noise of
s = 0.02 in 1024-d moves an embedding by about 33 degrees; the *centroid* of a window
moves much less, because independent noise averages out, so this detector sees
directional and rotational drift best).
"""

from __future__ import annotations

import numpy as np

from silentwatch.monitor.detection.detectors.base import (
    ReferenceSample,
    WindowDetector,
    window_means,
)


def centroid_angle_degrees(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two vectors in degrees (0 for parallel, 180 for opposite).

    >>> centroid_angle_degrees(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    45.0
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    cos = float(np.clip(a @ b / (na * nb), -1.0, 1.0))
    return float(np.round(np.degrees(np.arccos(cos)), 10))


class CentroidAngleDetector(WindowDetector):
    """Angle (degrees) between the window centroid and the reference centroid."""

    name = "centroid_angle"

    def __init__(self) -> None:
        pass

    def fit(self, reference: ReferenceSample) -> CentroidAngleDetector:
        self.mean_ = reference.embeddings.astype(np.float64).mean(axis=0)
        return self

    def statistic(self, x: np.ndarray, scores: np.ndarray) -> float:
        return centroid_angle_degrees(np.asarray(x, dtype=np.float64).mean(axis=0), self.mean_)

    def null_statistics(self, x: np.ndarray, scores: np.ndarray, windows: np.ndarray) -> np.ndarray:
        means = window_means(np.asarray(x, dtype=np.float64), windows)
        cos = means @ self.mean_ / (np.linalg.norm(means, axis=1) * np.linalg.norm(self.mean_))
        return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))

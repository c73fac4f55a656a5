"""The confidence distribution of a window, and its shift against the reference.

Paper A ("I Can't Believe It's Not Robust", arXiv 2603.01297, section 5) shows that
mean top-label confidence ``c = max(p, 1 - p)`` drops only ~14% while ROC-AUC falls to
chance: these signals are *advisory*. They are still tracked, because a drift alarm
while confidence holds steady is exactly the silent-failure signature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from silentwatch.monitor.detection.detectors.base import ReferenceSample, WindowDetector
from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE, confidence


@dataclass(frozen=True)
class ConfidenceProfile:
    """Mean confidence, share above the high-confidence cut, share flagged."""

    mean_confidence: float
    high_confidence_share: float
    positive_rate: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def confidence_profile(
    scores: np.ndarray, *, flag: float = FLAG_THRESHOLD, high_confidence: float = HIGH_CONFIDENCE
) -> ConfidenceProfile:
    """``mean max(p,1-p)``, ``mean[max(p,1-p) > high_confidence]`` and ``mean[p >= flag]``.

    >>> confidence_profile(np.array([0.9, 0.4, 0.05]))
    ConfidenceProfile(mean_confidence=0.8166666666666668, high_confidence_share=0.6666666666666666, positive_rate=0.3333333333333333)
    """  # noqa: E501
    p = np.asarray(scores, dtype=np.float64)
    if p.size == 0:
        nan = float("nan")
        return ConfidenceProfile(nan, nan, nan)
    c = confidence(p)
    return ConfidenceProfile(
        mean_confidence=float(c.mean()),
        high_confidence_share=float((c > high_confidence).mean()),
        positive_rate=float((p >= flag).mean()),
    )


class ConfidenceShiftDetector(WindowDetector):
    """``| mean confidence(window) - mean confidence(reference) |``.

    The reference profile comes from held-out scores when calibration provides them:
    the classifier is more confident on its own training rows than on unseen traffic.
    """

    name = "confidence_shift"

    def __init__(
        self, flag: float = FLAG_THRESHOLD, high_confidence: float = HIGH_CONFIDENCE
    ) -> None:
        self.flag = flag
        self.high_confidence = high_confidence

    def fit(self, reference: ReferenceSample) -> ConfidenceShiftDetector:
        self.reference_ = confidence_profile(
            reference.scores, flag=self.flag, high_confidence=self.high_confidence
        )
        return self

    def fit_holdout(self, x: np.ndarray, scores: np.ndarray) -> None:
        self.reference_ = confidence_profile(
            scores, flag=self.flag, high_confidence=self.high_confidence
        )

    def statistic(self, x: np.ndarray, scores: np.ndarray) -> float:
        return abs(
            float(confidence(np.asarray(scores, np.float64)).mean())
            - self.reference_.mean_confidence
        )

    def null_statistics(self, x: np.ndarray, scores: np.ndarray, windows: np.ndarray) -> np.ndarray:
        c = confidence(np.asarray(scores, dtype=np.float64))
        return np.abs(c[windows].mean(axis=1) - self.reference_.mean_confidence)

    def arrays(self) -> dict[str, np.ndarray]:
        r = self.reference_
        return {"profile": np.array([r.mean_confidence, r.high_confidence_share, r.positive_rate])}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.reference_ = ConfidenceProfile(*(float(v) for v in arrays["profile"]))

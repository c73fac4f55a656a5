"""Black-box shift detection (BBSD) on the classifier's own scores.

Lipton et al. (2018), "Detecting and Correcting for Label Shift with Black Box
Predictors"; Rabanser et al. (2019), "Failing Loudly", use a two-sample test on the
model's outputs. Here: the Kolmogorov-Smirnov statistic between the window's P(unsafe)
and the reference scores,

``D = sup_t | F_window(t) - F_reference(t) |``.

KS is invariant to monotone maps, so testing P(unsafe) is testing the logit.
"""

from __future__ import annotations

import numpy as np

from silentwatch.monitor.detection.detectors.base import ReferenceSample, WindowDetector


def ks_statistic(a: np.ndarray, sorted_b: np.ndarray) -> float:
    """Two-sample KS statistic; ``sorted_b`` must be sorted ascending.

    Both empirical CDFs only jump at sample points, so the supremum is attained on the
    pooled sample; right-continuous CDFs via ``searchsorted(side="right")``.

    >>> ks_statistic(np.array([0.1, 0.2]), np.array([0.3, 0.4]))
    1.0
    >>> from scipy.stats import ks_2samp
    >>> rng = np.random.default_rng(1)
    >>> a, b = rng.normal(size=50), np.sort(rng.normal(0.3, size=80))
    >>> bool(np.isclose(ks_statistic(a, b), ks_2samp(a, b).statistic))
    True
    """
    a = np.sort(np.asarray(a, dtype=np.float64))
    pooled = np.concatenate([a, sorted_b])
    fa = np.searchsorted(a, pooled, side="right") / a.size
    fb = np.searchsorted(sorted_b, pooled, side="right") / sorted_b.size
    return float(np.abs(fa - fb).max())


class ScoreKSDetector(WindowDetector):
    """BBSD: KS distance between window scores and reference scores."""

    name = "bbsd_ks"

    def __init__(self) -> None:
        pass

    def fit(self, reference: ReferenceSample) -> ScoreKSDetector:
        self.sorted_scores_ = np.sort(reference.scores.astype(np.float64))
        return self

    def statistic(self, x: np.ndarray, scores: np.ndarray) -> float:
        return ks_statistic(scores, self.sorted_scores_)

"""Labelled-sample metrics, defined once for the sidecar and the offline suite.

All follow paper A ("I Can't Believe It's Not Robust", arXiv 2603.01297, section 3.3):
``p`` is P(unsafe), the predicted class is ``p >= threshold`` and the top-label
confidence is ``c = max(p, 1 - p)``.
"""

from __future__ import annotations

import numpy as np

from .scoring import confidence


def _check(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = np.asarray(y).reshape(-1).astype(np.int8)
    if p.shape != y.shape:
        raise ValueError(f"p has {p.shape[0]} values but y has {y.shape[0]}")
    return p, y


def accuracy(p: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> float:
    """Share of correct predictions, ``mean[(p >= t) == y]``.

    >>> accuracy(np.array([0.9, 0.2, 0.6]), np.array([1, 0, 0]))
    0.6666666666666666
    """
    p, y = _check(p, y)
    return float(np.mean((p >= threshold) == (y == 1))) if p.size else float("nan")


def mean_confidence(p: np.ndarray) -> float:
    """Mean top-label confidence ``mean[max(p, 1 - p)]`` (paper A, Eq. for \\bar{c}).

    >>> round(mean_confidence(np.array([0.9, 0.2])), 6)
    0.85
    """
    p = np.asarray(p, dtype=np.float64)
    return float(confidence(p).mean()) if p.size else float("nan")


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = 5) -> float:
    """Top-label ECE with equal-width confidence bins (paper A: 5 bins).

    ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` where ``B_b`` holds the samples
    whose confidence ``max(p, 1-p)`` falls in ``((b-1)/M, b/M]`` (the first bin is
    closed at 0), ``acc`` is the share whose top label is right and ``conf`` is their
    mean confidence (Guo et al. 2017, as used by paper A section 3.3).

    >>> round(expected_calibration_error(np.array([0.9, 0.9, 0.1, 0.1]),
    ...                                  np.array([1, 0, 0, 0])), 3)
    0.15
    """
    p, y = _check(p, y)
    if p.size == 0:
        return float("nan")
    conf = confidence(p)
    correct = (p >= 0.5) == (y == 1)
    # Right-closed bins: np.digitize with right=True on the inner edges.
    edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    idx = np.digitize(conf, edges, right=True)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    return float(np.abs(sum_acc - sum_conf).sum() / p.size)


def silent_failure_rate(p: np.ndarray, y: np.ndarray, high_confidence: float = 0.8) -> float:
    """Share of errors made with high confidence: ``#{wrong, c > 0.8} / #{wrong}``.

    Paper A's silent-failure rate (section 3.3); NaN when there is no error.

    >>> silent_failure_rate(np.array([0.95, 0.6, 0.1]), np.array([0, 0, 0]))
    0.5
    """
    p, y = _check(p, y)
    wrong = (p >= 0.5) != (y == 1)
    n_wrong = int(wrong.sum())
    if n_wrong == 0:
        return float("nan")
    return float((wrong & (confidence(p) > high_confidence)).sum() / n_wrong)

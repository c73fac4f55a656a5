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


def roc_auc(p: np.ndarray, y: np.ndarray) -> float:
    """Exact ROC-AUC by the Mann-Whitney rank formula, ties at half weight.

    ``AUC = (sum of ranks of positives - n1 (n1 + 1) / 2) / (n1 n0)`` with average
    ranks for tied scores; NaN when only one class is present. Equals
    ``sklearn.metrics.roc_auc_score``.

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    p, y = _check(p, y)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    # Average rank of each run of ties: starts and ends of runs in the sorted scores.
    edges = np.flatnonzero(np.diff(sp)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [sp.size]])
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of the run
    ranks = np.empty(p.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def balanced_accuracy(p: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> float:
    """Mean of the true-positive and true-negative rates, ``(TPR + TNR) / 2``.

    With one class present it is that class's recall, as in
    ``sklearn.metrics.balanced_accuracy_score`` (which also warns).

    >>> balanced_accuracy(np.array([0.9, 0.2, 0.6, 0.1]), np.array([1, 1, 0, 0]))
    0.5
    """
    p, y = _check(p, y)
    pred = p >= threshold
    rates = [float(np.mean(pred[y == c] == bool(c))) for c in (0, 1) if (y == c).any()]
    return float(np.mean(rates)) if rates else float("nan")


def positive_class_ece(p: np.ndarray, y: np.ndarray, n_bins: int = 5) -> float:
    """Positive-class ECE: calibration of P(unsafe) itself, not of the top label.

    ``ECE+ = sum_b |B_b| / n * |mean(y in B_b) - mean(p in B_b)|`` with equal-width bins
    on ``p`` over [0, 1], right-closed (the first closed at 0). It differs from
    :func:`expected_calibration_error` (paper A's top-label variant), which bins
    ``max(p, 1-p)`` and compares it with top-label accuracy.

    >>> positive_class_ece(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 0, 0, 0]))
    0.25
    """
    p, y = _check(p, y)
    if p.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    idx = np.digitize(p, edges, right=True)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / p.size)


def brier_score(p: np.ndarray, y: np.ndarray) -> float:
    """``mean (p - y)^2``; equals ``sklearn.metrics.brier_score_loss``.

    >>> brier_score(np.array([1.0, 0.5]), np.array([1, 0]))
    0.125
    """
    p, y = _check(p, y)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """``-mean[y log p + (1 - y) log(1 - p)]`` with p clipped to ``[eps, 1 - eps]``.

    ``eps`` is float64's machine epsilon, as ``sklearn.metrics.log_loss`` uses for
    float64 input, so p = 0 or 1 on a wrong label gives a large finite loss (36.04).

    >>> round(log_loss(np.array([0.9, 0.2]), np.array([1, 0])), 6)
    0.164252
    """
    p, y = _check(p, y)
    if p.size == 0:
        return float("nan")
    eps = np.finfo(np.float64).eps
    q = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y == 1, np.log(q), np.log1p(-q))))


def high_confidence_error_ratio(
    p: np.ndarray, y: np.ndarray, high_confidence: float = 0.8
) -> float:
    """Error rate among confident predictions: ``#{wrong, c > 0.8} / #{c > 0.8}``.

    Not the silent-failure rate (:func:`silent_failure_rate` divides by all *errors*);
    this one divides by all *confident predictions*: "when it is sure, how often is it
    wrong?". NaN without confident predictions.

    >>> high_confidence_error_ratio(np.array([0.95, 0.9, 0.6]), np.array([0, 1, 0]))
    0.5
    """
    p, y = _check(p, y)
    sure = confidence(p) > high_confidence
    if not sure.any():
        return float("nan")
    wrong = (p >= 0.5) != (y == 1)
    return float((wrong & sure).sum() / sure.sum())


def confidence_minus_accuracy(p: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> float:
    """``mean max(p, 1-p) - accuracy``: positive when the classifier is overconfident.

    >>> round(confidence_minus_accuracy(np.array([0.9, 0.9]), np.array([1, 0])), 6)
    0.4
    """
    return mean_confidence(p) - accuracy(p, y, threshold)


METRIC_NAMES = (
    "n",
    "positives",
    "roc_auc",
    "accuracy",
    "balanced_accuracy",
    "ece",
    "ece_positive_class",
    "brier",
    "log_loss",
    "silent_failure_ratio",
    "high_confidence_error_ratio",
    "mean_confidence",
    "confidence_minus_accuracy",
)


def labelled_metrics(
    p: np.ndarray,
    y: np.ndarray,
    *,
    threshold: float = 0.5,
    high_confidence: float = 0.8,
    n_bins: int = 5,
) -> dict[str, float]:
    """Every labelled metric above, keyed as in :data:`METRIC_NAMES` (NaN when undefined).

    >>> m = labelled_metrics(np.array([0.9, 0.2]), np.array([1, 0]))
    >>> m["n"], m["accuracy"], m["roc_auc"]
    (2, 1.0, 1.0)
    """
    p, y = _check(p, y)
    return {
        "n": int(p.size),
        "positives": int(y.sum()),
        "roc_auc": roc_auc(p, y),
        "accuracy": accuracy(p, y, threshold),
        "balanced_accuracy": balanced_accuracy(p, y, threshold),
        "ece": expected_calibration_error(p, y, n_bins),
        "ece_positive_class": positive_class_ece(p, y, n_bins),
        "brier": brier_score(p, y),
        "log_loss": log_loss(p, y),
        "silent_failure_ratio": silent_failure_rate(p, y, high_confidence),
        "high_confidence_error_ratio": high_confidence_error_ratio(p, y, high_confidence),
        "mean_confidence": mean_confidence(p),
        "confidence_minus_accuracy": confidence_minus_accuracy(p, y, threshold)
        if p.size
        else float("nan"),
    }
